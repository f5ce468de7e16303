"""Digests (blake3 of bytes) and the stat cache that spares re-hashing.

A file's digest is remembered against (size, mtime_ns, inode, ctime_ns), as git
and DVC do; only files whose stat changed are read again. A directory's digest
is the digest of its canonical listing (relative path, executable bit, digest
of each file), so trees are keyed by content exactly like files.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import re
import stat as statmod
import time

from blake3 import blake3

CHUNK = 1 << 22
_HEX = re.compile(r"[0-9a-f]{64}")
# Compact JSON, as keys, results and bb's own state files are written: one
# encoder for all (json.dumps with options builds a new one per call).
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def is_digest(value) -> bool:
    """Exactly a blake3 hex digest: what may become a file name in a store.
    Every digest or key read from outside (a store, a bundle, a manifest, a
    state file) passes through here before it is used."""
    return type(value) is str and _HEX.fullmatch(value) is not None


_HEXES = re.compile(r"[0-9a-f]*")


def all_digests(values) -> bool:
    """is_digest of every value, tested at once: thousands of index rows
    cost one pass in C instead of a match each."""
    values = list(values)
    try:
        return not values or (set(map(len, values)) == {64} and _HEXES.fullmatch("".join(values)) is not None)
    except TypeError:  # not all str: let each be checked on its own
        return False


def signature(st: os.stat_result) -> list:
    """What says a file is unchanged: size, mtime, inode, ctime (git's rule)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def hash_bytes(data: bytes) -> str:
    return blake3(data).hexdigest()


def hash_file(path: str) -> str:
    # One reused buffer: memory stays flat whatever the file's size (mmap
    # would be as fast but shows the whole file in the process's RSS). Sized
    # to the file: zeroing 4 MiB for each small input cost more than hashing it.
    h = blake3()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(min(CHUNK, os.fstat(f.fileno()).st_size + 1))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# A file's digest ("" for an empty folder inside a tree), size and executable
# bit. A namedtuple, not a frozen dataclass: the no-op check imports this
# module, and dataclasses (which imports inspect) would cost it ~6 ms.
FileDigest = collections.namedtuple("FileDigest", ("digest", "size", "executable"), defaults=(False,))


EMPTY_DIR = FileDigest("", 0, False)


def tree_manifest(entries: dict[str, FileDigest]) -> bytes:
    """The canonical listing of a directory: sorted, relative, '/'-separated.
    Empty folders are entries too (ending in '/'), so they are part of a
    tree's digest and come back when the tree is restored."""
    listing = [[rel, fd.digest, fd.size, fd.executable] for rel, fd in sorted(entries.items())]
    return compact_json(listing).encode()


def safe_relpath(rel) -> bool:
    """A relative '/'-separated path that stays inside its folder."""
    return type(rel) is str and _safe_relpath(rel)


@functools.lru_cache(maxsize=1 << 16)  # each output path is checked several times per build
def _safe_relpath(rel: str) -> bool:
    if not rel or "\0" in rel or rel.startswith("/"):
        return False
    parts = rel[:-1].split("/") if rel.endswith("/") else rel.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def parse_manifest(data: bytes) -> dict[str, FileDigest]:
    """A stored tree manifest, every entry checked; ValueError if any is not
    what bb writes (a path leaving the tree, a digest that is not one)."""
    listing = json.loads(data)
    if type(listing) is not list:
        raise ValueError("not a list")
    out: dict[str, FileDigest] = {}
    for entry in listing:
        if type(entry) is not list or len(entry) != 4:
            raise ValueError("malformed entry")
        rel, digest, size, executable = entry
        if not safe_relpath(rel) or type(size) is not int or size < 0 or type(executable) is not bool:
            raise ValueError(f"bad entry {str(rel)[:40]!r}")
        if rel.endswith("/") and (digest != "" or size or executable) or not rel.endswith("/") and not is_digest(digest):
            raise ValueError(f"bad entry {rel[:40]!r}")
        out[rel] = FileDigest(digest, size, executable)
    return out


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
        # path -> (stat signature, digest, executable) of every file digested in this run:
        # what the build really read, for the checks after a recipe ran and
        # for the no-op stamp (never a later stat, which could see an edit
        # that no key covers).
        self.seen: dict[str, tuple[list, str, bool]] = {}
        if path:
            # marshal, not JSON: a build reads and writes it whole, and for
            # 20,000 files JSON cost 50 ms of an incremental build, marshal
            # 12. bb's own file in .bb/, as the no-op stamp; each entry is
            # still checked where it is used.
            import marshal

            try:
                with open(path, "rb") as f:
                    entries = marshal.loads(f.read())
                self.entries = entries if type(entries) is dict else {}
            except (OSError, ValueError, EOFError, TypeError):
                self.entries = {}

    def file(self, path: str, st: os.stat_result | None = None) -> FileDigest:
        st = st or os.stat(path)
        sig = signature(st)
        executable = bool(st.st_mode & statmod.S_IXUSR)
        seen = self.seen.get(path)
        if seen is not None and seen[0] == sig and seen[1]:
            return FileDigest(seen[1], st.st_size, executable)  # digested earlier in this run
        entry = self.entries.get(path)
        if type(entry) is list and len(entry) == 5 and entry[:4] == sig and is_digest(entry[4]):
            self.seen[path] = (sig, entry[4], executable)
            return FileDigest(entry[4], st.st_size, executable)
        digest = hash_file(path)
        self.remember(path, st, digest)
        return FileDigest(digest, st.st_size, executable)

    def remember(self, path: str, st: os.stat_result, digest: str) -> None:
        sig = signature(st)
        self.seen[path] = (sig, digest, bool(st.st_mode & statmod.S_IXUSR))
        if is_racy(st.st_mtime_ns, time.time()):
            self.entries.pop(path, None)
            return
        self.learn(path, sig, digest)

    def learn(self, path: str, sig: list, digest: str) -> None:
        """Keep a digest read elsewhere (the no-op check) for this stat."""
        self.entries[path] = sig + [digest]
        self.dirty = True

    def tree(self, root: str) -> dict[str, FileDigest]:
        """Digest every file under a directory, keyed by '/'-separated relative
        path; empty folders are entries ending in '/'."""
        out: dict[str, FileDigest] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            try:
                self.seen[dirpath] = (signature(os.stat(dirpath)), "", False)
            except OSError:
                pass
            if not dirnames and not filenames and dirpath != root:
                out[os.path.relpath(dirpath, root).replace(os.sep, "/") + "/"] = EMPTY_DIR
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                out[rel] = self.file(full)
        return out

    def save(self) -> None:
        if not (self.dirty and self.path):
            return
        import marshal

        from buildsys.files import write_atomic

        try:
            write_atomic(self.path, marshal.dumps(self.entries, 4))
            self.dirty = False
        except OSError:  # a cache: on a full disk, the next run hashes again
            pass
