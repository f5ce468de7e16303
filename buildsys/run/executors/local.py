"""Run recipes as local processes, each in its own process group so that a
timeout, Ctrl-C or the end of its shell stops the whole tree it started.

A recipe's output is read through a pipe into memory (the last LOG_LIMIT
bytes): creating a log file per recipe costs more than a trivial recipe.
A recipe ends when its shell exits: what it left running in the background
is killed then, so it can neither hold the build nor touch an output after
the output was recorded."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time

from buildsys.run.executors import Job, Outcome
from buildsys.run.supervisor import MARK, Supervisor

GRACE_SECONDS = 5.0
LOG_LIMIT = 8 << 20


class LocalExecutor:
    """`journal`: where the ids of running builds are kept (.bb/running), so
    that recipes left by a bb that died are found and stopped."""

    def __init__(self, journal: str):
        self._running: dict[int, tuple[subprocess.Popen, threading.Event]] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._journal = journal
        self._build_id = os.urandom(8).hex()
        self._supervisor: Supervisor | None = None

    def run(self, job: Job) -> Outcome:
        started = time.time()
        if self._supervisor is None:
            with self._lock:  # started with the first recipe, once
                if self._supervisor is None:
                    self._supervisor = Supervisor(self._build_id, self._journal)
        if self._cancelled.is_set():
            return Outcome(130, started, 0.0, interrupted=True)
        try:
            proc = subprocess.Popen(
                [job.shell, "-e", "-c", job.recipe],
                cwd=job.cwd,
                env={**job.env, MARK: self._build_id},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            return Outcome(127, started, time.time() - started, output=f"bb: cannot start {job.shell}: {err}\n".encode())
        ended = threading.Event()
        with self._lock:
            self._running[proc.pid] = (proc, ended)
        if self._cancelled.is_set():  # cancelled while it was starting
            _signal_group(proc.pid, signal.SIGKILL)
        timer = None
        expired = threading.Event()
        if job.timeout:
            def expire():
                expired.set()
                _stop([(proc, ended)])

            timer = threading.Timer(job.timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            output = _read_until_exit(proc)
            # The shell has exited but is not reaped yet, so its pid, and with
            # it the group id, cannot be reused: the group is safe to kill.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            ended.set()
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

    def close(self) -> None:
        """Every recipe has ended: no supervision needed any more."""
        if self._supervisor is not None:
            self._supervisor.close()
            self._supervisor = None

    def cancel_all(self) -> None:
        """Stop every running recipe at once: SIGTERM to all, then SIGKILL to
        those still running after one shared grace period."""
        self._cancelled.set()
        with self._lock:
            running = list(self._running.values())
        _stop(running)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(running) -> None:
    for proc, _ in running:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for proc, ended in running:
        if not ended.wait(max(0.0, deadline - time.monotonic())):
            _signal_group(proc.pid, signal.SIGKILL)


def _read_until_exit(proc: subprocess.Popen) -> bytes:
    """The recipe's output until its shell exits (not until every process
    holding the pipe has closed it)."""
    buf = bytearray()
    truncated = False
    fd = proc.stdout.fileno()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1  # no pidfd (an old kernel): read to the end of the pipe
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    try:
        open_pipe = True
        while open_pipe:
            exited = False
            for ready, _ in poller.poll():
                if ready == pidfd:
                    exited = True
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_pipe = False
                    break
                buf += chunk
                if len(buf) > 2 * LOG_LIMIT:
                    del buf[: len(buf) - LOG_LIMIT]
                    truncated = True
            if exited and open_pipe:
                # The shell is gone; take what is already in the pipe and stop.
                os.set_blocking(fd, False)
                try:
                    while chunk := os.read(fd, 1 << 16):
                        buf += chunk
                except BlockingIOError:
                    pass
                break
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        proc.stdout.close()
    if len(buf) > LOG_LIMIT:
        del buf[: len(buf) - LOG_LIMIT]
        truncated = True
    if truncated:
        return b"[bb: earlier output dropped]\n" + bytes(buf)
    return bytes(buf)
