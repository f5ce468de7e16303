"""Schedule: run the targets a request needs, dependencies first, in parallel.

The main thread walks the graph, computes keys and answers cache hits; only
recipes that must run go to the executor's worker threads. A target's key is
computed when its dependencies are done, from the digests of their outputs.
"""
from __future__ import annotations

import errno
import heapq
import itertools
import os
import queue
import threading
import time

from buildsys import __version__
from buildsys.keys.action import Action
from buildsys.run.executors import ActionJob, Completion, Executor, Job, Resources
from buildsys.lang.graph import Target
from buildsys.digest import StatCache
from buildsys.errors import BBError
from buildsys.run import sandbox
from buildsys.keys.plan import Planner, Unknown, UnusableInput
from buildsys.run.materialize import OutputMissing, capture, materialize, output_path, remove_outputs, workspace_digest
from buildsys.run.report import BUILT, CACHED, FAILED, SKIPPED, WOULD_RUN, TargetReport
from buildsys.store.api import ActionResult, CorruptEntry
from buildsys.store.local import FileChanged

_HOST = os.uname().nodename  # in each result's provenance


def _undeclared_hint(output: bytes, action: Action, root: str) -> str:
    names = sandbox.undeclared_reads(output.decode("utf-8", "replace"), action, root)
    if names:
        listed = ", ".join(f"'{n}'" for n in names[:5])
        return f"; it ran with only its declared inputs and looked for {listed}, which the workspace has but the rule does not declare: add them to its inputs"
    return "; it ran with only its declared inputs: if it reads a file it does not declare, add that file to its inputs"


class _Handover:
    """A worker's report of a recipe that ended, and the name of the next one
    it started at once in the slot that recipe held (Scheduler._take_handover)."""

    __slots__ = ("report", "next")

    def __init__(self, report, next: str):
        self.report, self.next = report, next


class _Workers:
    """Threads that run the scheduler's work and put each result (a report,
    or the exception it raised) on the event queue as (target, result): one
    queue hop each way per task, no future, callback or condition. A task
    submitted with `handover` (a recipe holding one job slot) is followed on
    the same thread by the task `take_next(its name, its result)` gives, if any: the
    slot goes from one recipe to the next without a round trip through the
    main thread."""

    def __init__(self, size: int, events: queue.SimpleQueue, take_next):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._events = events
        self._take_next = take_next
        self._lock = threading.Lock()
        self.pending = 0  # handed to a worker and not done yet
        self._threads = [threading.Thread(target=self._loop, name=f"bb-run_{i}") for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, name: str | None, fn, *args, handover: bool = False) -> None:
        """Run fn(*args) on a worker; name None: its result is not reported."""
        with self._lock:
            self.pending += 1
        self._tasks.put((name, fn, args, handover))

    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            while task is not None:
                name, fn, args, handover = task
                try:
                    result = fn(*args)
                except BaseException as err:  # raised again on the main thread
                    result = err
                task = self._take_next(name, result) if handover else None
                if task is not None:
                    with self._lock:
                        self.pending += 1
                    result = _Handover(result, task[0])
                if name is not None:
                    self._events.put((name, result))
                with self._lock:
                    self.pending -= 1

    def shutdown(self, wait: bool) -> None:
        """Each thread ends after the work already handed to it."""
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class Scheduler:
    def __init__(self, planner: Planner, executor: Executor, ui, *, jobs: int, keep_going=False, always=False, dry_run=False, explain=False, sandbox=False, remote=None, remote_jobs=1000, detach=False):
        self.planner = planner
        self.graph = planner.graph
        self.executor = executor
        self.ui = ui
        self.jobs = max(1, jobs)
        self.keep_going = keep_going
        self.always = always
        self.dry_run = dry_run
        self.explain = explain or dry_run
        self.sandbox = sandbox  # run each recipe with only its declared inputs
        self.reports: dict[str, TargetReport] = {}
        self.force: set[str] = set()  # targets whose stored result proved unusable: run them
        # Targets whose outputs are known to be in the workspace as their
        # results say (an incremental build: the no-op stamp proved it), so
        # nothing of them is brought from the store.
        self.present: set[str] = set()
        self._stopping = threading.Event()
        self._remote_lock = threading.Lock()
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # (target, report or exception), from any thread
        self._threads: _Workers | None = None
        # Resolved local recipes of one job slot, next in line: a worker whose
        # one-slot recipe ended starts the first at once (see _Workers).
        self._handover: list = []  # entries of _build's `runnable` heap, best first
        self._handed: set[str] = set()  # taken from it by a worker, not yet seen here as running
        self._releases = lambda name: False  # does the end of this target make another ready? (set by _build)
        self._handover_lock = threading.Lock()
        self.remote = remote  # a RemoteExecutor, or None: everything runs here
        self.remote_jobs = remote_jobs  # remote jobs in flight at most
        self._remote_actions: dict[str, list[tuple[Target, Action]]] = {}  # key -> what it stands for
        self.remote_started = False  # started with the first submission: a cached build makes no remote call
        self.detach = detach  # on Ctrl-C, leave remote jobs running (a later run adopts them)

    # -- the main loop ---------------------------------------------------------------

    def build(self, roots: list[str]) -> dict[str, TargetReport]:
        # The store writes the results behind the recipes (one transaction
        # for many tasks), and all of them by the end.
        batched = getattr(self.planner.store, "batched", None)
        if batched is None:
            return self._build(roots)
        with batched():
            reports = self._build(roots)
            self._flush()
            return reports

    def _flush(self) -> None:
        """Have the store write the results it holds back."""
        try:
            self.planner.store.flush()
        except OSError as err:  # the targets ran and their outputs are in place: not a failure
            self.planner.warnings.append(f"could not record the results of some targets in the store ({err}); they run again next time")

    def _build(self, roots: list[str]) -> dict[str, TargetReport]:
        order = self.graph.closure(roots)
        deps = self.graph.deps
        # Targets already reported (known up to date, their results in the
        # planner: an incremental build) count as finished, and the
        # bookkeeping below covers only the others: in a large graph with
        # one changed input, a few targets.
        todo = [name for name in order if name not in self.reports]
        waiting = {name: sum(1 for d in deps[name] if d not in self.reports) for name in todo}
        dependents: dict[str, list[str]] = {}
        for name in todo:
            for dep in deps[name]:
                dependents.setdefault(dep, []).append(name)
        running: dict[str, int] = {}  # target -> local job slots it holds
        # Heaps, deepest target first, so that when slots are short the work
        # that finishes a chain (the report of a model that is ready) goes
        # before more of a wide fan-out: `ready` to resolve (its inputs are
        # done), `runnable` resolved and waiting for a slot.
        ready: list = []  # (-depth, sequence, target)
        runnable: list = []  # (-depth, sequence, target, action)
        sequence = itertools.count()  # ties: in the order they became ready
        depth: dict[str, int] = {}
        for name in todo if len(todo) > 1 else ():  # with one target, no order to choose
            depth[name] = 1 + max((depth.get(d, 0) for d in deps[name]), default=0)  # (what is done counts 0)
        free = self.jobs
        stopping = False
        self.ui.begin(len(todo))

        # (Read by workers too: a target's end that makes another ready is
        # not followed by a hand-over, so the deeper work goes first.)
        self._releases = lambda name: any(waiting.get(d) == 1 for d in dependents.get(name, ()))

        def make_ready(name: str):
            heapq.heappush(ready, (-depth.get(name, 0), next(sequence), name))

        def release(name: str):
            for d in dependents.get(name, ()):
                waiting[d] -= 1
                if waiting[d] == 0:
                    make_ready(d)

        for name in todo:
            if waiting[name] == 0:
                make_ready(name)

        shared = getattr(self.planner.store, "remote", None) is not None
        if shared:
            self.planner.store.load_bundle(self.planner.bundle_name())
        try:
            while ready or running or ((runnable or self._handover) and not stopping):
                if shared and not self.always:
                    self._prefetch([entry[2] for entry in ready])
                # While nothing runs, resolve only as many targets to run as
                # the free slots take, and start them: a wide fan-out's first
                # recipes start at once, and the rest of it is resolved while
                # they run. Cached targets take no slot; a remote batch takes
                # all.
                wanted = len(ready) if running or self.remote is not None else max(free - len(runnable), 1)
                while ready and not stopping and wanted > 0:
                    name = heapq.heappop(ready)[2]
                    target = self.graph.targets[name]
                    try:
                        outcome = self._resolve(target)
                    except UnusableInput as repair:
                        # A cached input's stored bytes are gone or wrong: that
                        # target is a miss after all. Run it, then come back.
                        dep = repair.dep
                        if dep in self.reports:
                            self._unusable(dep, repair.reason)
                            del self.reports[dep]
                            with self._handover_lock:  # (a worker may be starting one)
                                started = {entry[2] for entry in runnable} | set(running) | {entry[2] for entry in self._handover} | self._handed
                            again = {d for d in dependents.get(dep, ()) if d not in self.reports and d != name and d not in started}
                            for d in again:
                                waiting[d] += 1
                            ready[:] = [entry for entry in ready if entry[2] not in again]
                            heapq.heapify(ready)
                            make_ready(dep)
                        waiting[name] = 1
                        continue
                    if isinstance(outcome, TargetReport):
                        self._finish(outcome)
                        release(name)
                    else:
                        heapq.heappush(runnable, (-depth.get(name, 0), next(sequence), name, outcome))
                        wanted -= 1
                # Start what fits: local recipes in the free job slots, in
                # order; remote ones up to the limit of jobs in flight, handed
                # over together (a fan-out becomes one array job).
                batch = []
                if free > 0 and self._handover:
                    with self._handover_lock:  # back in line: deeper work may have come
                        for entry in self._handover:
                            heapq.heappush(runnable, entry)
                        self._handover.clear()
                while runnable and not stopping:
                    _, _, name, action = runnable[0]
                    target = self.graph.targets[name]
                    if self._runs_remotely(target):
                        if len(running) >= self.remote_jobs:
                            break
                        heapq.heappop(runnable)
                        running[name] = 0
                        batch.append((target, action))
                        self.ui.start(name)
                        continue
                    need = min(target.attrs.cpus, self.jobs)
                    if need > free and any(running.values()):
                        break
                    heapq.heappop(runnable)
                    free -= need
                    running[name] = need
                    self.ui.start(name)
                    self._pool().submit(name, self._execute, target, action, handover=need == 1)
                if batch:
                    self._pool().submit(None, self._submit_remote, batch)
                # The next one-slot recipes in line, for a worker whose recipe
                # ends to start at once (while the slots are all taken).
                if running and not stopping and not free:
                    with self._handover_lock:
                        while runnable and len(self._handover) < self.jobs:
                            _, _, name, action = runnable[0]
                            target = self.graph.targets[name]
                            if self._runs_remotely(target) or min(target.attrs.cpus, self.jobs) != 1:
                                break
                            self._handover.append(heapq.heappop(runnable))
                if not running:
                    if stopping or not (ready or runnable or self._handover):
                        break
                    continue
                if ready and not stopping:
                    continue  # the rest of what is ready, now that recipes run
                name, report = self._events.get()
                free += running.pop(name)
                if isinstance(report, _Handover):  # the worker started the next one in its slot
                    free -= 1
                    running[report.next] = 1
                    with self._handover_lock:
                        self._handed.discard(report.next)
                    self.ui.start(report.next)
                    report = report.report
                if isinstance(report, BaseException):
                    raise report
                self._finish(report)
                if report.status == FAILED and not self.keep_going:
                    stopping = True
                    with self._handover_lock:
                        self._handover.clear()  # not started: reported below as such
                release(name)
        except KeyboardInterrupt:
            self._stopping.set()
            if self.remote is not None and self.remote_started and not self.detach:
                self.remote.cancel()
            if self.executor is not None:
                self.executor.cancel_all()
            while any(running.values()):  # local recipes end at once now
                try:
                    name, report = self._events.get(timeout=0.1)
                except queue.Empty:
                    # The stop may have come just as an event was taken, before
                    # its target left `running`: wait only while work is out.
                    if self._threads is None or not self._threads.pending:
                        break
                    continue
                if isinstance(report, _Handover):
                    running[report.next] = 1  # started as the stop came: it ends at once
                    report = report.report
                if running.pop(name, 0):
                    if isinstance(report, BaseException):
                        raise report
                    if report.status != FAILED:
                        self._finish(report)
            raise
        finally:
            if self._threads is not None:
                self._threads.shutdown(wait=not self._stopping.is_set())
                self._threads = None
        for name in order:
            if name not in self.reports:
                self.reports[name] = TargetReport(name, SKIPPED, error="not started: an earlier target failed")
        return self.reports

    def _prefetch(self, names) -> None:
        """Ask the shared store about every ready target at once."""
        keys = []
        for name in names:
            target = self.graph.targets[name]
            if target.phony:
                continue
            try:
                keys.append(self.planner.action(target).key())
            except Unknown:
                continue
        self.planner.store.prefetch(keys)

    def _finish(self, report: TargetReport) -> None:
        self.reports[report.name] = report
        self.ui.finish(report)

    # -- one target, on the main thread ------------------------------------------------

    def _resolve(self, target: Target) -> TargetReport | Action:
        """A report if the target needs no recipe run, else the action to run."""
        name = target.name
        bad = [d for d in self.graph.deps[name] if self.reports[d].status in (FAILED, SKIPPED)]
        if bad:
            return TargetReport(name, SKIPPED, error=f"needs '{bad[0]}', which {self.reports[bad[0]].status}")
        unknown = [d for d in self.graph.deps[name] if self.reports[d].status == WOULD_RUN]
        if self.graph.is_alias(name):
            deps = [self.reports[d].status for d in self.graph.deps[name]]
            status = WOULD_RUN if unknown else (BUILT if BUILT in deps else CACHED)
            return TargetReport(name, status)
        try:
            action = self.planner.action(target)
        except CorruptEntry as err:  # a forged or broken result of a dependency
            raise UnusableInput(self.graph.deps[name][0], str(err)) from None
        except Unknown as u:
            made = f"'{u.path}'" if u.path.rstrip("/") == u.maker else f"'{u.path}' (made by '{u.maker}')"
            return TargetReport(name, WOULD_RUN, reasons=[f"input {made} will be rebuilt first; if its bytes come out unchanged, this target is not run"], waiting_on=u.maker)
        key = action.key()
        if not self.always and not target.phony and name not in self.force:
            result = self.planner.lookup(target, key)
            if result is not None:
                self.planner.results[name] = result
                self.planner.workspace.record(name, result)
                return TargetReport(name, CACHED, key)
        if self.dry_run:
            reasons = ["-B: always make"] if self.always else (["phony: always runs"] if target.phony else self.planner.why(target, action))
            return TargetReport(name, WOULD_RUN, key, reasons=reasons)
        self._bring_inputs(target)
        return action

    def _unusable(self, name: str, reason: str) -> None:
        """A cached target's stored bytes are gone or wrong: it is a miss after all."""
        self.planner.warnings.append(f"the stored output of '{name}' is unusable ({reason}); rebuilt it")
        self.planner.results.pop(name, None)
        self.force.add(name)

    def bring_home(self, roots: list[str], *, intermediates: bool = True) -> None:
        """Make the workspace match the graph: every output of the built
        targets holds the bytes of its current result. Without
        `intermediates` (remote builds: they may be large and far away), only
        the requested targets' outputs come home; an intermediate output is
        brought up to date only where the workspace already has one. Targets
        whose stored bytes prove unusable are rebuilt."""
        requested = set(self.graph.behind_aliases(roots))
        names = [
            n for n in self.graph.closure(roots)
            if intermediates or n in requested or any(os.path.lexists(os.path.join(self.planner.workspace.root, o.rstrip("/"))) for o in self.graph.targets[n].outputs)
        ]
        wanted = [n for n in names if n in self.planner.results and n not in self.present and self.reports.get(n) and self.reports[n].status in (CACHED, BUILT)]
        store = self.planner.store
        # every needed blob at once, not one target after another; a bad one
        # is dealt with below, target by target
        try:
            store.fetch_many(o.digest for n in wanted if self.reports[n].status == CACHED for o in self.planner.results[n].outputs)
        except CorruptEntry:
            pass
        broken = []
        for name in wanted:
            try:
                for path in self._materialize(name):
                    self.ui.note(f"restored {path} from the store")
            except CorruptEntry as err:
                self._unusable(name, str(err))
                del self.reports[name]
                broken.append(name)
        if broken:
            self.build(broken)

    def _materialize(self, name: str) -> list[str]:
        ws = self.planner.workspace
        return materialize(self.planner.store, ws.stats, ws.root, self.planner.results[name].outputs, set_aside=lambda path: self._set_aside(name, path))

    def _set_aside(self, name: str, path: str) -> None:
        """Something other than the bytes bb last wrote sits at an output path
        (edited by hand, or never written by bb): keep it, out of the way."""
        ws = self.planner.workspace
        full = os.path.join(ws.root, path.rstrip("/"))
        previous = ws.previous_digest(name, path)
        if previous is not None and workspace_digest(ws.stats, full, path.endswith("/")) == previous:
            return  # bb's own bytes of an earlier build: simply replaced
        dest = ws.set_aside(path)
        self.planner.warnings.append(f"'{path.rstrip('/')}' was changed outside bb (or bb did not write it); moved it to {dest}")

    def _bring_inputs(self, target: Target) -> None:
        """A recipe about to run reads its inputs from the workspace: make sure
        the outputs of cached upstream targets are there."""
        for dep in self.graph.behind_aliases(self.graph.deps[target.name]):
            if dep in self.planner.results and self.reports[dep].status == CACHED and dep not in self.present:
                try:
                    self._materialize(dep)
                except CorruptEntry as err:
                    raise UnusableInput(dep, str(err)) from None

    def _take_handover(self, name: str, ended):
        """On a worker whose one-slot recipe `name` ended (`ended`: its report,
        or the exception it raised): the next recipe in line to run in that
        slot, as a task; None after a failure that stops the build, and when
        `name` was the last input a target waited for: that target may come
        first (the main thread decides)."""
        if self._stopping.is_set() or isinstance(ended, BaseException) or (ended.status == FAILED and not self.keep_going):
            return None
        if self._releases(name):
            return None
        with self._handover_lock:
            if not self._handover:
                return None
            _, _, name, action = self._handover.pop(0)
            self._handed.add(name)
        return name, self._execute, (self.graph.targets[name], action), True

    def _pool(self) -> "_Workers":
        """Threads for recipes and transfers, started when first needed."""
        if self._threads is None:
            self._threads = _Workers(max(self.jobs, 4), self._events, self._take_handover)
        return self._threads

    # -- remote execution ----------------------------------------------------------------

    def _sources(self, action: Action) -> set[str]:
        """The action's inputs that the user provides (no target makes them)."""
        return {p.rstrip("/") for p, _, _ in action.inputs if self.graph.is_source(p.rstrip("/"))}

    def _runs_remotely(self, target: Target) -> bool:
        return self.remote is not None and not target.phony and not target.attrs.local

    def _submit_remote(self, batch) -> None:
        """On a worker thread: put each action and its source inputs in the
        store, then hand the jobs to the remote executor at once."""
        store, ws = self.planner.store, self.planner.workspace
        jobs, blobs, specs = [], [], []
        for target, action in batch:
            key = action.key()
            try:
                if target.attrs.secrets:
                    raise BBError(
                        f"it declares @secret {' '.join(target.attrs.secrets)}, which bb does not send to remote jobs (a job's environment is readable by anyone who can describe it).",
                        hint="Mark the target @local to run it here, or give the job role access to the secret (AWS Secrets Manager) and read it in the recipe.",
                    )
                self._clear_outputs(target)
                changed = sandbox.stage_sources(action, ws.root, self._sources(action), store, self.planner.notebooks())
                if changed:
                    raise BBError(f"its input '{changed}' changed after bb read it; nothing was sent. Run bb again.")
                digest = store.put_bytes(action.to_bytes())
            except (BBError, OSError, CorruptEntry) as err:
                text = f"{err.message} {err.hint}".strip() if isinstance(err, BBError) else str(err)
                self._events.put((target.name, TargetReport(target.name, FAILED, key, error=text)))
                continue
            specs.append(digest)
            blobs.extend(d for _, d, _ in action.inputs)
            self._remote_actions.setdefault(key, []).append((target, action))
            a = target.attrs
            jobs.append(ActionJob(key, digest, target.name, Resources(a.cpus, a.memory, a.gpus, a.timeout)))
        if not jobs:
            return
        try:
            if hasattr(store, "flush"):
                store.flush()  # a worker sharing this store reads the actions and sources from it
            if hasattr(store, "push_blobs"):
                store.push_blobs(blobs, fresh=specs)  # the worker reads them from the shared store
            with self._remote_lock:
                if not self.remote_started:
                    self.remote.start(self)
                    self.remote_started = True
            self.remote.submit(jobs)
        except Exception as err:  # every job must end with a report, or the build waits forever
            text = f"{err.message} {err.hint}".strip() if isinstance(err, BBError) else f"could not submit it: {type(err).__name__}: {err}"
            for job in jobs:
                for target, _ in self._remote_actions.pop(job.key, ()):
                    self._events.put((target.name, TargetReport(target.name, FAILED, job.key, error=text)))

    # The Sink, called from the remote executor's monitor thread.

    def stage(self, key: str, stage: str) -> None:
        for target, _ in self._remote_actions.get(key, ()):
            self.ui.stage(target.name, stage)

    def finished(self, completion: Completion) -> None:
        for target, action in self._remote_actions.pop(completion.key, ()):
            self._pool().submit(target.name, self._collect, target, action, completion)

    def _collect(self, target: Target, action: Action, completion: Completion) -> TargetReport:
        """A remote job ended: take its result from the store (trusting the
        result, never the job's status alone)."""
        key, store, ws = completion.key, self.planner.store, self.planner.workspace
        where = {"executor": self.remote.name, **completion.details, "attempts": completion.attempts}
        if completion.exit_code == 0:
            try:
                result = store.get_result(key, fresh=True)
            except CorruptEntry:
                result = None
            if result is not None and self.planner.usable(target, result):
                self.planner.results[target.name] = result
                ws.record(target.name, result)
                status = CACHED if completion.details.get("cached") else BUILT
                return TargetReport(target.name, status, key, result.duration, where=where, output=completion.log)
            error = f"the remote job ended well but left no usable result in the store ({completion.message or 'no message'})"
        elif completion.cancelled:
            error = "cancelled"
        else:
            error = f"the remote job failed: exit code {completion.exit_code}" if completion.exit_code > 0 else "the remote job failed"
            if completion.message:
                error += f" ({completion.message})"
            names = sandbox.undeclared_reads(completion.log, action, ws.root)
            if names:
                error += _undeclared_hint(completion.log.encode(), action, ws.root)
        log = ws.write_log(target.name, completion.log.encode()) if completion.log else ""
        return TargetReport(target.name, FAILED, key, error=error, output=completion.log, log=log, where=where)

    # -- one target, on a worker thread ----------------------------------------------

    def _execute(self, target: Target, action: Action) -> TargetReport:
        """Run the action, unless another bb sharing the store is running the
        very same action right now: then wait for it and take its result."""
        key = action.key()
        if target.phony:
            return self._run_recipe(target, action)
        with self.planner.store.claim(key, self._stopping.is_set) as waited:
            if waited and not self.always:
                result = self.planner.store.get_result(key, fresh=True)
                if result is not None and self.planner.usable(target, result):
                    self.planner.results[target.name] = result
                    self.planner.workspace.record(target.name, result)
                    try:
                        self._materialize(target.name)
                        return TargetReport(target.name, CACHED, key, reasons=["another bb sharing the store built it meanwhile"])
                    except (CorruptEntry, BBError, OSError):
                        pass  # not usable after all: run it here
            return self._run_recipe(target, action)

    def _run_recipe(self, target: Target, action: Action) -> TargetReport:
        scratch = None
        try:
            if self.sandbox and not target.phony:
                scratch = self._sandbox(target, action)
                if isinstance(scratch, TargetReport):
                    return scratch
            return self._run_in(target, action, scratch)
        finally:
            if scratch is not None:
                sandbox.remove(scratch)

    def _sandbox(self, target: Target, action: Action):
        """A scratch folder holding exactly the target's declared inputs."""
        ws, store, key = self.planner.workspace, self.planner.store, action.key()
        try:
            changed = sandbox.stage_sources(action, ws.root, self._sources(action), store, self.planner.notebooks())
            if changed:
                return TargetReport(target.name, FAILED, key, error=f"its input '{changed}' changed after bb read it; nothing was run. Run bb again.")
            scratch = sandbox.scratch_folder(ws.state, key)
            sandbox.lay_out(action, store, scratch)
            return scratch
        except BBError as err:
            return TargetReport(target.name, FAILED, key, error=f"{err.message} {err.hint}".strip())

    def _run_in(self, target: Target, action: Action, scratch: str | None) -> TargetReport:
        ws = self.planner.workspace
        store = self.planner.store
        key = action.key()
        reasons = self.planner.why(target, action) if self.explain else []
        started = time.time()
        cwd = scratch or ws.root

        def failed(error: str, output: bytes = b"") -> TargetReport:
            try:
                remove_outputs(ws.root, () if target.phony else target.outputs)
            except (OSError, BBError):
                pass
            log = ws.write_log(target.name, output) if output else ""
            return TargetReport(target.name, FAILED, key, time.time() - started, reasons, error=error, output=output.decode("utf-8", "replace"), log=log)

        if not target.phony:
            try:
                self._clear_outputs(target)
            except BBError as err:
                return TargetReport(target.name, FAILED, key, 0.0, reasons, error=f"{err.message} {err.hint}".strip())
            except OSError as err:
                return TargetReport(target.name, FAILED, key, 0.0, reasons, error=f"cannot prepare its outputs: {err}")
        job = Job(target.name, target.recipe or "", self.graph.settings.shell, cwd, self.planner.recipe_env(target, min(target.attrs.cpus, self.jobs)), target.attrs.timeout)
        output = b""
        for attempt in range(target.attrs.retries + 1):
            outcome = self.executor.run(job)
            output += outcome.output
            if outcome.exit_code == 0 or outcome.interrupted:
                break
            if attempt < target.attrs.retries:
                self.ui.note(f"{target.name}: attempt {attempt + 1} failed (exit {outcome.exit_code}); retrying")
                output += f"[bb: attempt {attempt + 1} failed with exit code {outcome.exit_code}; retrying]\n".encode()
        duration = time.time() - started

        if outcome.interrupted:
            return failed("interrupted", output)
        if outcome.exit_code != 0:
            error = f"timed out after {target.attrs.timeout:g}s" if outcome.timed_out else f"recipe exited with code {outcome.exit_code}"
            if scratch is not None:
                error += _undeclared_hint(output, action, ws.root)
            return failed(error, output)
        changed = None if scratch is not None else self.planner.changed_inputs(target)
        if changed:
            return failed(
                f"its input '{changed}' changed while the recipe ran, so the result may mix old and new bytes; nothing was recorded. Run bb again.",
                output,
            )
        if target.phony:
            return TargetReport(target.name, BUILT, key, duration, reasons, output=output.decode("utf-8", "replace"))
        try:
            stats = ws.stats if scratch is None else StatCache(None)
            outputs = capture(store, stats, cwd, target.outputs)
            log_digest = store.put_bytes(output) if output else ""
            result = ActionResult(
                key, outputs, 0, log_digest, outcome.started, duration, action.to_json(),
                provenance={"host": _HOST, "bb": __version__, "executor": "sandbox" if scratch else "local"},
            )
            store.put_result(result)
            if scratch is not None:
                materialize(store, ws.stats, ws.root, outputs)
        except OutputMissing as missing:
            kind = "directory" if missing.path.endswith("/") else "file"
            return failed(f"recipe succeeded but did not create the declared output {kind} '{missing.path}'", output)
        except FileChanged as err:
            return failed(f"the output '{os.path.relpath(str(err), cwd)}' changed while bb stored it (is a process the recipe started still writing it?); nothing was recorded", output)
        except BBError as err:
            return failed(f"{err.message} {err.hint}".strip(), output)
        except OSError as err:
            where = getattr(store, "root", "the store")
            if err.errno == errno.ENOSPC:
                return failed(f"no space left on the device while storing its outputs in {where}; nothing was recorded. Free some space (bb cache gc --max-size ...) or move the store (--store DIR, BB_STORE), then run bb again.", output)
            return failed(f"could not store its outputs in {where}: {err}; nothing was recorded", output)
        self.planner.results[target.name] = result
        ws.record(target.name, result)
        return TargetReport(target.name, BUILT, key, duration, reasons, output=output.decode("utf-8", "replace"))

    def _clear_outputs(self, target: Target) -> None:
        """Before a recipe runs: its outputs' places are empty (what bb did not
        write is set aside, never deleted) and their folders exist."""
        ws = self.planner.workspace
        present, folders = [], []
        for out in target.outputs:
            full = output_path(ws.root, out)
            if os.path.lexists(full):
                self._set_aside(target.name, out)
                present.append(out)
            folders.append(os.path.dirname(full))
        if present:  # usually none: a first build, or a failed run removed them
            remove_outputs(ws.root, tuple(present))
        for folder in folders:
            ws.ensure_dir(folder)
