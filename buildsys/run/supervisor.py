"""Recipes never outlive the bb that started them.

Every recipe of a build carries BB_BUILD_ID=<id> in its environment and runs
in its own process group. Two things stop what a dead bb left behind:

- a supervisor: a small process started with the first recipe, holding the
  read end of a pipe from bb. When bb exits normally it says so; when the
  pipe closes without that word (kill -9, a crash), the supervisor stops
  every process group holding a process marked with the build's id;
- a journal, .bb/running: the ids of builds in progress. The next bb in this
  workspace (it holds the workspace lock, so the writer is dead) stops what
  is still marked with them before it starts anything.

Processes are found by their mark in /proc, never by a remembered pid alone,
so a reused pid is never signalled.
"""
from __future__ import annotations

import os
import signal
import sys
import time

MARK = "BB_BUILD_ID"
GRACE_SECONDS = 5.0


def marked_groups(build_id: str) -> set[int]:
    """Process groups holding a process whose environment carries the mark."""
    needle = f"{MARK}={build_id}".encode()
    groups = set()
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return groups
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z":  # a zombie is already dead
            groups.add(int(fields[2]))
    return groups


def stop_marked(build_id: str, grace: float = GRACE_SECONDS) -> int:
    """SIGTERM every group marked with the id, SIGKILL what is left after
    the grace period; returns how many groups there were."""
    groups = marked_groups(build_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except OSError:
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline and marked_groups(build_id):
            time.sleep(0.05)
        if not marked_groups(build_id):
            break
    return len(groups)


def stop_leftovers(journal: str) -> int:
    """Stop recipes of builds named in a journal whose bb is gone."""
    try:
        with open(journal) as f:
            ids = [line.strip() for line in f if line.strip()]
    except OSError:
        return 0
    stopped = sum(stop_marked(build_id) for build_id in ids if build_id.isalnum())
    try:
        os.unlink(journal)
    except OSError:
        pass
    return stopped


class Supervisor:
    """bb's side: starts the supervisor process and tells it when all is well."""

    def __init__(self, build_id: str, journal: str):
        import subprocess

        self.build_id = build_id
        self.journal = journal
        os.makedirs(os.path.dirname(journal), exist_ok=True)
        with open(journal, "a") as f:
            f.write(build_id + "\n")
        # Its own session: a Ctrl-C or a kill of bb's process group leaves it
        # standing to do its work.
        # This very file runs as the supervisor (stdlib only, no site: it
        # starts in milliseconds).
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), build_id],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/",
        )

    def close(self) -> None:
        """All recipes have ended: the supervisor may go, the journal too.
        It is not waited for (a few ms of its exit at the end of every
        build): told "done", it stops nothing, and what is left of it is
        reaped when bb exits."""
        try:
            self._proc.stdin.write(b"done\n")
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            os.unlink(self.journal)
        except OSError:
            pass


def main() -> None:
    build_id = sys.argv[1]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe decides
    said = sys.stdin.buffer.read()
    if b"done" not in said:
        stop_marked(build_id)


if __name__ == "__main__":
    main()
