"""The store: a CAS (digest -> blob) and an action cache (key -> result).

Names follow Bazel's Remote Execution API. Stores sit behind the small
`Store` protocol, so a new backend (S3) is one new module. The layout is the
same everywhere:

    <root>/cas/<d[:2]>/<digest>    blobs, immutable, written once
    <root>/ac/<k[:2]>/<key>        action results (JSON), written last
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Protocol

from .digest import hash_file


@dataclass(frozen=True)
class OutputEntry:
    path: str  # workspace-relative; a directory ends with "/"
    digest: str  # a file's digest, or the digest of a tree manifest
    size: int
    executable: bool = False


@dataclass(frozen=True)
class ActionResult:
    key: str
    outputs: tuple[OutputEntry, ...]
    exit_code: int
    log: str  # digest of the recipe's combined output
    started: float
    duration: float
    action: dict  # the Action, for `bb why`
    provenance: dict = field(default_factory=dict)  # who/where: never in a key

    def to_json(self) -> dict:
        # written out: dataclasses.asdict deep-copies, which shows per target
        return {
            "key": self.key,
            "outputs": [{"path": o.path, "digest": o.digest, "size": o.size, "executable": o.executable} for o in self.outputs],
            "exit_code": self.exit_code,
            "log": self.log,
            "started": self.started,
            "duration": self.duration,
            "action": self.action,
            "provenance": self.provenance,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: dict) -> "ActionResult":
        raw = dict(raw)
        raw["outputs"] = tuple(OutputEntry(o["path"], o["digest"], o["size"], o["executable"]) for o in raw["outputs"])
        return cls(**raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ActionResult":
        return cls.from_json(json.loads(data))

    @classmethod
    def parse(cls, data: bytes, key: str, where: str) -> "ActionResult":
        """A stored result, checked to be well-formed and to be the one for `key`."""
        try:
            result = cls.from_bytes(data)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise CorruptEntry(f"action result {key[:12]} in {where} is not valid") from None
        if result.key != key:
            raise CorruptEntry(f"action result {key[:12]} in {where} names another key")
        return result

    def output(self, path: str) -> OutputEntry | None:
        for o in self.outputs:
            if o.path == path or o.path == path + "/":
                return o
        return None


class Store(Protocol):
    def has_blob(self, digest: str) -> bool: ...
    def put_file(self, path: str, digest: str) -> None: ...
    def put_bytes(self, data: bytes, digest: str) -> None: ...
    def read_bytes(self, digest: str) -> bytes: ...
    def fetch(self, digest: str, dest: str) -> None: ...
    def fetch_many(self, digests) -> None: ...
    def discard(self, digest: str) -> None: ...
    def get_result(self, key: str) -> ActionResult | None: ...
    def put_result(self, result: ActionResult) -> None: ...


class CorruptEntry(Exception):
    """A stored blob or result does not match its name."""


FICLONE = 0x40049409
_reflink_works = True


def _clone(src: str, dst: str, mode: int = 0o644) -> None:
    """Copy bytes, sharing extents where the filesystem can (a reflink), so a
    later edit of either copy never reaches the other."""
    global _reflink_works
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "wb") as d:
            if _reflink_works:
                try:
                    import fcntl

                    fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
                    return
                except OSError:
                    _reflink_works = False  # this filesystem cannot; stop asking
            _copy_range(s, d)


def _copy_range(s, d) -> None:
    """In-kernel copy (copy_file_range), falling back to read/write."""
    try:
        size = os.fstat(s.fileno()).st_size
        copied = 0
        while copied < size:
            n = os.copy_file_range(s.fileno(), d.fileno(), size - copied)
            if n == 0:
                break
            copied += n
        if copied == size:
            return
        s.seek(copied)
        d.seek(copied)
    except OSError:
        s.seek(0)
        d.seek(0)
        d.truncate()
    shutil.copyfileobj(s, d, 1 << 20)


class LocalStore:
    """A store in a folder on this machine."""

    def __init__(self, root: str):
        self.root = root
        self.cas = os.path.join(root, "cas")
        self.ac = os.path.join(root, "ac")
        self._made: set[str] = set()  # shard folders known to exist
        # Listings of action-cache shards, read once: a miss then costs no
        # open() (100,000 misses would cost seconds). A result written since by
        # another process is missed at worst, which only means a rebuild.
        self._listed: dict[str, set[str]] = {}

    def blob_path(self, digest: str) -> str:
        return f"{self.cas}/{digest[:2]}/{digest}"

    def result_path(self, key: str) -> str:
        return f"{self.ac}/{key[:2]}/{key}"

    def _atomic(self, final: str, write) -> None:
        parent = os.path.dirname(final)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        tmp = os.path.join(parent, f".tmp.{os.getpid()}.{time.monotonic_ns()}")
        try:
            write(tmp)
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def put_file(self, path: str, digest: str) -> None:
        final = self.blob_path(digest)
        if os.path.exists(final):
            return

        def write(tmp):
            _clone(path, tmp, 0o444)

        self._atomic(final, write)

    def put_bytes(self, data: bytes, digest: str) -> None:
        final = self.blob_path(digest)
        if os.path.exists(final):
            return

        def write(tmp):
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444), "wb") as f:
                f.write(data)

        self._atomic(final, write)

    def read_bytes(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def fetch(self, digest: str, dest: str) -> None:
        _clone(self.blob_path(digest), dest)

    def fetch_many(self, digests) -> None:
        """Blobs are already here."""

    def discard(self, digest: str) -> None:
        """Remove a blob found corrupt."""
        self.remove(self.blob_path(digest))

    def get_result(self, key: str) -> ActionResult | None:
        shard = key[:2]
        listed = self._listed.get(shard)
        if listed is None:
            try:
                listed = self._listed[shard] = set(os.listdir(f"{self.ac}/{shard}"))
            except FileNotFoundError:
                listed = self._listed[shard] = set()
        if key not in listed:
            return None
        try:
            with open(self.result_path(key), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return ActionResult.parse(data, key, self.ac)

    def put_result(self, result: ActionResult) -> None:
        data = result.to_bytes()
        listed = self._listed.get(result.key[:2])
        if listed is not None:
            listed.add(result.key)

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(data)

        self._atomic(self.result_path(result.key), write)

    # -- maintenance ----------------------------------------------------------

    def blobs(self):
        """(digest, path, stat) of every blob."""
        yield from _walk(self.cas)

    def results(self):
        yield from _walk(self.ac)

    def verify_blob(self, digest: str) -> bool:
        return hash_file(self.blob_path(digest)) == digest

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _walk(top: str):
    try:
        shards = os.listdir(top)
    except FileNotFoundError:
        return
    for shard in sorted(shards):
        folder = os.path.join(top, shard)
        try:
            names = os.listdir(folder)
        except NotADirectoryError:
            continue
        for name in names:
            if name.startswith(".tmp."):
                continue
            path = os.path.join(folder, name)
            try:
                yield name, path, os.stat(path)
            except FileNotFoundError:
                continue
