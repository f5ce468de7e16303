"""Run recipes as local processes, each in its own process group so that a
timeout or Ctrl-C stops the whole tree a recipe started."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from . import Job, Outcome

GRACE_SECONDS = 5.0


class LocalExecutor:
    def __init__(self):
        self._running: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def run(self, job: Job) -> Outcome:
        started = time.time()
        if self._cancelled.is_set():
            return Outcome(130, started, 0.0, interrupted=True)
        with open(job.log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    [job.shell, "-e", "-c", job.recipe],
                    cwd=job.cwd,
                    env=job.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                log.write(f"bb: cannot start {job.shell}: {err}\n".encode())
                return Outcome(127, started, time.time() - started)
            with self._lock:
                self._running[proc.pid] = proc
            timed_out = False
            try:
                proc.wait(timeout=job.timeout or None)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop(proc)
            finally:
                with self._lock:
                    self._running.pop(proc.pid, None)
        return Outcome(
            proc.returncode,
            started,
            time.time() - started,
            timed_out=timed_out,
            interrupted=self._cancelled.is_set(),
        )

    def cancel_all(self) -> None:
        self._cancelled.set()
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the recipe's process group, then SIGKILL after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
