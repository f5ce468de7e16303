"""The workspace: the project folder and bb's state inside it (.bb/):
the stat cache, the parse cache, each target's last action result (the
index, for `bb why`, `bb log`, incremental builds, and so that a lookup
needs no store read), the logs of the last failed runs, and what was set
aside."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time

from buildsys import STAT_CACHE, STATE_DIR
from buildsys.digest import StatCache, all_digests, compact_json, is_digest
from buildsys.store.api import ActionResult, CorruptEntry, OutputEntry


class Workspace:
    def __init__(self, root: str):
        self.root = root
        self.state = os.path.join(root, STATE_DIR)
        self.stats = StatCache(os.path.join(self.state, STAT_CACHE))
        # The index lives in SQLite: a build that changes one target of
        # 10,000 writes one row, not the whole index.
        self.index_path = os.path.join(self.state, "index.db")
        self._db = None
        self._keys: dict[str, str] | None = None  # the index's `last` table, once read
        self._read: dict[str, dict | None] = {}  # its entries read so far (_stored)
        self._written: dict[str, dict | None] = {}  # this build's entries, saved at the end (None: forgotten)
        self._before: dict[str, dict | None] = {}  # what the index held for them: what bb last wrote
        self._unrowed: set[str] = set()  # entries found without their columns
        self._dirs: set[str] = set()  # folders known to exist
        self.warnings: list[str] = []

    # -- the index of last builds -------------------------------------------------

    def _index(self):
        """The index database, or None if there is none (or it is unusable:
        then it counts as empty, and the build's save starts a new one)."""
        if self._db is None:
            # Absent is remembered (False), not looked for at every lookup:
            # only a build creates it, and this process's save is the only
            # build in the workspace while it holds the workspace lock.
            self._db = self._open() if os.path.exists(self.index_path) else False
        return self._db or None

    def _open(self, create: bool = False):
        import sqlite3

        try:
            db = sqlite3.connect(self.index_path, timeout=60, isolation_level=None, check_same_thread=False)
            db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=normal")
            db.execute("create table if not exists last (target text primary key, key text not null, entry text not null)")
            # Each entry's result again, in columns: an incremental build reads
            # thousands at once, and decoding as many JSON entries cost more
            # than the rest of its work.
            db.execute("create table if not exists results (target text primary key, key text not null, outputs text not null, log text not null, exit_code integer not null, started real not null, duration real not null)")
            return db
        except sqlite3.DatabaseError as err:
            if create:
                raise OSError(str(err)) from None
            self.warnings.append(f"ignored {os.path.relpath(self.index_path)}: it is not what bb writes ({err}); bb keeps it again from this build on")
            return False

    def close(self) -> None:
        """Close the index (folding its write-ahead log into index.db, see
        LocalStore.close); opened again if used again."""
        if self._db:
            self._db.close()
        self._db = None

    def _stored(self, target: str) -> dict | None:
        """The index's entry for the target, if it is one bb writes. Read
        once until the next save: a target's lookup, the check of what sits
        at its outputs and its record each want it."""
        if target in self._read:
            return self._read[target]
        db = self._index()
        if db is None:
            return None
        import sqlite3

        try:
            row = db.execute("select entry from last where target = ?", (target,)).fetchone()
            entry = json.loads(row[0]) if row else None
        except (sqlite3.DatabaseError, ValueError, TypeError):
            entry = None  # never trusted: the target is looked up in the store
        entry = self._read[target] = entry if type(entry) is dict and is_digest(entry.get("key")) else None
        return entry

    def _entry(self, target: str) -> dict | None:
        return self._written[target] if target in self._written else self._stored(target)

    @property
    def last(self) -> dict[str, str]:
        """target -> key of its last successful build (one query, not one
        per target)."""
        found = dict(self._saved_keys())
        for target, entry in self._written.items():
            if entry is None:
                found.pop(target, None)
            else:
                found[target] = entry["key"]
        return found

    def _saved_keys(self) -> dict[str, str]:
        """The index's `last` table, target -> key, read once (it changes
        only when this process saves)."""
        if self._keys is None:
            self._keys = {}
            db = self._index()
            if db is not None:
                import sqlite3

                with contextlib.suppress(sqlite3.DatabaseError):
                    self._keys = dict(db.execute("select target, key from last"))
                if not all_digests(self._keys.values()):
                    self._keys = {t: k for t, k in self._keys.items() if is_digest(k)}
        return self._keys

    def last_key(self, target: str) -> str | None:
        """The key of the target's last successful build."""
        entry = self._entry(target)
        return entry["key"] if entry else None

    def last_result(self, target: str, key: str) -> ActionResult | None:
        """The target's last result, if it was for this key."""
        entry = self._entry(target)
        if entry is None or entry["key"] != key:
            return None
        try:
            return ActionResult.from_json({**entry, "action": {}})
        except CorruptEntry:
            return None

    def last_results(self, keys: dict[str, str]) -> dict[str, ActionResult]:
        """last_result for many targets (target -> key) at once: from the
        index's columns (without provenance) where it has them."""
        import sqlite3

        found = {}
        db = self._index()
        wanted = [t for t in keys if t not in self._written]
        if db is not None and wanted:
            # Rows whose fields are of bb's types (checked in SQLite: thousands
            # of rows at once; the outputs column is checked by _from_row) and
            # that agree with the entry in `last`, the index proper.
            columns = (
                "select target, key, outputs, log, exit_code, started, duration from results where typeof(outputs) = 'text'"
                " and typeof(exit_code) = 'integer' and typeof(started) in ('integer', 'real') and typeof(duration) in ('integer', 'real')"
            )
            # Many targets: one pass over the table beats as many lookups.
            query, args = (columns, ()) if len(wanted) > 1000 else (columns + " and target in (select value from json_each(?))", (json.dumps(wanted),))
            saved = self._saved_keys()
            with contextlib.suppress(sqlite3.DatabaseError):
                # (a key equal to the one `last` holds is a digest: _saved_keys checked it)
                rows = [row for row in db.execute(query, args) if keys.get(row[0]) == row[1] == saved.get(row[0]) and row[0] not in self._written]
                # Logs checked at once where all are digests (the rule), else row by row.
                sound = all_digests(row[3] for row in rows if row[3])
                for target, *row in rows:
                    if sound or row[2] == "" or is_digest(row[2]):
                        found[target] = _from_row(*row)
                found = {t: r for t, r in found.items() if r is not None}
        for target, key in keys.items():
            if target not in found:
                # An entry from before the columns (or an unsaved one): the
                # columns get it at the next save.
                result = found[target] = self.last_result(target, key)
                if result is not None and target not in self._written:
                    self._unrowed.add(target)
        return {t: r for t, r in found.items() if r is not None}

    def last_result_any(self, target: str) -> ActionResult | None:
        """The target's last successful result, whatever its key."""
        entry = self._entry(target)
        return self.last_result(target, entry["key"]) if entry else None

    def previous_digest(self, target: str, path: str) -> str | None:
        """The digest of what bb last wrote at an output path of `target`."""
        entry = self._before[target] if target in self._before else self._stored(target)
        if entry is None:
            return None
        for out in entry.get("outputs") or ():
            if type(out) is dict and out.get("path") == path:
                digest = out.get("digest")
                return digest if is_digest(digest) else None
        return None

    def record(self, target: str, result: ActionResult) -> None:
        unsaved = target in self._written
        old = self._entry(target)
        # Same key is not enough: a corrupt result found under it may since
        # have been replaced by a rebuild.
        if old is None or old.get("key") != result.key or old.get("log") != result.log or len(old.get("outputs") or ()) != len(result.outputs) or any(
            type(o) is not dict or o.get("digest") != n.digest or o.get("path") != n.path for o, n in zip(old["outputs"], result.outputs)
        ):
            entry = result.to_json()
            del entry["action"]  # the store has it; keep this index small
            if not unsaved:
                self._before.setdefault(target, old)
            self._written[target] = entry

    def forget(self, target: str) -> None:
        unsaved = target in self._written
        old = self._entry(target)
        if old is not None:
            if not unsaved:
                self._before.setdefault(target, old)
            self._written[target] = None

    def ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
            self._dirs.add(path)

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
        """Write the state; it is caches and indexes, so a full disk costs
        a warning and some speed next time, never the build. `index`: also
        the record of what each target's outputs hold (not after a dry run,
        which changed none)."""
        self.stats.save()
        if not ((self._written or self._unrowed) and index):
            return
        import sqlite3

        try:
            db = self._index()
            if db is None:
                os.makedirs(self.state, exist_ok=True)
                if os.path.exists(self.index_path):  # not a database: keep it aside, start anew
                    os.replace(self.index_path, f"{self.index_path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                db = self._db = self._open(create=True)
            db.execute("begin")
            try:
                db.executemany("insert or replace into last values (?, ?, ?)", [(t, e["key"], compact_json(e)) for t, e in self._written.items() if e is not None])
                rows = {t: e for t, e in ((t, self._stored(t)) for t in self._unrowed) if e is not None}
                rows.update(self._written)
                db.executemany("insert or replace into results values (?, ?, ?, ?, ?, ?, ?)", [(t, *_to_row(e)) for t, e in rows.items() if e is not None])
                for table in ("last", "results"):
                    db.executemany(f"delete from {table} where target = ?", [(t,) for t, e in self._written.items() if e is None])
                db.execute("commit")
            except BaseException:
                db.execute("rollback")
                raise
            self._written.clear()
            self._keys = None
            self._read.clear()
            self._unrowed.clear()
        except (OSError, sqlite3.DatabaseError) as err:
            self.warnings.append(f"could not save {os.path.relpath(self.index_path)} ({err}); the next build checks more")


def _to_row(entry: dict) -> tuple:
    outputs = "\0".join(f"{o['path']}\0{o['digest']}\0{o['size']}\0{int(o['executable'])}" for o in entry["outputs"])
    return entry["key"], outputs, entry["log"], entry["exit_code"], entry["started"], entry["duration"]


# One output in the index's outputs column: path, digest, size, executable
# bit, \0 between fields and between outputs.
_OUTPUT_COLUMNS = re.compile(r"([^\0]*)\0([0-9a-f]{64})\0([0-9]+)\0([01])(?:\0(?=.)|\Z)", re.S)


def _from_row(key, outputs, log, exit_code, started, duration) -> ActionResult | None:
    """A result from its columns, its key, log and types checked by the
    caller: None unless each output is a path, a digest, a size and a bit,
    as ActionResult.checked wants them."""
    entries, at = [], 0
    while at < len(outputs):
        found = _OUTPUT_COLUMNS.match(outputs, at)
        if found is None:
            return None
        path, digest, size, executable = found.groups()
        entries.append(OutputEntry(path, digest, int(size), executable == "1"))
        at = found.end()
    return ActionResult.of_checked(key, tuple(entries), exit_code, log, started, duration)
