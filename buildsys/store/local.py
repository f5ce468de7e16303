"""The local store: a CAS and an action cache in a folder on this machine.

    <root>/store.db               SQLite (WAL): action results, and blobs of
                                  up to INLINE_MAX bytes
    <root>/cas/<d[:2]>/<digest>   larger blobs, immutable, written once
    <root>/claims                 byte-range locks of the actions running now

Creating a file costs more than a trivial recipe on many disks, so a task
whose outputs are small creates no file (the Remote Execution API inlines
small outputs for the same reason). SQLite gives what a file per entry gave:
a write is whole or absent after a crash or kill -9, and many processes may
share the store. During a build (`batched`), small blobs and results are
written together, one transaction per fraction of a second, since a commit
costs more than a trivial task's other bookkeeping.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as statmod
import sys
import threading
import time

from blake3 import blake3

from buildsys.digest import CHUNK, hash_bytes, hash_file, is_digest, signature
from buildsys.store.api import ActionResult, CorruptEntry

INLINE_MAX = 64 << 10  # bytes: blobs up to this size live in store.db


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
        self.db_path = os.path.join(root, "store.db")
        self._made: set[str] = set()  # shard folders known to exist
        self._conn = None  # opened on first use: a no-op build never opens it
        self._lock = threading.Lock()  # one connection, shared by bb's threads
        self._claims: int | None = None  # the file whose byte ranges are locked per running action
        # Written at the next flush (see `batched`); reads in this process see them now.
        self._batch = 0.0  # seconds between flushes; 0: every write commits at once
        self._due_blobs: dict[str, bytes] = {}
        self._due_results: dict[str, bytes] = {}
        self._due_claims: list[int] = []  # claims released once what is due is written
        self._flush_error: OSError | None = None  # of a flush on the flusher's thread, raised by the next

    # -- the database -----------------------------------------------------------

    def _db(self):
        if self._conn is None:
            with self._lock:
                if self._conn is None:
                    self._conn = self._open()
        return self._conn

    def close(self) -> None:
        """Close the database: its last connection's close folds the
        write-ahead log into store.db, as an exiting Python did (bb leaves
        through os._exit). Opened again if used again."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self):
        import sqlite3

        os.makedirs(self.root, exist_ok=True)
        for attempt in (1, 2):
            conn = sqlite3.connect(self.db_path, timeout=120, isolation_level=None, check_same_thread=False)
            try:
                # WAL: readers never wait for a writer. synchronous=normal:
                # a commit survives any crash of bb (it is in the OS's cache);
                # only a power cut can lose the last ones, never consistency.
                conn.execute("pragma journal_mode=wal")
                conn.execute("pragma synchronous=normal")
                conn.execute("create table if not exists results (key text primary key, data blob not null, written real not null)")
                conn.execute("create table if not exists blobs (digest text primary key, data blob not null, written real not null)")
                return conn
            except sqlite3.DatabaseError as err:
                conn.close()
                if attempt == 2 or getattr(err, "sqlite_errorcode", None) != sqlite3.SQLITE_NOTADB:
                    raise _os_error(err, self.db_path) from None
                self._set_aside_db()
        raise AssertionError("unreachable")

    def _set_aside_db(self) -> None:
        """store.db is not a database (overwritten or truncated by something
        else): keep it for inspection and start an empty one."""
        dest = f"{self.db_path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.db_path, dest)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.db_path + suffix)
        print(f"bb: warning: the local store's database {self.db_path} is not a database; moved it to {dest} and started an empty one (results in it are rebuilt or fetched again)", file=sys.stderr)

    def _query(self, sql: str, params=()) -> list:
        import sqlite3

        conn = self._db()
        try:
            with self._lock:
                return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as err:
            raise _os_error(err, self.db_path) from None

    # -- blobs ------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        """Where a large blob's file is (small ones are in store.db)."""
        if not is_digest(digest):  # never a path from a name that is not a digest
            raise CorruptEntry(f"'{str(digest)[:20]}' is not a digest")
        return f"{self.cas}/{digest[:2]}/{digest}"

    def _shard(self, final: str) -> None:
        parent = os.path.dirname(final)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)

    def _inline(self, digest: str) -> bytes | None:
        if not is_digest(digest):
            raise CorruptEntry(f"'{str(digest)[:20]}' is not a digest")
        data = self._due_blobs.get(digest)
        if data is not None:
            return data
        rows = self._query("select data from blobs where digest = ?", (digest,))
        return bytes(rows[0][0]) if rows else None

    def _put_inline(self, digest: str, data: bytes) -> None:
        with self._lock:
            if self._batch:
                self._due_blobs[digest] = data
                return
        # replace, not ignore: a row found damaged earlier is healed
        self._query("insert or replace into blobs values (?, ?, ?)", (digest, data, time.time()))

    def has_blob(self, digest: str) -> bool:
        return digest in self._due_blobs or bool(self._query("select 1 from blobs where digest = ?", (digest,))) or os.path.exists(self.blob_path(digest))

    def temp_path(self) -> str:
        """A fresh temporary file name inside the store (for a download)."""
        self._shard(self.cas + "/x")
        return f"{self.cas}/.tmp.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"

    def put_file(self, path: str) -> tuple[str, os.stat_result]:
        """Copy a file into the CAS, hashing the bytes as they are written, so
        the stored bytes are exactly the hashed ones. Returns the digest and
        the file's stat; raises FileChanged if the file changed meanwhile."""
        src = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(src)
            if not statmod.S_ISREG(st.st_mode):
                raise IsADirectoryError(path)
            if st.st_size <= INLINE_MAX:
                data = os.read(src, INLINE_MAX + 1)
                if len(data) != st.st_size or signature(os.fstat(src)) != signature(st):
                    raise FileChanged(path)
                digest = hash_bytes(data)
                self._put_inline(digest, data)
                return digest, st
            tmp = self.temp_path()
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                h = blake3()
                buf = bytearray(min(CHUNK, st.st_size))
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
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        finally:
            os.close(src)
        return digest, st

    def put_bytes(self, data: bytes) -> str:
        digest = hash_bytes(data)
        if len(data) <= INLINE_MAX:
            self._put_inline(digest, data)
            return digest
        final = self.blob_path(digest)
        if not os.path.exists(final):
            self.adopt(digest, self._write_temp(data))
        return digest

    def _write_temp(self, data: bytes) -> str:
        tmp = self.temp_path()
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444), "wb") as f:
                f.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def adopt(self, digest: str, tmp: str) -> None:
        """Take a verified temporary file (from temp_path) in as the blob
        `digest`; the temporary file is gone afterwards."""
        try:
            if os.path.getsize(tmp) <= INLINE_MAX:
                with open(tmp, "rb") as f:
                    self._put_inline(digest, f.read())
            else:
                os.chmod(tmp, 0o444)
                final = self.blob_path(digest)
                self._shard(final)
                os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def read_bytes(self, digest: str) -> bytes:
        data = self._inline(digest)
        if data is not None:
            return data
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def blob_source(self, digest: str) -> bytes | str:
        """What an upload reads: a small blob's bytes, or a large one's file."""
        data = self._inline(digest)
        return data if data is not None else self.blob_path(digest)

    def fetch(self, digest: str, dest: str) -> None:
        data = self._inline(digest)
        if data is None:
            _clone(self.blob_path(digest), dest)
            return
        with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as f:
            f.write(data)

    def fetch_many(self, digests) -> None:
        """Blobs are already here."""

    def discard(self, digest: str) -> None:
        """Remove a blob found corrupt."""
        self.remove_blobs([digest])

    # -- action results -----------------------------------------------------------

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
            with self._lock:
                # Its result may be among what is due: a bb waiting for the
                # claim must find the result when it gets it.
                held = bool(self._due_blobs or self._due_results)
                if held:
                    self._due_claims.append(offset)
            if not held:
                fcntl.lockf(self._claims, fcntl.LOCK_UN, 1, offset)

    def get_result(self, key: str, fresh: bool = False) -> ActionResult | None:
        """`fresh` is for stores that cache listings; this one always reads."""
        if not is_digest(key):
            raise CorruptEntry(f"'{str(key)[:20]}' is not an action key")
        data = self._due_results.get(key)
        if data is not None:
            return ActionResult.parse(data, key, self.db_path)
        try:
            rows = self._query("select data from results where key = ?", (key,))
        except OSError as err:
            raise CorruptEntry(f"the local store cannot be read ({err})") from None
        return ActionResult.parse(bytes(rows[0][0]), key, self.db_path) if rows else None

    def has_result(self, key: str) -> bool:
        return key in self._due_results or bool(self._query("select 1 from results where key = ?", (key,)))

    def put_result(self, result: ActionResult) -> None:
        if not is_digest(result.key):
            raise CorruptEntry(f"'{str(result.key)[:20]}' is not an action key")
        data = result.to_bytes()
        with self._lock:
            batch = self._batch
            if batch:
                self._due_results[result.key] = data
        if not batch:
            self.flush()  # never a result before blobs still due
            self._query("insert or replace into results values (?, ?, ?)", (result.key, data, time.time()))
        elif result.duration >= batch:
            self.flush()  # it took longer to make than the batch waits: a kill must not cost it again

    # -- writing behind, during a build ------------------------------------------

    @contextlib.contextmanager
    def batched(self, seconds: float = 0.1):
        """Within: small blobs and results are kept in memory (this process
        reads them there) and written every `seconds`, all in one
        transaction (or sooner: `flush`); and at the end. A result whose
        recipe took `seconds` or longer is written at once. A result and the
        blobs put before it are written in the same transaction or an
        earlier one, so a kill never leaves a result without its bytes; it
        loses only results made in its last `seconds`, each of which took
        less than that to make, and runs them again. The claims of
        actions released meanwhile are held until then, so that another bb
        sharing the store, waiting for one of them, finds its result."""
        if self._batch:  # batched already: its end writes everything
            yield
            return
        self._batch = seconds
        stop = threading.Event()
        # One thread wakes every `seconds`, not one per write: a thread
        # started per task cost more than the commits it saved.
        flusher = threading.Thread(target=self._flush_every, args=(seconds, stop), name="bb-store-flush", daemon=True)
        flusher.start()
        ended = False
        try:
            yield
            ended = True
        finally:
            with self._lock:  # a write sees the batch or the end of it, whole
                self._batch = 0.0
            stop.set()
            flusher.join()
            try:
                self.flush()
            except OSError:
                if ended:
                    raise  # else the error in flight says more

    def _flush_every(self, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds):
            try:
                self.flush()
            except OSError as err:  # raised by the next flush, on a thread that reports it
                self._flush_error = err

    def flush(self) -> None:
        """Write what is due now, and release the claims that waited for
        it. Raises OSError (a full disk: ENOSPC) if it could not: what was
        due is then not in the store, and runs again next time."""
        import fcntl
        import sqlite3

        if not (self._due_blobs or self._due_results or self._due_claims or self._flush_error):
            return
        conn = self._db()  # (before taking the lock: opening takes it too)
        with self._lock:
            blobs, results, claims = self._due_blobs, self._due_results, self._due_claims
            self._due_blobs, self._due_results, self._due_claims = {}, {}, []
            error, self._flush_error = self._flush_error, None
            try:
                if blobs or results:
                    now = time.time()
                    conn.execute("begin immediate")
                    try:
                        # blobs first: never a result without its bytes, even within
                        conn.executemany("insert or replace into blobs values (?, ?, ?)", [(d, data, now) for d, data in blobs.items()])
                        conn.executemany("insert or replace into results values (?, ?, ?)", [(k, data, now) for k, data in results.items()])
                        conn.execute("commit")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("rollback")
                        raise
            except sqlite3.DatabaseError as err:
                raise _os_error(err, self.db_path) from None
            finally:
                for offset in claims:
                    fcntl.lockf(self._claims, fcntl.LOCK_UN, 1, offset)
        if error is not None:
            raise error

    # -- maintenance ----------------------------------------------------------

    def blobs(self):
        """(digest, size, time written) of every blob."""
        self.flush()
        yield from self._query("select digest, length(data), written from blobs")
        for digest, _, st in _walk(self.cas):
            yield digest, st.st_size, st.st_mtime

    def results(self):
        """(key, time written) of every action result."""
        self.flush()
        yield from self._query("select key, written from results")

    def verify_blob(self, digest: str) -> bool:
        data = self._inline(digest)
        return (hash_bytes(data) if data is not None else hash_file(self.blob_path(digest))) == digest

    def check_database(self) -> str:
        """'' if store.db is sound, else what SQLite found wrong."""
        if not os.path.exists(self.db_path):
            return ""
        try:
            rows = self._query("pragma quick_check")
        except OSError as err:
            return str(err.strerror or err)
        found = "; ".join(str(r[0]) for r in rows)
        return "" if found == "ok" else found

    def remove_results(self, keys) -> None:
        self.flush()
        self._query_many("delete from results where key = ?", keys)

    def remove_blobs(self, digests) -> None:
        digests = list(digests)
        self.flush()
        self._query_many("delete from blobs where digest = ?", digests)
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blob_path(digest))

    def _query_many(self, sql: str, values) -> None:
        import sqlite3

        conn = self._db()
        try:
            with self._lock:
                conn.execute("begin immediate")
                try:
                    conn.executemany(sql, ((v,) for v in values))
                    conn.execute("commit")
                except BaseException:
                    conn.execute("rollback")
                    raise
        except sqlite3.DatabaseError as err:
            raise _os_error(err, self.db_path) from None


def _os_error(err, path: str) -> OSError:
    """An SQLite error as the OSError callers already handle: a full disk is
    ENOSPC (bb's message says how to free space), anything else EIO."""
    import sqlite3

    code = getattr(err, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return OSError(errno.ENOSPC, "No space left on device", path)
    return OSError(errno.EIO, f"{err} (the store's database; 'bb cache verify' checks it)", path)


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
