"""The workspace's lock (.bb/lock): one builder per workspace. Its own
module, light to import: the no-op check takes it before anything else."""
from __future__ import annotations

import os


class Busy(Exception):
    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


_held = []  # the lock's file stays open (and so locked) until bb exits


def lock(state: str, *, wait: bool, on_wait) -> None:
    """Take the workspace's lock (.bb/lock). The kernel releases it when bb
    exits, however it exits, so a crash never leaves it stuck."""
    import fcntl

    os.makedirs(state, exist_ok=True)
    fd = os.open(os.path.join(state, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "pid unknown"
        if not wait:
            os.close(fd)
            raise Busy(holder) from None
        on_wait(holder)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    _held.append(fd)
