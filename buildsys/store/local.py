"""The local store: a CAS and an action cache in a folder on this machine.

    <root>/cas/<d[:2]>/<digest>    blobs, immutable, written once
    <root>/ac/<k[:2]>/<key>        action results (JSON), written last
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat as statmod
import threading
import time

from blake3 import blake3

from buildsys.digest import CHUNK, hash_bytes, hash_file, is_digest, signature
from buildsys.store.api import ActionResult, CorruptEntry


class FileChanged(Exception):
    """A file changed while it was being copied into the store."""

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
        self._claims: int | None = None  # the file whose byte ranges are locked per running action

    def blob_path(self, digest: str) -> str:
        if not is_digest(digest):  # never a path from a name that is not a digest
            raise CorruptEntry(f"'{str(digest)[:20]}' is not a digest")
        return f"{self.cas}/{digest[:2]}/{digest}"

    def result_path(self, key: str) -> str:
        if not is_digest(key):
            raise CorruptEntry(f"'{str(key)[:20]}' is not an action key")
        return f"{self.ac}/{key[:2]}/{key}"

    def _shard(self, final: str) -> None:
        parent = os.path.dirname(final)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)

    def _atomic(self, final: str, write) -> None:
        self._shard(final)
        tmp = os.path.join(os.path.dirname(final), f".tmp.{os.getpid()}.{time.monotonic_ns()}")
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

    def put_file(self, path: str) -> tuple[str, os.stat_result]:
        """Copy a file into the CAS, hashing the bytes as they are written, so
        the stored bytes are exactly the hashed ones. Returns the digest and
        the file's stat; raises FileChanged if the file changed meanwhile."""
        src = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(src)
            if not statmod.S_ISREG(st.st_mode):
                raise IsADirectoryError(path)
            self._shard(self.cas + "/x")
            tmp = f"{self.cas}/.tmp.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                h = blake3()
                buf = bytearray(min(CHUNK, max(st.st_size, 1 << 16)))
                view = memoryview(buf)
                with open(src, "rb", buffering=0, closefd=False) as f:
                    while n := f.readinto(buf):
                        h.update(view[:n])
                        written = 0
                        while written < n:
                            written += os.write(dst, view[written:n])
                os.close(dst)
                dst = -1
                if signature(os.fstat(src)) != signature(st):
                    raise FileChanged(path)
                digest = h.hexdigest()
                final = self.blob_path(digest)
                self._shard(final)
                os.replace(tmp, final)
            except BaseException:
                if dst >= 0:
                    os.close(dst)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        finally:
            os.close(src)
        return digest, st

    def put_bytes(self, data: bytes) -> str:
        digest = hash_bytes(data)
        final = self.blob_path(digest)
        if os.path.exists(final):
            return digest

        def write(tmp):
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444), "wb") as f:
                f.write(data)

        self._atomic(final, write)
        return digest

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

    @contextlib.contextmanager
    def claim(self, key: str, give_up):
        """Hold the action's place in this store while it runs, so that a bb
        in another checkout sharing this store, about to run the same
        action, waits and then finds the result instead. One byte-range lock
        per key in one file: no file is created per action, and the kernel
        drops the lock if bb dies. Yields whether it had to wait."""
        import fcntl

        if self._claims is None:
            os.makedirs(self.root, exist_ok=True)
            self._claims = os.open(os.path.join(self.root, "claims"), os.O_RDWR | os.O_CREAT, 0o644)
        offset = int(key[:12], 16)
        waited = False
        while True:
            try:
                fcntl.lockf(self._claims, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                break
            except OSError:
                if give_up():
                    yield waited
                    return
                waited = True
                time.sleep(0.05)
        try:
            yield waited
        finally:
            fcntl.lockf(self._claims, fcntl.LOCK_UN, 1, offset)

    def get_result(self, key: str, fresh: bool = False) -> ActionResult | None:
        """`fresh`: look on disk even if the shard was listed before (a result
        another process wrote just now)."""
        shard = key[:2]
        listed = None if fresh else self._listed.get(shard)
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
            if not is_digest(name):  # temp files, or anything bb did not write
                continue
            path = os.path.join(folder, name)
            try:
                yield name, path, os.stat(path)
            except FileNotFoundError:
                continue
