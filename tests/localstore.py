"""Read and tamper with a local store as its layout says (README, "The
store"): results and small blobs in store.db (SQLite), larger blobs in
cas/<d[:2]>/<digest>. Tests go around bb on purpose, as a user, a bug or an
attacker would."""
from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from blake3 import blake3


@contextlib.contextmanager
def _db(store: Path):
    conn = sqlite3.connect(store / "store.db", timeout=30, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def results(store: Path) -> dict[str, dict]:
    """key -> the stored action result, parsed."""
    if not (store / "store.db").exists():
        return {}
    with _db(store) as conn:
        return {key: json.loads(data) for key, data in conn.execute("select key, data from results")}


def results_by_target(store: Path) -> dict[str, dict]:
    return {r["action"]["target"]: r for r in results(store).values()}


def write_result(store: Path, key: str, data: bytes) -> None:
    """Store raw bytes as the result of `key` (forged, or corrupt)."""
    with _db(store) as conn:
        assert conn.execute("update results set data = ? where key = ?", (data, key)).rowcount == 1, key


def delete_results(store: Path) -> None:
    with _db(store) as conn:
        conn.execute("delete from results")


def blobs(store: Path) -> dict[str, bytes]:
    """digest -> bytes, as stored (not verified), wherever they live."""
    found = {}
    if (store / "store.db").exists():
        with _db(store) as conn:
            found.update((d, bytes(data)) for d, data in conn.execute("select digest, data from blobs"))
    for path in (store / "cas").rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            found[path.name] = path.read_bytes()
    return found


def put_blob(store: Path, data: bytes) -> str:
    """Add a blob as bb would (small ones in the database)."""
    digest = blake3(data).hexdigest()
    with _db(store) as conn:
        conn.execute("insert or replace into blobs values (?, ?, 0)", (digest, data))
    return digest


def overwrite_blob(store: Path, digest: str, data: bytes) -> None:
    """Replace a stored blob's bytes (bit rot, tampering), wherever it lives."""
    path = store / "cas" / digest[:2] / digest
    if path.exists():
        path.chmod(0o644)
        path.write_bytes(data)
        return
    with _db(store) as conn:
        assert conn.execute("update blobs set data = ? where digest = ?", (data, digest)).rowcount == 1


def age(store: Path, seconds: float) -> int:
    """Make every entry look written `seconds` earlier; returns how many."""
    import os
    import time

    n = 0
    when = time.time() - seconds
    with _db(store) as conn:
        n += conn.execute("update results set written = ?", (when,)).rowcount
        n += conn.execute("update blobs set written = ?", (when,)).rowcount
    for path in (store / "cas").rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))
            n += 1
    return n


# ---- the workspace's index of last builds (.bb/index.db) ---------------------------------


def index(state: Path) -> dict[str, dict]:
    """target -> the index's entry for its last build."""
    conn = sqlite3.connect(state / "index.db")
    try:
        return {t: json.loads(e) for t, e in conn.execute("select target, entry from last")}
    finally:
        conn.close()


def write_index(state: Path, rows: dict[str, str]) -> None:
    """Replace the index's rows with these raw texts (forged, or corrupt)."""
    conn = sqlite3.connect(state / "index.db", isolation_level=None)
    try:
        conn.execute("delete from last")
        conn.executemany("insert into last values (?, ?, ?)", [(t, _key_of(text), text) for t, text in rows.items()])
    finally:
        conn.close()


def drop_index(state: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (state / f"index.db{suffix}").unlink(missing_ok=True)


def _key_of(text: str) -> str:
    """The key column a forged row carries: the entry's own, where it has one."""
    try:
        key = json.loads(text).get("key")
    except (ValueError, AttributeError):
        return "garbage"
    return key if isinstance(key, str) else "garbage"
