"""The workspace: the project folder and bb's state inside it (.bb/):
the stat cache, the parse cache, each target's last action result (for
`bb why`, and so a no-op build reads one file instead of one per target),
the logs of the last failed runs, and what was set aside."""
from __future__ import annotations

import json
import os
import re
import shutil

from buildsys import STATE_DIR
from buildsys.digest import StatCache, is_digest
from buildsys.files import write_atomic
from buildsys.store.api import ActionResult, CorruptEntry


class Workspace:
    def __init__(self, root: str):
        self.root = root
        self.state = os.path.join(root, STATE_DIR)
        self.stats = StatCache(os.path.join(self.state, "stat-cache.json"))
        self._last_path = os.path.join(self.state, "last-builds.json")
        self._last: dict[str, dict] | None = None
        self._previous: dict[str, dict] = {}  # as read at the start: what bb last wrote
        self._last_dirty = False
        self._dirs: set[str] = set()  # folders known to exist
        self.warnings: list[str] = []

    @property
    def last(self) -> dict[str, str]:
        """target -> key of its last successful build."""
        return {name: entry["key"] for name, entry in self._entries().items()}

    def last_key(self, target: str) -> str | None:
        """The key of the target's last successful build."""
        entry = self._entries().get(target)
        return entry["key"] if entry else None

    def _entries(self) -> dict[str, dict]:
        if self._last is None:
            try:
                with open(self._last_path) as f:
                    raw = json.load(f)
            except FileNotFoundError:
                raw = {}
            except (OSError, ValueError):
                raw = None
            if type(raw) is not dict:
                raw = {}
                self.warnings.append(f"ignored {os.path.relpath(self._last_path)}: it is not what bb writes (bb keeps it again from this build on)")
            # An entry bb did not write is dropped, never trusted.
            self._last = {k: v for k, v in raw.items() if type(v) is dict and is_digest(v.get("key"))}
            self._previous = dict(self._last)
        return self._last

    def last_result(self, target: str, key: str) -> ActionResult | None:
        """The target's last result, if it was for this key."""
        entry = self._entries().get(target)
        if entry is None or entry["key"] != key:
            return None
        try:
            return ActionResult.from_json({**entry, "action": {}})
        except CorruptEntry:
            return None

    def previous_digest(self, target: str, path: str) -> str | None:
        """The digest of what bb last wrote at an output path of `target`."""
        self._entries()
        entry = self._previous.get(target)
        if entry is None:
            return None
        for out in entry.get("outputs") or ():
            if type(out) is dict and out.get("path") == path:
                digest = out.get("digest")
                return digest if is_digest(digest) else None
        return None

    def record(self, target: str, result: ActionResult) -> None:
        old = self._entries().get(target)
        # Same key is not enough: a corrupt result found under it may since
        # have been replaced by a rebuild.
        if old is None or old.get("key") != result.key or old.get("log") != result.log or len(old.get("outputs") or ()) != len(result.outputs) or any(
            type(o) is not dict or o.get("digest") != n.digest or o.get("path") != n.path for o, n in zip(old["outputs"], result.outputs)
        ):
            entry = result.to_json()
            del entry["action"]  # the store has it; keep this index small
            self._last[target] = entry
            self._last_dirty = True

    def forget(self, target: str) -> None:
        if self._entries().pop(target, None) is not None:
            self._last_dirty = True

    def ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
            self._dirs.add(path)

    def last_result_any(self, target: str) -> ActionResult | None:
        """The target's last successful result, whatever its key."""
        entry = self._entries().get(target)
        return self.last_result(target, entry["key"]) if entry else None

    def set_aside(self, rel: str) -> str:
        """Move what sits at an output path, which bb did not write, to
        .bb/modified/ (never delete it); returns where it went."""
        rel = rel.rstrip("/")
        dest = os.path.join(self.state, "modified", rel)
        n = 0
        while os.path.lexists(dest):
            n += 1
            dest = os.path.join(self.state, "modified", f"{rel}.~{n}~")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(os.path.join(self.root, rel), dest)
        return os.path.relpath(dest, self.root)

    def failed_log_path(self, target: str) -> str:
        return os.path.join(self.state, "logs", re.sub(r"[^A-Za-z0-9._-]+", "_", target) + ".log")

    def write_log(self, target: str, output: bytes) -> str:
        """Save a failed recipe's output where the user can read it."""
        path = self.failed_log_path(target)
        try:
            self.ensure_dir(os.path.dirname(path))
            with open(path, "wb") as f:
                f.write(output)
        except OSError as err:
            self.warnings.append(f"could not save the log of '{target}' ({err.strerror})")
        return os.path.relpath(path)

    def save(self, index: bool = True) -> None:
        """Write the state files; they are caches and indexes, so a full disk
        costs a warning and some speed next time, never the build. `index`:
        also the record of what each target's outputs hold (not after a dry
        run, which changed none)."""
        self.stats.save()
        if self._last_dirty and index:
            try:
                write_atomic(self._last_path, json.dumps(self._last, separators=(",", ":")).encode())
                self._last_dirty = False
            except OSError as err:
                self.warnings.append(f"could not save {os.path.relpath(self._last_path)} ({err.strerror}); the next build checks more")


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
