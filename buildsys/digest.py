"""Digests (blake3 of bytes) and the stat cache that spares re-hashing.

A file's digest is remembered against (size, mtime_ns, inode, ctime_ns), as git
and DVC do; only files whose stat changed are read again. A directory's digest
is the digest of its canonical listing (relative path, executable bit, digest
of each file), so trees are keyed by content exactly like files.
"""
from __future__ import annotations

import json
import os
import stat as statmod
import time
from dataclasses import dataclass

from blake3 import blake3

CHUNK = 1 << 22


def hash_bytes(data: bytes) -> str:
    return blake3(data).hexdigest()


def hash_file(path: str) -> str:
    # One reused buffer: memory stays flat whatever the file's size (mmap
    # would be as fast but shows the whole file in the process's RSS).
    h = blake3()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@dataclass(frozen=True)
class FileDigest:
    digest: str
    size: int
    executable: bool = False




def tree_manifest(entries: dict[str, FileDigest]) -> bytes:
    """The canonical listing of a directory: sorted, relative, '/'-separated."""
    listing = [[rel, fd.digest, fd.size, fd.executable] for rel, fd in sorted(entries.items())]
    return json.dumps(listing, separators=(",", ":")).encode()


def is_racy(mtime_ns: int, now: float) -> bool:
    """Could this file change again without its mtime changing? Only if it was
    modified within one timestamp tick of now (git's racy-clean rule). Whole-
    second mtimes suggest a coarse filesystem (2 s ticks on FAT); others tick
    in nanoseconds to milliseconds."""
    window = 2.0 if mtime_ns % 1_000_000_000 == 0 else 0.05
    return now - mtime_ns / 1e9 < window


class StatCache:
    """path -> digest, trusted while the file's stat is unchanged."""

    def __init__(self, path: str | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path:
            try:
                with open(path) as f:
                    self.entries = json.load(f)
            except (OSError, ValueError):
                self.entries = {}

    def file(self, path: str, st: os.stat_result | None = None) -> FileDigest:
        st = st or os.stat(path)
        sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        entry = self.entries.get(path)
        executable = bool(st.st_mode & statmod.S_IXUSR)
        if entry is not None and entry[:4] == sig:
            return FileDigest(entry[4], st.st_size, executable)
        digest = hash_file(path)
        self.remember(path, st, digest)
        return FileDigest(digest, st.st_size, executable)

    def remember(self, path: str, st: os.stat_result, digest: str) -> None:
        if is_racy(st.st_mtime_ns, time.time()):
            self.entries.pop(path, None)
            return
        self.entries[path] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest]
        self.dirty = True

    def tree(self, root: str) -> dict[str, FileDigest]:
        """Digest every file under a directory, keyed by '/'-separated relative path."""
        out: dict[str, FileDigest] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                out[rel] = self.file(full)
        return out

    def save(self) -> None:
        if not (self.dirty and self.path):
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w") as f:
                f.write(json.dumps(self.entries, separators=(",", ":")))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass
