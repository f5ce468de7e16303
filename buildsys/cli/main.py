"""The `bb` command. Make's flags where Make has one (-C, -f, -j, -k, -n, -B)."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time

from buildsys import __version__
from buildsys.errors import BatchfileError, BBError, BuildFailed, Interrupted, UsageError

COMMANDS = ("build", "plan", "why", "status", "debug", "log", "list", "graph", "clean", "cache")
BATCHFILE_NAMES = ("Batchfile", "batchfile", "Batchfile.bb")


class Context:
    """What a command works on. (A plain class: dataclasses cost a no-op build
    more to import than the rest of its work.)"""

    def __init__(self, root, batchfile, graph, workspace, store, sources=None, folders=None, read_at=0.0):
        self.root, self.batchfile, self.graph = root, batchfile, graph
        self.workspace, self.store = workspace, store
        self.sources = sources or {}  # the Batchfile and its includes: absolute path -> stat signature as read
        self.folders = folders or {}  # the graph's watched folders -> signature as read (lang.cache.folder_signatures)
        self.read_at = read_at  # when they began to be read (or the cached graph to be loaded)
        self._prefix = os.path.join(root, "")

    def full(self, path: str) -> str:
        # os.path.join, without its checks: called for each input and output of every target
        return path if path.startswith("/") else self._prefix + path


def _find_batchfile(explicit: str | None) -> str:
    if explicit:
        if not os.path.exists(explicit):
            raise BatchfileError(f"no Batchfile at '{explicit}'.", hint="Check the path given to -f.")
        return explicit
    for name in BATCHFILE_NAMES:
        if os.path.exists(name):
            return name
    raise BatchfileError(
        f"no Batchfile in {os.getcwd()}.",
        hint="Run bb in a folder with a Batchfile, or point to one with -f FILE or -C DIR.",
    )


def _split_overrides(words: list[str]) -> tuple[list[str], dict]:
    """Targets, and variables set on the command line: NAME=text is a string,
    NAME='[a, b]' a list (of records too: '[{name: a, k: 5}]'), and
    NAME.field=value sets a field of a record variable."""
    if not any("=" in w for w in words):
        return list(words), {}  # (the no-op check then imports no part of the language)
    from buildsys.lang.values import OVERRIDE_NAME, override_value

    targets, overrides = [], {}
    for w in words:
        name, eq, value = w.partition("=")
        if eq and (name.isidentifier() or OVERRIDE_NAME.fullmatch(name)):
            overrides[name] = override_value(name, value)
        else:
            targets.append(w)
    return targets, overrides


def load_context(args, wanted=(), shared=True) -> Context:
    """Parse, expand and open the stores; `shared=False` for commands that
    never read results (list, graph, clean), so they work offline."""
    from buildsys.lang import cache as graph_cache
    from buildsys.store.local import LocalStore
    from buildsys import STATE_DIR
    from buildsys.keys.workspace import Workspace

    path = _find_batchfile(args.file)
    root = os.path.dirname(os.path.abspath(path))
    state = os.path.join(root, STATE_DIR)
    overrides = getattr(args, "overrides", {})
    ident = graph_cache.identity(path, overrides, wanted)
    started = time.time()
    cached = graph_cache.load(state, ident, root)
    if cached is not None:
        graph, sources, folders = cached
    else:
        from buildsys.lang.graph import build_graph, select
        from buildsys.lang.parse import load

        model = load(path, state)
        graph = build_graph(model, overrides, root, wanted=wanted)
        with contextlib.suppress(BBError):  # (a bad name is the command's to report)
            graph.closure(select(graph, wanted))  # cached with the graph: every build of these targets needs it
        # What the graph was made from, as it was read: it validates the
        # graph cache, and the no-op stamp takes these signatures as seen.
        sources = {p: graph_cache.signature(p) for p in map(os.path.abspath, model.sources)}
        folders = graph_cache.folder_signatures(root, graph, started)
        graph_cache.save(state, ident, graph, sources, folders, started)
    store_dir = getattr(args, "store", None) or os.environ.get("BB_STORE") or graph.settings.store or STATE_DIR
    store = LocalStore(os.path.join(root, os.path.expanduser(store_dir)))
    url = _cache_url(args, graph.settings) if shared else ""
    if url:
        store = _shared(store, url, args, graph.settings)
    return Context(root, path, graph, Workspace(root), store, sources, folders, started)


def _cache_url(args, settings) -> str:
    if getattr(args, "no_cache", False):
        return ""
    url = getattr(args, "cache", None) or os.environ.get("BB_CACHE") or settings.cache
    if url and not url.startswith("s3://"):
        raise UsageError(f"'{url}' is not a shared cache location.", hint="Write it as s3://bucket/prefix.")
    return url


def _shared(local, url: str, args, settings):
    from buildsys.store.s3 import S3Store
    from buildsys.store.tiered import TieredStore

    read_only = (
        getattr(args, "cache_read_only", False)
        or os.environ.get("BB_CACHE_READ_ONLY", "") not in ("", "0", "false", "no")
        or settings.cache_mode == "read-only"
    )
    remote = S3Store(url, endpoint=settings.endpoint, region=settings.region)
    remote.check()
    return TieredStore(local, remote, read_only=read_only)


# ---- build / plan ---------------------------------------------------------------


def _run(args, *, dry_run: bool, before=None):
    """`before(ctx, order, sched)`, if given, runs before the build (`order`:
    the targets it needs): an incremental build gives the scheduler what it
    knows to be current."""
    from buildsys.lang.graph import select
    from buildsys.keys.plan import Planner
    from buildsys.run.schedule import Scheduler
    from buildsys.cli.ui import PlainUI, make_ui

    targets, args.overrides = _split_overrides(args.targets)
    ctx = load_context(args, wanted=targets)
    roots = select(ctx.graph, targets)
    jobs = args.jobs or ctx.graph.settings.jobs or os.cpu_count() or 1
    quiet = args.quiet or dry_run
    ui = PlainUI(quiet=True) if dry_run else make_ui(verbose=args.verbose, quiet=quiet)
    planner = ctx.planner = Planner(ctx.graph, ctx.store, ctx.workspace)
    executor = remote = None
    backend = getattr(args, "remote", None)
    if backend is not None:
        from buildsys.cli.remote import environment_image, remote_executor

        backend = backend or ctx.graph.settings.executor
        spec, planner.remote_image = environment_image(ctx, backend)
        if not dry_run:
            remote = remote_executor(ctx, backend, spec, ui)
    if not dry_run:
        from buildsys.run.executors.local import LocalExecutor

        executor = LocalExecutor(os.path.join(ctx.workspace.state, "running"))
    sched = Scheduler(
        planner, executor, ui, jobs=jobs, keep_going=args.keep_going, always=args.always_make, dry_run=dry_run, explain=args.verbose,
        sandbox=getattr(args, "sandbox", False), remote=remote, remote_jobs=args.jobs or (jobs if backend == "docker" else 1000),
        detach=getattr(args, "detach", False),
    )
    sched.force.update(getattr(args, "force", ()))
    t0 = time.time()
    shared = getattr(ctx.store, "remote", None) is not None
    order = ctx.graph.closure(roots)
    planner.check_declared_env(order)
    if before is not None:
        before(ctx, order, sched)
    # What was loaded and planned (the graph, the stamp, the results) lives
    # until bb exits: the collector, off while it was made, never looks at
    # it again (10,000 targets: one 15 ms pass over it saved).
    gc.freeze()
    gc.enable()
    try:
        reports = sched.build(roots)
        if not dry_run:
            intermediates = getattr(args, "intermediates", None)
            sched.bring_home(roots, intermediates=(backend is None) if intermediates is None else intermediates)
            if shared:
                ctx.store.finish(planner.results)
                ctx.store.share(planner.results)
    except KeyboardInterrupt as stop:
        raise Interrupted(
            f"{_stopped_by(stop)}. " + ("Remote jobs were left running; the next 'bb build --remote' adopts them." if getattr(args, "detach", False) and remote is not None else "Running recipes were stopped; nothing unfinished was recorded."),
            hint="Run the same command again to resume.",
            signal=getattr(stop, "signum", 2),
        ) from None
    finally:
        if remote is not None and sched.remote_started:
            remote.stop()
        if executor is not None:
            executor.close()
        ctx.workspace.save(index=not dry_run)
        ctx.workspace.close()
        planner.save()
        ui.end()
        ctx.store.close()
        if shared:
            args.cache_stats = ctx.store.stats()
        for warning in ctx.workspace.warnings + planner.warnings:
            print(f"bb: warning: {warning}", file=sys.stderr)
    return ctx, roots, reports, time.time() - t0


def _stopped_by(stop) -> str:
    import signal

    signum = getattr(stop, "signum", signal.SIGINT)
    return "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"


def _work(ctx, reports) -> dict:
    """Reports of targets that are work, leaving out aliases (rules without recipes)."""
    aliases = ctx.graph.aliases
    return {n: r for n, r in reports.items() if n not in aliases}


def _stamp(args) -> str:
    from buildsys import STATE_DIR
    from buildsys.cli import noop

    path = os.path.abspath(_find_batchfile(args.file))
    targets, overrides = _split_overrides(args.targets)
    # Everything outside the Batchfile that decides keys or where results go:
    # a stamp of a local build must not answer for --remote, nor one made
    # without the shared cache for a build with it.
    env = [os.environ.get(n) for n in ("BB_STORE", "BB_CACHE", "BB_CACHE_READ_ONLY")]
    identity = [
        path, targets, sorted(overrides.items()), args.store, env, getattr(args, "remote", None),
        getattr(args, "cache", None), getattr(args, "no_cache", False), getattr(args, "cache_read_only", False), getattr(args, "intermediates", None),
    ]
    return noop.stamp_path(os.path.join(os.path.dirname(path), STATE_DIR), identity)


def _report(args, counts: dict[str, int], entries, seconds) -> None:
    """The closing line, and the --json report: `counts`, targets per
    status; `entries()`, the TargetReport.to_json() dicts, made only for
    --json (10,000 of them cost more than a small incremental build)."""
    summary = {"counts": counts, "seconds": round(seconds, 3)}
    if getattr(args, "cache_stats", None):
        summary["cache"] = args.cache_stats
    if args.json:
        print(json.dumps({"targets": entries(), "summary": summary, "ok": not counts.get("failed")}, indent=2))
    if not args.quiet:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do"
        cache = summary.get("cache")
        if cache:
            parts += f"; shared cache: {cache['hits']} hit(s), {cache['uploaded']} uploaded, {cache['requests']} request(s)"
        print(f"bb: {parts} in {seconds:.2f}s", file=sys.stderr)


def _lock(args) -> None:
    """One builder per workspace: wait for (or, with --no-wait, refuse) the
    lock; then stop recipes a bb that died may have left running."""
    from buildsys import STATE_DIR
    from buildsys.keys.lock import Busy, lock

    state = os.path.join(os.path.dirname(os.path.abspath(_find_batchfile(args.file))), STATE_DIR)

    def waiting(holder: str) -> None:
        print(f"bb: waiting for another bb ({holder}) building in this workspace; --no-wait to fail instead", file=sys.stderr, flush=True)

    try:
        lock(state, wait=not getattr(args, "no_wait", False), on_wait=waiting)
    except Busy as busy:
        raise BBError(
            f"another bb ({busy.holder}) is building in this workspace.",
            hint="Wait for it to finish, or run without --no-wait to wait for it.",
        ) from None
    journal = os.path.join(state, "running")
    if os.path.exists(journal):
        from buildsys.run.supervisor import stop_leftovers

        if stop_leftovers(journal):
            print("bb: stopped recipes left running by an earlier bb that did not finish", file=sys.stderr)


def cmd_build(args) -> int:
    if args.dry_run:
        return cmd_plan(args, recipes=True)
    from buildsys.cli import noop

    t0 = time.time()
    gc.disable()  # until the build starts (_run): planning allocates, and frees almost nothing
    _lock(args)
    path = _stamp(args)
    stamp = changed = None
    if not args.always_make:
        stamp = noop.read(path)
        settled: dict = {}
        why = [] if stamp is not None else ["no stamp of an earlier successful build of these targets"]
        changed = noop.changes(stamp, settled, why) if stamp is not None else None
        if args.verbose:
            # Which path this build takes, and why: what a slow "nothing to do" needs explained.
            if changed is None:
                print(f"bb: planning every target: {why[0]}", file=sys.stderr)
            elif changed != ([], []):
                print(f"bb: {len(changed[0]) + len(changed[1])} file(s) changed since the last build: planning what they reach", file=sys.stderr)
        if changed == ([], []):
            if settled:
                noop.settle(path, stamp, settled)
                _learn_digests(stamp["root"], settled)
            done = stamp["report"]
            _report(args, {"cached": len(done)} if done else {}, lambda: [{"target": name, "status": "cached", "key": key, "duration": 0.0} for name, key in done.items()], time.time() - t0)
            if _kept is not None:
                _kept.append(stamp)
            return 0
    noop.discard(path)
    cone = None

    def plan_cone(ctx, order, sched):
        """Only some source files or outputs changed: plan only their cone."""
        nonlocal cone
        from buildsys.keys import incremental

        if changed is None or getattr(args, "remote", None) is not None or getattr(ctx.store, "remote", None) is not None:
            return  # remote work and the shared cache's plan bundles want the whole plan
        if getattr(args, "sandbox", False):
            return  # sandboxes take inputs from the store, which the cone's inputs need not be in
        found = incremental.cone(ctx.graph, order, ctx.root, *changed, set(stamp["watch"]))
        keys = stamp["report"] if found is not None else {}
        if found is not None and incremental.seed(sched, order, found, keys):
            cone = found

    ctx, roots, reports, seconds = _run(args, dry_run=False, before=plan_cone)
    reports = _work(ctx, reports)
    failed = [r for r in reports.values() if r.status == "failed"]
    if not failed:
        seen = {p: s for p, (s, *_) in ctx.workspace.stats.seen.items()}
        python = getattr(ctx.planner, "_python", None)
        environment = python.watch if python else ()
        if cone is None:
            noop.write(path, ctx, roots, reports, seen, environment, ctx.planner.code_watch())
        else:
            noop.update(path, stamp, ctx, cone, changed[0], reports, seen, environment, ctx.planner.code_watch())
    counts: dict[str, int] = {}
    for r in reports.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    _report(args, counts, lambda: [r.to_json() for r in reports.values()], seconds)
    if _kept is not None:
        _kept.append((stamp, ctx, reports))
    if failed:
        names = ", ".join(f"'{r.name}'" for r in failed[:5])
        raise BuildFailed(f"{len(failed)} target(s) failed: {names}.", hint="Their output is shown above; fix and run again (finished targets are kept).")
    return 0


def _learn_digests(root: str, settled: dict) -> None:
    """Files the no-op check read by their bytes (touched, or written just
    before the last stamp): the stat cache keeps their digest for their
    stat now, as a build that hashed them would."""
    from buildsys import STAT_CACHE, STATE_DIR
    from buildsys.digest import StatCache  # (not the workspace: a no-op needs no index or store)

    read = {p: s for p, s in settled.items() if len(s) == 6}
    if read:
        stats = StatCache(os.path.join(root, STATE_DIR, STAT_CACHE))
        for p, s in read.items():
            stats.learn(p, s[:4], s[4])
        stats.save()


def cmd_plan(args, recipes=False) -> int:
    ctx, roots, reports, _ = _run(args, dry_run=True)
    reports = _work(ctx, reports)
    if getattr(args, "json", False):
        print(json.dumps({"targets": [r.to_json() for r in reports.values()]}, indent=2))
        return 0
    to_run = 0
    for r in reports.values():
        target = ctx.graph.targets[r.name]
        if r.status == "would run":
            to_run += 1
            print(f"run     {r.name}")
            for reason in r.reasons:
                print(f"        {reason}" if reason.startswith("    ") else f"        because {reason}")
            if recipes and target.recipe:
                for line in target.recipe.splitlines():
                    print(f"        $ {line}")
        elif args.verbose:
            print(f"{r.status:<8}{r.name}")
    cached = sum(1 for r in reports.values() if r.status == "cached")
    print(f"bb: {to_run} to run, {cached} cached", file=sys.stderr)
    return 0


def cmd_why(args) -> int:
    args.targets = [args.target] + args.overrides_words
    args.jobs, args.keep_going, args.always_make, args.verbose, args.quiet = 1, True, False, False, True
    ctx, roots, reports, _ = _run(args, dry_run=True)
    name = roots[0]
    report = reports[name]
    if report.status == "cached":
        print(f"'{name}' is up to date: its key {report.key[:16]} is in the store.")
        return 0
    if ctx.graph.is_alias(name):
        stale = [d for d in ctx.graph.deps[name] if reports[d].status != "cached"]
        print(f"'{name}' is an alias; out of date: {', '.join(stale)}")
        chain = stale[:1]
    else:
        chain = [name]
    # Follow "input X will be rebuilt by Y" to the first target whose own inputs changed.
    seen = set()
    while chain:
        current = chain.pop()
        if current in seen:
            continue
        seen.add(current)
        r = reports[current]
        print(f"'{current}' must be rebuilt:")
        for reason in r.reasons:
            print(f"    {reason.strip()}" if reason.startswith("    ") else f"  - {reason}")
        if r.waiting_on:
            chain.append(r.waiting_on)
    return 0


def cmd_debug(args) -> int:
    """Run one target's action again, in the environment image on this
    machine's Docker Engine (the image a remote run used), and show all it
    prints: a failed remote job, reproduced locally."""
    from buildsys.lang.graph import select

    args.targets = [args.target] + args.overrides_words
    args.remote = "docker"
    args.jobs, args.keep_going, args.always_make, args.verbose, args.quiet, args.json, args.sandbox = 1, False, False, True, False, False, False
    targets, overrides = _split_overrides(args.targets)
    args.overrides = overrides
    _lock(args)
    args.force = set(select(load_context(args, wanted=targets, shared=False).graph, targets))
    ctx, roots, reports, _ = _run(args, dry_run=False)
    report = reports[roots[0]]
    print(f"bb: {roots[0]}: {report.status}" + (f" ({report.error})" if report.error else ""), file=sys.stderr)
    if report.output:
        sys.stdout.write(report.output if report.output.endswith("\n") else report.output + "\n")
    return 0 if report.status in ("built", "cached") else 1


# ---- inspection ---------------------------------------------------------------------


def cmd_status(args) -> int:
    """Does the workspace hold what the graph says? Each output of the
    selected targets (and everything they need) is ok, missing, stale (the
    bytes of another build), modified (changed outside bb) or out of date
    (its target would run)."""
    from buildsys.run.materialize import workspace_digest

    args.jobs, args.keep_going, args.always_make, args.quiet = 1, True, False, True
    verbose, args.verbose = args.verbose, False
    ctx, roots, reports, _ = _run(args, dry_run=True)
    ws = ctx.workspace
    rows = []
    for name in ctx.graph.closure(roots):
        target = ctx.graph.targets[name]
        if target.phony:
            continue
        result = ctx.planner.results.get(name) if reports[name].status == "cached" else None
        for out in target.outputs:
            full = os.path.join(ctx.root, out.rstrip("/"))
            have = workspace_digest(ws.stats, full, out.endswith("/"))
            if result is None:
                state = "out of date"
            elif have == result.output(out.rstrip("/")).digest:
                state = "ok"
            elif not os.path.lexists(full):
                state = "missing"
            elif have is not None and have == ws.previous_digest(name, out):
                state = "stale"
            else:
                state = "modified"
            rows.append({"path": out, "target": name, "state": state})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if verbose or row["state"] != "ok":
            print(f"{row['state']:<12}{row['path']}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    print("bb: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ("; 'bb build' makes the workspace match" if set(counts) - {"ok"} else ""), file=sys.stderr)
    return 0



def cmd_log(args) -> int:
    """The output of a target's last run: a failed run's saved log, else what
    its last successful build printed (kept in the store)."""
    from buildsys.lang.graph import select

    args.overrides = {}
    ctx = load_context(args, wanted=[args.target])
    name = select(ctx.graph, [args.target])[0]
    failed_log = ctx.workspace.failed_log_path(name)
    entry = ctx.workspace.last_result_any(name)
    if os.path.exists(failed_log) and (entry is None or os.path.getmtime(failed_log) > entry.started + entry.duration):
        print(f"bb: the last run of '{name}' failed; its output:", file=sys.stderr)
        with open(failed_log, "rb") as f:
            sys.stdout.write(f.read().decode("utf-8", "replace"))
        return 0
    if entry is None:
        raise BBError(f"'{name}' has not been built in this workspace yet.", hint=f"Run 'bb build {name}'.")
    if not entry.log:
        print(f"bb: the last build of '{name}' printed nothing.", file=sys.stderr)
        return 0
    try:
        sys.stdout.write(ctx.store.read_bytes(entry.log).decode("utf-8", "replace"))
    except (OSError, KeyError):
        raise BBError(f"the output of '{name}' is no longer in the store (garbage-collected).") from None
    return 0


def cmd_list(args) -> int:
    args.overrides = {}
    ctx = load_context(args, shared=False)
    rows = []
    for t in ctx.graph.targets.values():
        rows.append({
            "target": t.name,
            "outputs": list(t.outputs) if not t.phony else [],
            "inputs": list(t.inputs),
            "phony": t.phony,
            "default": t.name == ctx.graph.default,
            "where": str(t.location),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("target", "inputs", "kind", "defined at", box=None)
        for r in rows:
            kind = ("phony" if r["phony"] else "file") + (", default" if r["default"] else "")
            table.add_row(r["target"], str(len(r["inputs"])), kind, r["where"])
        Console().print(table)
    else:
        for r in rows:
            print(r["target"] + ("  (default)" if r["default"] else ""))
    return 0


def cmd_graph(args) -> int:
    from buildsys.cli.export import to_dot, to_mermaid
    from buildsys.lang.graph import select

    targets, args.overrides = _split_overrides(args.targets)
    ctx = load_context(args, wanted=targets, shared=False)
    names = ctx.graph.closure(select(ctx.graph, targets)) if targets else list(ctx.graph.targets)
    print(to_mermaid(ctx.graph, names) if args.format == "mermaid" else to_dot(ctx.graph, names))
    return 0


def cmd_clean(args) -> int:
    import shutil

    from buildsys.lang.graph import select
    from buildsys.run.materialize import UnsafePath, remove_outputs

    targets, args.overrides = _split_overrides(args.targets)
    ctx = load_context(args, wanted=targets, shared=False)
    _lock(args)
    names = select(ctx.graph, targets) if targets else list(ctx.graph.targets)
    removed = 0
    for name in names:
        t = ctx.graph.targets[name]
        if t.phony:
            continue
        try:
            removed += len(remove_outputs(ctx.root, t.outputs, prune_to=ctx.root))
        except UnsafePath as err:
            print(f"bb: warning: left '{name}' alone: {err.message}", file=sys.stderr)
    print(f"bb: removed {removed} output(s) from the workspace; the store still has them", file=sys.stderr)
    if args.purge:
        shutil.rmtree(ctx.store.root, ignore_errors=True)
        for cache in ("noop", "graph", "parse"):
            shutil.rmtree(os.path.join(ctx.workspace.state, cache), ignore_errors=True)
        print(f"bb: removed the local store {ctx.store.root} and bb's caches", file=sys.stderr)
    return 0


# ---- argument parsing ---------------------------------------------------------------


def _common(default) -> argparse.ArgumentParser:
    # The same options before and after the command; after it they must not
    # reset what was given before it, hence SUPPRESS as their default there.
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    common.add_argument("-C", "--directory", metavar="DIR", help="change to DIR before doing anything")
    common.add_argument("-f", "--file", metavar="FILE", help="read FILE as the Batchfile")
    common.add_argument("--store", metavar="DIR", help="local store folder (default: setting 'store', $BB_STORE, or .bb)")
    common.add_argument("--cache", metavar="URL", help="shared cache, s3://bucket/prefix (default: setting 'cache' or $BB_CACHE)")
    common.add_argument("--no-cache", action="store_true", help="use only the local store")
    common.add_argument("--cache-read-only", action="store_true", help="read the shared cache but never write to it ($BB_CACHE_READ_ONLY=1)")
    return common


REMOTES = ("batch", "docker")


def remote_option(p) -> None:
    p.add_argument(
        "--remote", nargs="?", const="", default=None, metavar="BACKEND",
        help="run missing work as containers: on AWS Batch (batch), or on this machine's Docker Engine (docker); default: the 'executor' setting, else batch",
    )


def _remote_words(argv: list[str]) -> list[str]:
    """`--remote docker` names a backend; `--remote out.txt` does not (the
    word is a target): only known backend names are taken."""
    out = []
    for i, word in enumerate(argv):
        if word == "--remote" and (i + 1 >= len(argv) or argv[i + 1] not in REMOTES):
            out.append("--remote=")
        else:
            out.append(word)
    return out


class _Partial(argparse.ArgumentParser):
    """A parser that holds only the commands its command line names: the
    rest cost ~10 ms to build on every run. What it cannot take (an error,
    help) is the full parser's to answer, in the usual words."""

    def error(self, message):
        raise _Retry

    def print_help(self, file=None):
        raise _Retry


class _Retry(Exception):
    pass


def build_parser(commands: set[str] | None = None) -> argparse.ArgumentParser:
    """bb's parser; with `commands`, only those commands' parsers."""
    common = _common(argparse.SUPPRESS)

    def wanted(name: str) -> bool:
        return commands is None or name in commands

    parser = (argparse.ArgumentParser if commands is None else _Partial)(
        prog="bb",
        description="bb builds the targets of a Batchfile, running only what is not already in its content-addressed store.",
        epilog="Run 'bb COMMAND --help' for a command's options. Exit codes: 0 ok, 1 build failed, 2 bad Batchfile or usage, 130 interrupted.",
        parents=[_common(None)],
    )
    parser.add_argument("--version", action="version", version=f"bb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def build_options(p):
        p.add_argument("targets", nargs="*", metavar="TARGET|VAR=VALUE", help="targets, output paths or glob patterns; VAR=VALUE overrides a variable")
        p.add_argument("-j", "--jobs", type=int, metavar="N", help="run N recipes at once (default: the number of cores)")
        p.add_argument("-k", "--keep-going", action="store_true", help="keep building what does not depend on a failed target")
        p.add_argument("-B", "--always-make", action="store_true", help="run every recipe, ignoring the store")
        p.add_argument("-v", "--verbose", action="store_true", help="show every target, why it ran, and recipe output")
        p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
        p.add_argument("--json", action="store_true", help="print a machine-readable report on stdout at the end")
        remote_option(p)

    if wanted("build"):
        p = sub.add_parser("build", parents=[common], help="build targets (the default target if none is named)")
        build_options(p)
        p.add_argument("-n", "--dry-run", action="store_true", help="print what would run and why, run nothing")
        p.add_argument("--no-wait", action="store_true", help="fail at once if another bb is building in this workspace (default: wait for it)")
        p.add_argument(
            "--intermediates", action=argparse.BooleanOptionalAction, default=None,
            help="bring every target's outputs into the workspace, not only the requested ones (default: yes, but not with --remote)",
        )
        p.add_argument("--detach", action="store_true", help="with --remote: on Ctrl-C, leave submitted jobs running (the next --remote adopts them)")
        p.add_argument("--sandbox", action="store_true", help="run each recipe in a scratch folder holding only its declared inputs, as a remote worker does (finds undeclared inputs)")
        p.set_defaults(func=cmd_build)

    if wanted("plan"):
        p = sub.add_parser("plan", parents=[common], help="show what a build would run, and why")
        build_options(p)
        p.set_defaults(func=cmd_plan)

    if wanted("why"):
        p = sub.add_parser("why", parents=[common], help="explain why a target would be rebuilt: which input, line or parameter changed")
        p.add_argument("target")
        p.add_argument("overrides_words", nargs="*", metavar="VAR=VALUE")
        remote_option(p)
        p.set_defaults(func=cmd_why)

    if wanted("status"):
        p = sub.add_parser("status", parents=[common], help="outputs in the workspace that are missing, stale, modified or out of date")
        p.add_argument("targets", nargs="*", metavar="TARGET|VAR=VALUE")
        p.add_argument("-v", "--verbose", action="store_true", help="list the outputs that are ok too")
        p.add_argument("--json", action="store_true")
        remote_option(p)
        p.set_defaults(func=cmd_status)

    if wanted("debug"):
        p = sub.add_parser("debug", parents=[common], help="run a target's action again in its environment image on the local Docker Engine, and show its output")
        p.add_argument("target")
        p.add_argument("overrides_words", nargs="*", metavar="VAR=VALUE")
        p.set_defaults(func=cmd_debug)

    if wanted("log"):
        p = sub.add_parser("log", parents=[common], help="print what a target's last run printed")
        p.add_argument("target")
        p.set_defaults(func=cmd_log)

    if wanted("list"):
        p = sub.add_parser("list", parents=[common], help="list the targets")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_list)

    if wanted("graph"):
        p = sub.add_parser("graph", parents=[common], help="print the dependency graph (DOT or Mermaid)")
        p.add_argument("targets", nargs="*", metavar="TARGET")
        p.add_argument("--format", choices=("dot", "mermaid"), default="dot")
        p.set_defaults(func=cmd_graph)

    if wanted("clean"):
        p = sub.add_parser("clean", parents=[common], help="remove targets' outputs from the workspace (the store keeps them)")
        p.add_argument("targets", nargs="*", metavar="TARGET")
        p.add_argument("--purge", action="store_true", help="also delete the local store and bb's caches (parsed Batchfiles, graphs, no-op stamps)")
        p.set_defaults(func=cmd_clean)

    if wanted("cache"):
        from buildsys.cli import cache as cachecli

        cache = sub.add_parser("cache", help="manage the local store and the shared cache").add_subparsers(dest="cache_command", metavar="COMMAND")
        p = cache.add_parser("push", parents=[common], help="upload the local results of targets to the shared cache")
        p.add_argument("targets", nargs="*", metavar="TARGET|VAR=VALUE")
        p.set_defaults(func=cachecli.push)
        p = cache.add_parser("pull", parents=[common], help="bring targets' outputs from the shared cache, building nothing")
        p.add_argument("targets", nargs="*", metavar="TARGET|VAR=VALUE")
        p.set_defaults(func=cachecli.pull)
        p = cache.add_parser("ls", parents=[common], help="where each target's current result is: local, shared, or missing")
        p.add_argument("targets", nargs="*", metavar="TARGET|VAR=VALUE")
        p.set_defaults(func=cachecli.ls)
        p = cache.add_parser("stats", parents=[common], help="size of the local store and of the shared cache")
        p.set_defaults(func=cachecli.stats)
        p = cache.add_parser("verify", parents=[common], help="re-hash every blob and report corrupt ones")
        p.add_argument("--shared", action="store_true", help="verify the shared cache instead of the local store")
        p.add_argument("--delete", action="store_true", help="remove the corrupt blobs")
        p.set_defaults(func=cachecli.verify)
        p = cache.add_parser("gc", parents=[common], help="delete old results and unreferenced blobs")
        p.add_argument("--max-size", metavar="SIZE", help="shrink to SIZE (such as 10G), oldest results first")
        p.add_argument("--max-age", metavar="AGE", help="drop results older than AGE (such as 30d)")
        p.add_argument("--include-current", action="store_true", help="may also drop what the current targets use")
        p.add_argument("--shared", action="store_true", help="collect in the shared cache instead of the local store")
        p.add_argument("-n", "--dry-run", action="store_true", help="say what would be removed")
        p.set_defaults(func=cachecli.gc)
    return parser


def main(argv=None) -> int:
    # Planning allocates many small objects and few cycles: collect rarely.
    gc.set_threshold(100_000, 50, 100)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not any(a in COMMANDS for a in argv) and not any(a in ("-h", "--help", "--version") for a in argv):
        argv = ["build"] + argv  # plain `bb [TARGET...] [-j N]` builds, as `make` does
    try:
        args = build_parser({a for a in argv if a in COMMANDS}).parse_args(_remote_words(argv))
    except _Retry:
        args = build_parser().parse_args(_remote_words(argv))
    if getattr(args, "func", None) is None:
        build_parser().parse_args(argv + ["--help"])
    _handle_stop_signals()
    try:
        if args.directory:
            try:
                os.chdir(args.directory)
            except OSError as err:
                raise UsageError(f"cannot change to directory '{args.directory}': {err.strerror}.", hint="Check the path given to -C.") from None
        return args.func(args)
    except BBError as err:
        print(err.render(), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as stop:
        print(f"bb: {_stopped_by(stop)}.", file=sys.stderr)
        return 128 + getattr(stop, "signum", 2)
    except BrokenPipeError:
        return 1
    except Exception as err:  # a bug in bb, not bad input: one paragraph, traceback on demand
        if os.environ.get("BB_DEBUG"):
            raise
        print(f"bb: internal error: {type(err).__name__}: {err}. This is a bug in bb; rerun with BB_DEBUG=1 for a traceback and report it.", file=sys.stderr)
        return 3


def _handle_stop_signals() -> None:
    import signal

    from buildsys.errors import Stopped

    def stop(signum, frame):
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, stop)


# What a build loaded (the graph, the stamp, thousands of reports), kept
# referenced when bb runs as a program: entry() then leaves through
# os._exit, and nothing frees it one object at a time (~10 ms after 10,000
# targets). None when main() is called in a process that goes on; empty
# after any other command, which leaves as Python does.
_kept: list | None = None


def entry() -> None:
    global _kept
    _kept = []
    code = main()
    # After a build, everything bb keeps is on disk (files written whole and
    # closed, its databases closed): leave without the interpreter freeing
    # the build's objects one by one, ~15 ms after 10,000 targets. Only when
    # no thread of bb's is still at work; exit handlers still run.
    import threading  # (imported already wherever a thread was started)

    if not _kept or any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # its reader went away (bb ... | head): nothing more to tell it
    os._exit(code)
