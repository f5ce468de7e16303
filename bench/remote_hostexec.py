#!/usr/bin/env python3
"""`bb build --remote ...` with every job run on this machine, for the benchmark's
set-up only (bench/remote_bench.py, section "cached").

    python bench/remote_hostexec.py [--threads N] -- build --remote --no-cache -q

It runs bb's own command line (`buildsys.cli.main.main`) in this process with
one thing replaced: the remote executor. Instead of an AWS Batch (or Docker)
executor, each job is run by bb's worker code (`buildsys.worker.run`, what
`python -m buildsys.worker` does in a job container) on a thread here, against
the build's local store. So the store ends up with exactly the results a
remote run would have recorded, under the remote keys (keyed by the
environment image's name, which differs from a local build's keys), without
10,000 containers, and without pulling or building the image (`ensure_image`
is skipped: the remote keys need only the image's name, which bb computes from
the settings before it asks for the image).

Why the benchmark needs this: `bb cache push` plans with local keys, so there
is no bb command that puts remote-keyed results made elsewhere into the shared
cache; a `bb build --remote` whose results are all in the local store does
(it shares them and their plan bundle at the end without submitting anything),
and that is how the benchmark seeds the bucket.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor


class HostExecutor:
    """A RemoteExecutor (see buildsys/run/executors/__init__.py) that runs each
    job with bb's worker code on a thread of this process."""

    name = "host"

    def __init__(self, store, threads: int):
        self.store = getattr(store, "local", store)  # the local tier of a tiered store
        self.threads = threads
        self.sink = None
        self.pool = None
        self.ran = 0
        self._lock = threading.Lock()

    def start(self, sink) -> None:
        self.sink = sink
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="host-job")

    def submit(self, jobs) -> None:
        for job in jobs:
            self.pool.submit(self._run, job)

    def _run(self, job) -> None:
        from buildsys import worker
        from buildsys.run.executors import Completion

        code, message = 2, ""
        try:
            with tempfile.TemporaryDirectory(prefix="bb-host-job.") as scratch:
                code = worker.run(self.store, job.action, float(job.resources.timeout or 0), scratch)
        except Exception as err:  # noqa: BLE001 - reported as the job's failure
            message = f"{type(err).__name__}: {err}"
        with self._lock:
            self.ran += 1
        self.sink.finished(Completion(job.key, code, "host", message))

    def cancel(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class _JobsQuiet:
    """sys.stdout that drops what the host-job threads write."""

    def __init__(self, real, name: str = "host-job"):
        self.real, self.name = real, name
        self.null = open(os.devnull, "w")
        self.buffer = _JobsQuiet.__new__(_JobsQuiet)
        self.buffer.real, self.buffer.name, self.buffer.null, self.buffer.buffer = real.buffer, name, self.null.buffer, None

    def _target(self):
        return self.null if threading.current_thread().name.startswith(self.name) else self.real

    def write(self, data):
        return self._target().write(data)

    def flush(self):
        return self._target().flush()

    def __getattr__(self, attr):
        return getattr(self.real, attr)


def share_local_executor() -> None:
    """Make every LocalExecutor of this process one shared instance.

    The worker builds a LocalExecutor per job, and each starts a supervisor
    process (buildsys/run/supervisor.py) with its first recipe: about 50 ms of
    Python start-up per job, which a job container pays too, but which would
    make the set-up of 10,000 results take minutes here. Shared, there is one
    supervisor for all the jobs of this process."""
    import buildsys.run.executors.local as local

    if getattr(local.LocalExecutor, "_bench_shared", False):
        return
    real_class = local.LocalExecutor
    journal = tempfile.mkdtemp(prefix="bb-host-journal.")
    lock = threading.Lock()
    shared = []

    class Shared:
        _bench_shared = True

        def __init__(self, _journal: str):
            with lock:
                if not shared:
                    shared.append(real_class(os.path.join(journal, "running")))
            self.real = shared[0]

        def run(self, job):
            return self.real.run(job)

        def cancel_all(self) -> None:
            self.real.cancel_all()

        def close(self) -> None:
            pass  # the shared one lives as long as the process

    def end() -> None:
        if shared:
            shared[0].close()
        shutil.rmtree(journal, ignore_errors=True)

    atexit.register(end)
    local.LocalExecutor = Shared


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("bb_args", nargs=argparse.REMAINDER, help="-- then bb's arguments")
    args = ap.parse_args(argv)
    bb_args = args.bb_args[1:] if args.bb_args[:1] == ["--"] else args.bb_args

    import buildsys.cli.remote as remote

    made = []

    def remote_executor(ctx, backend, spec, ui):
        made.append(HostExecutor(ctx.store, args.threads))
        return made[-1]

    remote.remote_executor = remote_executor
    share_local_executor()
    # The worker prints its progress lines on stdout: the jobs' threads write to
    # nowhere, bb's own (its --json report) to the real stdout.
    real_stdout = sys.stdout
    sys.stdout = _JobsQuiet(real_stdout)
    from buildsys.cli.main import main as bb_main

    try:
        code = bb_main(bb_args)
    finally:
        sys.stdout = real_stdout
    print(f"host executor: {sum(e.ran for e in made)} job(s) run here", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
