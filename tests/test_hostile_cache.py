"""A hostile or corrupt store, end to end through `bb`.

Every digest and key that bb reads from a store (local or S3), a result
bundle, a tree manifest or a state file (.bb/index.db,
.bb/stat-cache) must be exactly 64 lowercase hex characters before it
becomes a path. Anything else is a corrupt entry: a cache miss, a
`bb: warning: ...` on stderr, the target is rebuilt (its recipe runs, its
outputs come out right) and bb exits 0. Never an internal error (exit 3),
and never a read, a write or a deletion outside the workspace and its store.

Each test plants canaries beside the workspace (a file and a folder in
tmp_path), points forged entries at them, and compares every file and folder
under tmp_path (outside the project folders) before and after.
"""
from __future__ import annotations

import copy
import json
import marshal
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import localstore
from conftest import S3, Project

PIPELINE = """
    @default
    all: out/a.txt out/b.txt out/tree/

    out/a.txt: data/in.txt
        echo out/a.txt >> runs.log
        echo "made a"
        tr a-z A-Z < $< > $@

    out/b.txt: out/a.txt
        echo out/b.txt >> runs.log
        echo "made b"
        (cat $<; echo b) > $@

    out/tree/: data/in.txt
        echo out/tree >> runs.log
        echo "made tree"
        mkdir -p $@/sub
        cp $< $@/sub/copy.txt
        echo top > $@/top.txt
"""

TARGETS = ("out/a.txt", "out/b.txt", "out/tree")
EXPECTED = {
    "out/a.txt": b"HELLO\n",
    "out/b.txt": b"HELLO\nb\n",
    "out/tree/sub/copy.txt": b"hello\n",
    "out/tree/top.txt": b"top\n",
}
MARKER = b"CANARY-7f3a: bb must never read, copy or delete this file\n"
UP = "../" * 24  # more than enough to reach / from anywhere under tmp_path


# ---- helpers ------------------------------------------------------------------------


def checkout(root: Path) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    p = Project(root)
    p.batchfile(PIPELINE)
    p.write("data/in.txt", "hello\n")
    p.env = {}
    return p


def runs(p: Project) -> list[str]:
    path = p.root / "runs.log"
    return path.read_text().split() if path.exists() else []


def assert_outputs(p: Project) -> None:
    for rel, data in EXPECTED.items():
        path = p.root / rel
        assert path.is_file() and path.read_bytes() == data, f"{rel} holds {path.read_bytes() if path.is_file() else 'nothing'!r}"
    tree = sorted(str(f.relative_to(p.root / "out/tree")) for f in (p.root / "out/tree").rglob("*") if not f.is_dir())
    assert tree == ["sub/copy.txt", "top.txt"], tree


def assert_no_crash(proc, what="bb") -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 3 and "internal error" not in out and "Traceback" not in out, (
        f"{what} crashed (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert MARKER.decode().strip() not in out, f"{what} printed the canary's contents\n{out}"


def assert_ok(proc, what="bb build") -> None:
    assert_no_crash(proc, what)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}, expected 0\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def warnings(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("bb: warning:")]


def assert_warned(proc, targets) -> None:
    lines = warnings(proc)
    assert lines, f"no 'bb: warning:' on stderr for a corrupt entry\nstderr:\n{proc.stderr}"
    for t in targets:
        assert any(t in line for line in lines), f"no warning names '{t}'\nstderr:\n{proc.stderr}"


class Canaries:
    """A file and a folder beside the workspace, and a snapshot of everything
    under tmp_path outside the project folders."""

    def __init__(self, top: Path, projects: list[Path]):
        self.top = top
        self.projects = [p.resolve() for p in projects]
        self.file = top / "canary.txt"
        self.dir = top / "canary_dir"
        self.file.write_bytes(MARKER)
        self.dir.mkdir()
        (self.dir / "keep.txt").write_bytes(MARKER)
        self.before = None

    def snapshot(self) -> dict[str, bytes | None]:
        seen: dict[str, bytes | None] = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            d = Path(dirpath)
            dirnames[:] = [n for n in dirnames if (d / n).resolve() not in self.projects]
            for n in dirnames:
                seen[str((d / n).relative_to(self.top)) + "/"] = None
            for n in filenames:
                f = d / n
                seen[str(f.relative_to(self.top))] = b"->" + os.readlink(f).encode() if f.is_symlink() else f.read_bytes()
        return seen

    def arm(self) -> None:
        self.before = self.snapshot()

    def check(self, proc=None) -> None:
        """Nothing outside the project folders changed (proc: the bb run to show if so)."""
        shown = f"\nstderr of bb:\n{proc.stderr}" if proc is not None else ""
        assert self.file.is_file(), f"bb deleted the canary file {self.file}{shown}"
        assert self.file.read_bytes() == MARKER, f"bb changed the canary file {self.file}{shown}"
        after = self.snapshot()
        added = sorted(after.keys() - self.before.keys())
        removed = sorted(self.before.keys() - after.keys())
        changed = sorted(k for k in after.keys() & self.before.keys() if after[k] != self.before[k])
        assert not (added or removed or changed), f"bb touched files outside the workspace: added {added}, removed {removed}, changed {changed}{shown}"

    def assert_not_copied_into(self, root: Path) -> None:
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink():
                assert MARKER not in f.read_bytes(), f"the canary's bytes were copied into {f}"


@dataclass
class Tools:
    """What a forgery needs: the canaries and the store it forges in."""

    canaries: Canaries
    get_blob: Callable[[str], bytes]
    put_blob: Callable[[bytes], str]

    def up(self, path: Path) -> str:
        return UP + str(path)


def _hash(data: bytes) -> str:
    from blake3 import blake3

    return blake3(data).hexdigest()


# ---- the forgeries: (target whose result is forged, result JSON -> forged result JSON) ----


def _set_digest(value):
    def forge(r, t):
        r["outputs"][0]["digest"] = value(r, t) if callable(value) else value
        return r

    return forge


def _set(field, value):
    def forge(r, t):
        r[field] = value(r, t) if callable(value) else value
        return r

    return forge


def _manifest(edit):
    """Rewrite the tree manifest, store it under its own (correct) digest and
    point the result at it."""

    def forge(r, t):
        listing = json.loads(t.get_blob(r["outputs"][0]["digest"]))
        listing = edit(listing, t)
        data = listing if isinstance(listing, bytes) else json.dumps(listing, separators=(",", ":")).encode()
        r["outputs"][0]["digest"] = t.put_blob(data)
        return r

    return forge


def _add_entry(rel):
    def edit(listing, t):
        top = next(e for e in listing if e[0] == "top.txt")
        return listing + [[rel(t), top[1], top[2], False]]

    return edit


def _entry_digest(value):
    def edit(listing, t):
        for e in listing:
            if e[0] == "sub/copy.txt":
                e[1] = value(t)
        return listing

    return edit


FORGERIES = {
    # an output digest that walks out of the store to the canary file
    "digest-traversal": ("out/a.txt", _set_digest(lambda r, t: t.up(t.canaries.file))),
    # ... to a path that does not exist yet (nothing may be created there)
    "digest-newpath": ("out/a.txt", _set_digest(lambda r, t: t.up(t.canaries.dir / "made" / "blob"))),
    # ... to a folder
    "digest-dir": ("out/tree", _set_digest(lambda r, t: t.up(t.canaries.dir))),
    "digest-null": ("out/a.txt", _set_digest(None)),
    "digest-upper": ("out/a.txt", _set_digest(lambda r, t: r["outputs"][0]["digest"].upper())),
    "log-int": ("out/a.txt", _set("log", 12345)),
    "log-traversal": ("out/a.txt", _set("log", lambda r, t: t.up(t.canaries.file))),
    # a result stored under one key that says it is another's
    "key-other": ("out/a.txt", _set("key", lambda r, t: _hash(b"another action " + r["key"].encode()))),
    "key-traversal": ("out/a.txt", _set("key", lambda r, t: t.up(t.canaries.file))),
    # tree manifests
    "manifest-dotdot": ("out/tree", _manifest(_add_entry(lambda t: UP + str(t.canaries.dir / "pwned.txt")[1:]))),
    "manifest-parent": ("out/tree", _manifest(_add_entry(lambda t: "../escaped.txt"))),
    "manifest-absolute": ("out/tree", _manifest(_add_entry(lambda t: str(t.canaries.dir / "abs.txt")))),
    "manifest-digest": ("out/tree", _manifest(_entry_digest(lambda t: t.up(t.canaries.file)))),
    "manifest-not-a-list": ("out/tree", _manifest(lambda listing, t: b'{"sub/copy.txt": "x"}')),
}


# ---- the local store ------------------------------------------------------------------


def local_tools(p: Project, canaries: Canaries) -> Tools:
    store = p.root / ".bb"
    return Tools(canaries, lambda d: localstore.blobs(store)[d], lambda data: localstore.put_blob(store, data))


def forge_local(p: Project, target: str, forge, tools: Tools) -> None:
    result = localstore.results_by_target(p.root / ".bb")[target]
    forged = forge(copy.deepcopy(result), tools)
    localstore.write_result(p.root / ".bb", result["key"], json.dumps(forged).encode())


def forget_workspace(p: Project, *targets) -> None:
    """Make bb look its results up again: no no-op stamp, no index of last
    builds, and the targets' outputs gone from the workspace."""
    shutil.rmtree(p.root / ".bb" / "noop", ignore_errors=True)
    localstore.drop_index(p.root / ".bb")
    for t in targets:
        path = p.root / t
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def local_golden(tmp_path_factory) -> Path:
    """One local build, copied into each test's project (its store and state
    hold no absolute paths that matter: the stat cache is keyed by path, and
    entries for another folder are never used)."""
    p = checkout(tmp_path_factory.mktemp("hostile-local") / "proj")
    assert_ok(p.bb("build"))
    assert sorted(runs(p)) == sorted(TARGETS)
    assert_outputs(p)
    return p.root


@pytest.fixture
def local(project, tmp_path, local_golden):
    shutil.copytree(local_golden, project.root, dirs_exist_ok=True, symlinks=True)
    p = project
    shutil.rmtree(p.root / ".bb" / "noop", ignore_errors=True)
    canaries = Canaries(tmp_path, [p.root])
    return p, canaries, local_tools(p, canaries)


@pytest.mark.parametrize("name", list(FORGERIES))
def test_local_forged_result(local, name):
    p, canaries, tools = local
    target, forge = FORGERIES[name]
    forge_local(p, target, forge, tools)
    forget_workspace(p, target)
    canaries.arm()

    proc = p.bb("build")
    canaries.check(proc)
    assert_ok(proc)
    assert_warned(proc, [target])
    assert runs(p).count(target) == 2, f"the recipe of {target} did not run again: {runs(p)}"
    assert_outputs(p)
    canaries.assert_not_copied_into(p.root)

    before = runs(p)
    proc = p.bb("build")
    canaries.check(proc)
    assert_ok(proc, "a second bb build")
    assert runs(p) == before, f"a second build runs nothing, ran {runs(p)[len(before):]}"


@pytest.mark.parametrize("log", ["traversal", "int", "missing"])
def test_local_forged_log_is_never_read(local, log):
    """`bb log` reads the log's digest from the index, .bb/index.db (and the
    store): a forged one must not make it print, or fail on, anything else."""
    p, canaries, tools = local
    value = {"traversal": tools.up(canaries.file), "int": 12345, "missing": _hash(b"a log nobody stored")}[log]
    forge_local(p, "out/a.txt", _set("log", value), tools)
    entries = localstore.index(p.root / ".bb")
    entries["out/a.txt"]["log"] = value
    localstore.write_index(p.root / ".bb", {t: json.dumps(e) for t, e in entries.items()})
    canaries.arm()

    proc = p.bb("log", "out/a.txt")
    canaries.check(proc)
    assert_no_crash(proc, "bb log")
    assert "made a" not in proc.stdout

    shutil.rmtree(p.root / ".bb" / "noop", ignore_errors=True)
    proc = p.bb("build")
    canaries.check(proc)
    assert_ok(proc)
    assert_outputs(p)
    if log != "missing":  # a valid digest whose blob is gone may still be a hit
        assert_warned(proc, ["out/a.txt"])
        assert runs(p).count("out/a.txt") == 2, "a result with a corrupt log is a miss"
        proc = p.bb("log", "out/a.txt")
        assert_ok(proc, "bb log after the rebuild")
        assert proc.stdout == "made a\n"
    canaries.check()
    canaries.assert_not_copied_into(p.root)


def _index_forgery(kind: str):
    """What to put in the index: bytes for the whole file, or target -> the
    raw text of its entry."""

    def make(entries: dict, tools: Tools):
        if kind == "not-a-database":
            return b"SQLite format 3\x00" + b"\xff" * 200
        if kind == "other-table":
            return "other-table"
        raw = {
            "not-json": lambda: {t: '{"key": ' for t in entries},
            "null": lambda: {t: "null" for t in entries},
            "list": lambda: {t: json.dumps(list(e.values())) for t, e in entries.items()},
            "strings": lambda: {t: '"garbage"' for t in entries},
            "no-key": lambda: {t: json.dumps({k: v for k, v in e.items() if k != "key"}) for t, e in entries.items()},
            "outputs-null": lambda: {t: json.dumps({**e, "outputs": None}) for t, e in entries.items()},
            "key-traversal": lambda: {t: json.dumps({**e, "key": tools.up(tools.canaries.file)}) for t, e in entries.items()},
        }
        if kind in raw:
            return raw[kind]()
        # the right key, an output digest that walks to the canary, or none
        forged = copy.deepcopy(entries)
        forged["out/a.txt"]["outputs"][0]["digest"] = tools.up(tools.canaries.file) if kind == "digest-traversal" else None
        return {t: json.dumps(e) for t, e in forged.items()}

    return make


LAST_BUILDS = ["not-a-database", "other-table", "not-json", "null", "list", "strings", "no-key", "outputs-null", "key-traversal", "digest-traversal", "digest-null"]


@pytest.mark.parametrize("kind", LAST_BUILDS)
def test_local_hostile_index(local, kind):
    p, canaries, tools = local
    state = p.root / ".bb"
    forged = _index_forgery(kind)(localstore.index(state), tools)

    def plant():
        if isinstance(forged, bytes):
            localstore.drop_index(state)
            (state / "index.db").write_bytes(forged)
        elif forged == "other-table":
            localstore.drop_index(state)
            conn = sqlite3.connect(state / "index.db")
            conn.execute("create table last (x)")
            conn.commit()
            conn.close()
        else:
            localstore.write_index(state, forged)
        shutil.rmtree(p.root / ".bb" / "noop", ignore_errors=True)
        (p.root / "out/a.txt").unlink(missing_ok=True)

    plant()
    canaries.arm()
    proc = p.bb("build")
    canaries.check(proc)
    assert_ok(proc)
    assert_outputs(p)
    canaries.assert_not_copied_into(p.root)
    assert_ok(p.bb("build"), "a second bb build")

    # the commands that read the index, before a build rewrites it
    plant()
    for args in (["why", "out/a.txt"], ["log", "out/a.txt"]):
        proc = p.bb(*args)
        canaries.check(proc)
        assert_no_crash(proc, "bb " + " ".join(args))

STAT_CACHE = ["not-marshal", "truncated", "null", "list", "strings", "short-entries", "digest-traversal", "digest-int"]


@pytest.mark.parametrize("kind", STAT_CACHE)
def test_local_hostile_stat_cache(local, kind):
    p, canaries, tools = local
    state = p.root / ".bb" / "stat-cache"
    source = str(p.root / "data" / "in.txt")
    st = os.stat(source)
    sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    forged = {
        "not-marshal": b"\x00garbage{",
        "truncated": marshal.dumps({source: sig + [_hash(b"hello\n")]})[:-9],
        "null": marshal.dumps(None),
        "list": marshal.dumps([[source] + sig + [_hash(b"hello\n")]]),
        "strings": marshal.dumps({source: "garbage", str(p.root / "out/a.txt"): "x"}),
        "short-entries": marshal.dumps({source: [1, 2], str(p.root / "out/a.txt"): [None]}),
        # the file's real stat, so the entry would be trusted: its digest must be checked
        "digest-traversal": marshal.dumps({source: sig + [tools.up(canaries.file)]}),
        "digest-int": marshal.dumps({source: sig + [12345]}),
    }[kind]
    state.write_bytes(forged)
    shutil.rmtree(p.root / ".bb" / "noop", ignore_errors=True)
    canaries.arm()
    before = runs(p)

    proc = p.bb("build")
    canaries.check(proc)
    assert_ok(proc)
    assert_outputs(p)
    if kind.startswith("digest-"):
        # a rejected entry means the file is hashed again: same digest, same keys, nothing runs
        assert runs(p) == before, f"a forged stat-cache digest changed the keys: {runs(p)[len(before):]} ran"
    assert_ok(p.bb("build"), "a second bb build")
    canaries.check()


# ---- the shared cache in S3 ------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(moto_endpoint, tmp_path_factory) -> dict[str, bytes]:
    """What checkout A uploads after one full build: every object of its bucket."""
    s3 = S3(moto_endpoint, "bb-hostile-golden")
    home = tmp_path_factory.mktemp("hostile-golden")
    a = checkout(home / "proj")
    assert_ok(a.bb("build", env={**s3.env, "HOME": str(home)}), "checkout A's build")
    objects = {k: s3.get(k) for k in s3.keys()}
    assert len([k for k in objects if k.startswith("team/ac/")]) == 3, sorted(objects)
    assert [k for k in objects if k.startswith("team/bundles/")], sorted(objects)
    return objects


@dataclass
class Shared:
    s3: S3
    b: Project
    canaries: Canaries
    tools: Tools

    def results(self) -> dict[str, str]:
        """target -> its action result's object name."""
        return {json.loads(self.s3.get(k))["action"]["target"]: k for k in self.s3.keys("ac/")}

    def forge(self, target, forge, *, ac=True, bundles=True) -> None:
        if ac:
            name = self.results()[target]
            self.s3.put(name, json.dumps(forge(copy.deepcopy(json.loads(self.s3.get(name))), self.tools)).encode())
        if bundles:
            for name in self.s3.keys("bundles/"):
                bundle = json.loads(self.s3.get(name))
                for key, result in bundle.items():
                    if result["action"]["target"] == target:
                        bundle[key] = forge(copy.deepcopy(result), self.tools)
                self.s3.put(name, json.dumps(bundle).encode())

    def build(self, what="bb build in checkout B"):
        proc = self.b.bb("build", env=self.b.env)
        self.canaries.check(proc)
        assert_ok(proc, what)
        return proc

    def finish(self) -> None:
        """After the first build in B: outputs right, nothing outside touched,
        and a second build and `bb cache verify` are fine."""
        assert_outputs(self.b)
        self.canaries.assert_not_copied_into(self.b.root)
        before = runs(self.b)
        self.build("a second bb build in checkout B")
        assert runs(self.b) == before, f"a second build runs nothing, ran {runs(self.b)[len(before):]}"
        proc = self.b.bb("cache", "verify", env=self.b.env)
        self.canaries.check(proc)
        assert_ok(proc, "bb cache verify")
        assert_outputs(self.b)


@pytest.fixture
def shared(s3, golden, tmp_path) -> Shared:
    assert s3.keys() == [], f"bucket {s3.bucket} is not fresh: shorten the test's name"
    for key, data in golden.items():
        s3.put(key, data)
    b = checkout(tmp_path / "B" / "proj")
    # bb's own per-user cache (the interpreter it probed) is its to write, like the workspace
    user_cache = tmp_path / "B" / "home" / ".cache" / "bb"
    user_cache.mkdir(parents=True)
    b.env = {**s3.env, "HOME": str(tmp_path / "B" / "home")}
    canaries = Canaries(tmp_path, [b.root, user_cache])

    def put_blob(data):
        d = _hash(data)
        s3.put(f"team/cas/{d[:2]}/{d}", data)
        return d

    tools = Tools(canaries, lambda d: s3.get(f"team/cas/{d[:2]}/{d}"), put_blob)
    return Shared(s3, b, canaries, tools)


# the forgeries the contract names, in the bucket: every copy of the result
# (its object and its entry in the plan's bundle) is forged, so it is a miss
S3_FORGERIES = ["digest-traversal", "digest-newpath", "digest-null", "log-int", "key-other", "manifest-dotdot", "manifest-digest"]


@pytest.mark.parametrize("name", S3_FORGERIES)
def test_s3_forged(shared, name):
    target, forge = FORGERIES[name]
    shared.forge(target, forge)
    shared.canaries.arm()
    proc = shared.build()
    assert_warned(proc, [target])
    assert runs(shared.b).count(target) == 1, f"the recipe of {target} ran in B: {runs(shared.b)}"
    shared.finish()


def test_s3_log_blob_missing(shared):
    """Results whose log blob is gone from the bucket: their outputs are fine,
    so the build succeeds (a hit or a rebuild, either way exit 0)."""
    logs = {json.loads(shared.s3.get(k))["log"] for k in shared.s3.keys("ac/")}
    assert len(logs) == 3 and all(logs)
    for d in logs:
        shared.s3.client.delete_object(Bucket=shared.s3.bucket, Key=f"team/cas/{d[:2]}/{d}")
    shared.canaries.arm()
    shared.build()
    shared.finish()


def test_s3_bundle_forged(shared):
    """Only the bundle lies (bundles are found by listing team/bundles/): its
    entry for out/a.txt names the canary. The result object is intact, so
    falling back to it or rebuilding are both fine; the lie is not."""
    shared.forge("out/a.txt", FORGERIES["digest-traversal"][1], ac=False)
    shared.canaries.arm()
    proc = shared.build()
    assert_warned(proc, ["out/a.txt"])
    shared.finish()


def test_s3_bundle_key_mismatch(shared):
    """A bundle entry filed under one key holding another target's result."""
    names = shared.results()
    a_key = names["out/a.txt"].rsplit("/", 1)[-1]
    tree_result = json.loads(shared.s3.get(names["out/tree"]))
    for name in shared.s3.keys("bundles/"):
        bundle = json.loads(shared.s3.get(name))
        bundle[a_key] = tree_result
        shared.s3.put(name, json.dumps(bundle).encode())
    shared.s3.put(names["out/a.txt"], json.dumps(tree_result).encode())
    shared.canaries.arm()
    proc = shared.build()
    assert_warned(proc, ["out/a.txt"])
    assert runs(shared.b).count("out/a.txt") == 1
    shared.finish()
