"""`bb cache push/pull/ls/stats/verify/gc` against moto_server."""
from __future__ import annotations


import localstore
from conftest import Project, statuses

PIPELINE = """
    @default
    all: b.txt tree/

    a.txt: src.txt
        echo a >> $$HOME/runs.log
        tr a-z A-Z < $< > $@

    b.txt: a.txt
        cat $< $< > $@

    tree/: a.txt
        mkdir -p $@/deep
        cp $< $@/deep/copy.txt
"""


def person(tmp_path, name, s3) -> Project:
    root = tmp_path / name / "checkout"
    root.mkdir(parents=True)
    p = Project(root)
    p.batchfile(PIPELINE)
    p.write("src.txt", "data\n")
    p.env = {**s3.env, "HOME": str(tmp_path / name)}
    return p


def test_push_then_pull_without_building(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build("--no-cache", env=alice.env)
    assert s3.keys() == [], "--no-cache wrote nothing"
    proc = alice.bb("cache", "push", env=alice.env, check=0)
    assert "pushed 3 result(s)" in proc.stdout
    bob = person(tmp_path, "bob", s3)
    proc = bob.bb("cache", "pull", "all", env=bob.env, check=0)
    assert "pulled 2 target(s)" in proc.stdout
    assert bob.read("b.txt") == "DATA\nDATA\n"
    assert bob.read("tree/deep/copy.txt") == "DATA\n"
    assert not (tmp_path / "bob" / "runs.log").exists(), "pull runs no recipe"


def test_pull_reports_what_is_not_shared(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build(env=alice.env)
    bob = person(tmp_path, "bob", s3)
    bob.write("src.txt", "different\n")
    proc = bob.bb("cache", "pull", "b.txt", env=bob.env, check=1)
    assert "not in the shared cache" in proc.stderr and "b.txt" in proc.stderr


def test_ls_shows_where_results_are(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build("--no-cache", env=alice.env)
    lines = alice.bb("cache", "ls", env=alice.env, check=0).stdout.splitlines()
    assert any(l.startswith("b.txt") and l.rstrip().endswith("local") for l in lines), lines
    alice.bb("cache", "push", "b.txt", env=alice.env, check=0)
    lines = alice.bb("cache", "ls", env=alice.env, check=0).stdout.splitlines()
    assert any(l.startswith("b.txt") and l.rstrip().endswith("local + shared") for l in lines), lines
    assert any(l.startswith("tree") and l.rstrip().endswith("local") for l in lines), lines


def test_stats_counts_both_stores(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build(env=alice.env)
    out = alice.bb("cache", "stats", env=alice.env, check=0).stdout
    assert "local store" in out and "3 result(s)" in out
    assert len(s3.keys("an/")) == 3, "each result has a name"
    assert f"s3://{s3.bucket}/team: 3 result(s)" in out, "names are not results"


def test_verify_finds_corrupt_blobs_locally_and_in_s3(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build(env=alice.env)
    assert alice.bb("cache", "verify", env=alice.env, check=0).stdout.strip().endswith("0 corrupt blob(s)")
    digest = next(iter(localstore.blobs(alice.root / ".bb")))
    localstore.overwrite_blob(alice.root / ".bb", digest, b"bitrot")
    proc = alice.bb("cache", "verify", env=alice.env, check=1)
    assert f"corrupt local blob {digest}" in proc.stdout
    alice.bb("cache", "verify", "--delete", env=alice.env, check=0)
    assert digest not in localstore.blobs(alice.root / ".bb")
    key = s3.keys("cas/")[0]
    s3.put(key, b"tampered")
    proc = alice.bb("cache", "verify", "--shared", env=alice.env, check=1)
    assert "corrupt shared blob " + key.rsplit("/", 1)[-1] in proc.stdout


def test_gc_on_s3_keeps_what_the_batchfile_reaches(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build(env=alice.env)
    alice.write("src.txt", "version two\n")
    alice.build(env=alice.env)
    assert len(s3.keys("ac/")) == 6
    # everything is "old" for this collection (grace for fresh blobs aside)
    proc = alice.bb("cache", "gc", "--shared", "--max-age", "0s", env=alice.env, check=0)
    assert "removed 3 action result(s)" in proc.stdout
    assert len(s3.keys("ac/")) == 3
    # a result's name goes with it, and so does a name whose result is not there
    key = lambda object_name: object_name.rsplit("/", 1)[-1].split(".")[0]
    assert sorted(key(n) for n in s3.keys("an/")) == sorted(key(r) for r in s3.keys("ac/"))
    s3.put(f"team/an/00/{'0' * 64}.-.0.0.{'1' * 64}.1.f.YQ", b"")
    alice.bb("cache", "gc", "--shared", "--max-age", "0s", env=alice.env, check=0)
    assert sorted(key(n) for n in s3.keys("an/")) == sorted(key(r) for r in s3.keys("ac/"))
    # what is left still serves a teammate with the current inputs
    bob = person(tmp_path, "bob", s3)
    bob.write("src.txt", "version two\n")
    assert statuses(bob.build(env=bob.env), "built") == set()


def test_cache_commands_need_a_shared_cache(project):
    project.batchfile(PIPELINE)
    project.write("src.txt", "x\n")
    proc = project.bb("cache", "push", check=2)
    assert "no shared cache is configured" in proc.stderr


def test_pull_keeps_the_plan_bundle_whole(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build(env=alice.env)
    bob = person(tmp_path, "bob", s3)
    bob.bb("cache", "pull", "all", env=bob.env, check=0)  # the same plan as alice's build
    carol = person(tmp_path, "carol", s3)
    report = carol.build(env=carol.env)
    assert statuses(report, "built") == set()
    cache = carol.last_report["summary"]["cache"]
    blobs = len(s3.keys("cas/"))
    assert cache["requests"] <= 2 + blobs, cache  # the probe, the bundle, the blobs


def test_second_push_sends_nothing(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3)
    alice.build("--no-cache", env=alice.env)
    alice.bb("cache", "push", env=alice.env, check=0)
    proc = alice.bb("cache", "push", env=alice.env, check=0)
    assert "pushed 0 result(s)" in proc.stdout and "3 already shared" in proc.stdout
