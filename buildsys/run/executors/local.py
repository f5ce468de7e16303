"""Run recipes as local processes, each in its own process group so that a
timeout or Ctrl-C stops the whole tree a recipe started.

A recipe's output is read through a pipe into memory (the last LOG_LIMIT
bytes): creating a log file per recipe costs more than a trivial recipe."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from buildsys.run.executors import Job, Outcome

GRACE_SECONDS = 5.0
LOG_LIMIT = 8 << 20


class LocalExecutor:
    def __init__(self):
        self._running: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def run(self, job: Job) -> Outcome:
        started = time.time()
        if self._cancelled.is_set():
            return Outcome(130, started, 0.0, interrupted=True)
        try:
            proc = subprocess.Popen(
                [job.shell, "-e", "-c", job.recipe],
                cwd=job.cwd,
                env=job.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            return Outcome(127, started, time.time() - started, output=f"bb: cannot start {job.shell}: {err}\n".encode())
        with self._lock:
            self._running[proc.pid] = proc
        timer = None
        expired = threading.Event()
        if job.timeout:
            def expire():
                expired.set()
                _stop(proc)

            timer = threading.Timer(job.timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            output = _read_tail(proc.stdout)
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._running.pop(proc.pid, None)
        return Outcome(
            proc.returncode,
            started,
            time.time() - started,
            timed_out=expired.is_set(),
            interrupted=self._cancelled.is_set(),
            output=output,
        )

    def cancel_all(self) -> None:
        self._cancelled.set()
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:
            _stop(proc)


def _read_tail(stream) -> bytes:
    buf = bytearray()
    truncated = False
    with stream:
        while chunk := stream.read1(1 << 16):
            buf += chunk
            if len(buf) > 2 * LOG_LIMIT:
                del buf[: len(buf) - LOG_LIMIT]
                truncated = True
    if truncated:
        return b"[bb: earlier output dropped]\n" + bytes(buf[-LOG_LIMIT:])
    return bytes(buf)


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
