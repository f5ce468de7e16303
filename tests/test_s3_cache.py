"""The shared team cache in S3, end to end: `bb` against moto_server."""
from __future__ import annotations

import json

import localstore
from conftest import Project, statuses

PIPELINE = """
    @default
    all: out/report.txt model/

    out/clean.txt: data/raw.txt
        echo clean >> $$HOME/runs.log
        tr a-z A-Z < $< > $@

    @for part in [a, b, c]
    out/part-$(part).txt: out/clean.txt
        echo part >> $$HOME/runs.log
        (cat $<; echo $(part)) > $@

    out/report.txt: out/part-a.txt out/part-b.txt out/part-c.txt
        echo report >> $$HOME/runs.log
        cat $^ > $@

    model/: out/clean.txt
        echo model >> $$HOME/runs.log
        mkdir -p $@/layers
        head -c 100000 /dev/urandom > $@/layers/weights.bin
        cp $< $@/vocab.txt
"""


def checkout(tmp_path, name, s3, runs_file) -> Project:
    root = tmp_path / name / "work" / "pipeline"
    root.mkdir(parents=True)
    p = Project(root)
    p.batchfile(PIPELINE)
    p.write("data/raw.txt", "hello team\n")
    # recipes count their runs in $HOME, which differs per person and is not in any key
    assert runs_file == tmp_path / name / "runs.log"
    p.env = {**s3.env, "HOME": str(tmp_path / name), "USER": name}
    return p


def runs(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_two_checkouts_share_results_and_nothing_runs_twice(project, s3, tmp_path):
    alice_runs, bob_runs = tmp_path / "alice" / "runs.log", tmp_path / "bob" / "runs.log"
    alice = checkout(tmp_path, "alice", s3, alice_runs)
    bob = checkout(tmp_path, "bob", s3, bob_runs)

    built = alice.build(env=alice.env)
    assert statuses(built, "built") == {"out/clean.txt", "out/part-a.txt", "out/part-b.txt", "out/part-c.txt", "out/report.txt", "model"}
    assert alice.last_report["summary"]["cache"]["uploaded"] == 6
    assert s3.keys("ac/") and s3.keys("cas/")

    report = bob.build(env=bob.env)
    assert statuses(report, "built") == set(), bob.last_proc.stderr
    assert runs(bob_runs) == [], "bob ran no recipe"
    assert bob.read("out/report.txt") == alice.read("out/report.txt")
    assert (bob.root / "model/layers/weights.bin").read_bytes() == (alice.root / "model/layers/weights.bin").read_bytes()
    assert bob.read("model/vocab.txt") == "HELLO TEAM\n"
    # the keys are the same on both machines
    keys = lambda p: {t["target"]: t["key"] for t in p.last_report["targets"]}
    assert keys(alice) == keys(bob)
    # the shared hits that bob received fill his local store (blobs and results)
    local_results = set(localstore.results(bob.root / ".bb"))
    assert {keys(bob)["out/report.txt"], keys(bob)["model"]} <= local_results
    from buildsys.digest import hash_file

    weights = hash_file(str(bob.root / "model/layers/weights.bin"))
    assert weights in localstore.blobs(bob.root / ".bb")
    # and a second build is a local no-op
    again = bob.build(env=bob.env)
    assert statuses(again, "built") == set() and runs(bob_runs) == []


def test_planning_a_cached_graph_costs_few_requests(project, s3, tmp_path):
    alice = checkout(tmp_path, "alice", s3, tmp_path / "alice" / "runs.log")
    bob = checkout(tmp_path, "bob", s3, tmp_path / "bob" / "runs.log")
    alice.build(env=alice.env)
    bob.build(env=bob.env)
    requests = bob.last_report["summary"]["cache"]["requests"]
    # a bundle answers every lookup; the rest are blob downloads for the outputs
    blobs = len([k for k in s3.keys("cas/")])
    assert requests <= 3 + blobs, requests


def test_read_only_mode_uses_the_cache_but_never_writes(project, s3, tmp_path):
    alice = checkout(tmp_path, "alice", s3, tmp_path / "alice" / "runs.log")
    alice.build(env=alice.env)
    before = set(s3.keys())
    ci = checkout(tmp_path, "ci", s3, tmp_path / "ci" / "runs.log")
    ci.write("data/raw.txt", "hello team\n")
    ci.batchfile(PIPELINE + "\n    extra.txt: out/report.txt\n        wc -l < $< > $@\n")
    report = ci.build("extra.txt", "--cache-read-only", env=ci.env)
    assert report["extra.txt"] == "built"
    assert statuses(report, "cached") >= {"out/report.txt"}
    assert set(s3.keys()) == before, "a read-only client writes nothing"
    # the same through the environment variable
    ci.write("data/raw.txt", "other\n")
    ci.build("extra.txt", env={**ci.env, "BB_CACHE_READ_ONLY": "1"})
    assert set(s3.keys()) == before


def test_corrupted_blob_in_the_bucket_is_rejected(project, s3, tmp_path):
    alice = checkout(tmp_path, "alice", s3, tmp_path / "alice" / "runs.log")
    alice.build("out/report.txt", env=alice.env)
    # damage every blob
    for key in s3.keys("cas/"):
        s3.put(key, b"tampered")
    bob_runs = tmp_path / "bob" / "runs.log"
    bob = checkout(tmp_path, "bob", s3, bob_runs)
    proc = bob.bb("build", "out/report.txt", env=bob.env)
    assert "Traceback" not in proc.stderr
    assert "corrupt" in proc.stderr or "does not match" in proc.stderr
    if bob.exists("out/report.txt"):
        assert bob.read("out/report.txt") == alice.read("out/report.txt"), "nothing tampered reaches the workspace"
    final = bob.build("out/report.txt", env=bob.env)
    assert final["out/report.txt"] in ("built", "cached")
    assert bob.read("out/report.txt") == alice.read("out/report.txt")


def test_result_naming_a_missing_blob_is_a_miss(project, s3, tmp_path):
    alice = checkout(tmp_path, "alice", s3, tmp_path / "alice" / "runs.log")
    alice.build("out/clean.txt", env=alice.env)
    for key in s3.keys("cas/"):
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    bob_runs = tmp_path / "bob" / "runs.log"
    bob = checkout(tmp_path, "bob", s3, bob_runs)
    proc = bob.bb("build", "out/clean.txt", env=bob.env)
    assert "Traceback" not in proc.stderr
    assert "missing" in proc.stderr
    bob.build("out/clean.txt", env=bob.env)
    assert bob.read("out/clean.txt") == "HELLO TEAM\n"


def test_path_escaping_result_is_rejected(project, s3, tmp_path):
    alice = checkout(tmp_path, "alice", s3, tmp_path / "alice" / "runs.log")
    alice.build("out/clean.txt", env=alice.env)
    for key in s3.keys("ac/"):
        result = json.loads(s3.get(key))
        result["outputs"][0]["path"] = "../../../escaped.txt"
        s3.put(key, json.dumps(result).encode())
    for key in s3.keys("bundles/") + s3.keys("an/"):  # only the result can answer
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    bob = checkout(tmp_path, "bob", s3, tmp_path / "bob" / "runs.log")
    report = bob.build("out/clean.txt", env=bob.env)
    assert report["out/clean.txt"] == "built"
    assert "ignored the stored result" in bob.last_proc.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


def test_secrets_reach_the_recipe_but_never_a_key_or_the_store(project, s3, tmp_path):
    from blake3 import blake3

    alice = checkout(tmp_path, "alice", s3, tmp_path / "alice" / "runs.log")
    alice.batchfile(PIPELINE + '\n    @secret API_TOKEN\n    secret.txt:\n        echo "$${#API_TOKEN}" > $@\n')
    env = {**alice.env, "API_TOKEN": "hunter2-value"}
    alice.build("all", "secret.txt", env=env)
    assert alice.read("secret.txt") == "13\n"  # the recipe saw it
    forms = [s.encode() for s in ("hunter2-value", blake3(b"hunter2-value").hexdigest(), env["AWS_SECRET_ACCESS_KEY"])]
    assert not any(f.decode() in alice.last_proc.stdout + alice.last_proc.stderr for f in forms)
    for key in s3.keys():
        body = s3.get(key)
        assert not any(f in body for f in forms), key
    for path in (alice.root / ".bb").rglob("*"):
        if path.is_file():
            assert not any(f in path.read_bytes() for f in forms), path
    # a new secret value is not a new result
    assert alice.build("secret.txt", env={**env, "API_TOKEN": "rotated"}) == {"secret.txt": "cached"}


def test_env_names_that_look_secret_are_warned_about(project):
    project.batchfile("""
        @env DB_PASS
        out.txt:
            echo "$$DB_PASS" > $@
    """)
    project.build(env={"DB_PASS": "pw"})
    assert "DB_PASS is declared with @env" in project.last_proc.stderr
    assert "@secret" in project.last_proc.stderr


TWO_SOURCES = """
    a.txt: src/a.txt
        echo a >> $$HOME/runs.log
        tr a-z A-Z < $< > $@

    b.txt: src/b.txt
        echo b >> $$HOME/runs.log
        tr a-z A-Z < $< > $@

    ab.txt: a.txt b.txt
        echo ab >> $$HOME/runs.log
        cat $^ > $@
"""


def test_one_bundle_serves_every_selection_and_source_version(project, s3, tmp_path):
    """The project's bundle answers plans of any selection, for the sources
    of this build and of a few before; per-result objects are not needed."""

    def person(name: str, a: str) -> Project:
        p = Project(tmp_path / name / "pipeline")
        p.root.mkdir(parents=True)
        p.batchfile(TWO_SOURCES)
        p.write("src/a.txt", a)
        p.write("src/b.txt", "bee\n")
        p.env = {**s3.env, "HOME": str(tmp_path / name)}
        return p

    def drop_results():  # only the bundle can answer now
        for key in s3.keys("ac/"):
            s3.client.delete_object(Bucket=s3.bucket, Key=key)

    alice = person("alice", "one\n")
    assert alice.build("ab.txt", env=alice.env) == {"a.txt": "built", "b.txt": "built", "ab.txt": "built"}
    drop_results()
    bob = person("bob", "one\n")
    assert bob.build("b.txt", env=bob.env) == {"b.txt": "cached"}, "a selection never built as a whole"
    assert runs(tmp_path / "bob" / "runs.log") == []

    alice.write("src/a.txt", "two\n")
    assert alice.build("ab.txt", env=alice.env) == {"a.txt": "built", "b.txt": "cached", "ab.txt": "built"}
    drop_results()
    for name, a in (("carol", "one\n"), ("dan", "two\n")):  # the sources before the edit, and after
        p = person(name, a)
        assert p.build("ab.txt", env=p.env) == {"a.txt": "cached", "b.txt": "cached", "ab.txt": "cached"}, name
        assert p.read("ab.txt") == a.upper() + "BEE\n"
        assert runs(tmp_path / name / "runs.log") == []

    for version in ("3\n", "4\n", "5\n", "6\n"):
        alice.write("src/a.txt", version)
        alice.build("ab.txt", env=alice.env)
    [bundle] = s3.keys("bundles/")
    targets = [r["target"] for r in json.loads(s3.get(bundle)).values()]
    assert targets.count("a.txt") == 3 and targets.count("ab.txt") == 3 and targets.count("b.txt") == 1, "bounded: a few results per target"


def test_lookups_of_a_graph_without_bundle_stop_at_one_listing(project, s3, tmp_path):
    """No bundle answers (a graph never built as a whole, bundles removed):
    after a few hundred misses one listing of the shared results answers
    every later miss, and the results that do exist are still found."""

    def person(name: str, n: int, word: str = "v") -> Project:
        p = Project(tmp_path / name)
        p.root.mkdir()
        p.batchfile(f"@for i in 1..{n}\nout/$(i).txt: src.txt\n\techo {word}$(i) > $@\n")
        p.write("src.txt", "s\n")
        p.env = s3.env
        return p

    alice = person("alice", 400)
    alice.build("out/*.txt", env=alice.env)
    for key in s3.keys("bundles/"):
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    bob = person("bob", 1000)
    report = bob.build("--cache-read-only", "out/*.txt", env=bob.env)
    assert statuses(report, "cached") == {f"out/{i}.txt" for i in range(1, 401)}, "every shared result is found"
    assert len(statuses(report, "built")) == 600
    assert bob.read("out/7.txt") == "v7\n" and bob.read("out/700.txt") == "v700\n"
    requests = bob.last_report["summary"]["cache"]["requests"]
    # hits and their blobs, misses until the listing (and those in flight then), the listing
    assert requests <= 400 + 400 + 256 + 16 + 16 + 4, requests
    carol = person("carol", 1000, word="w")  # nothing of it is shared
    carol.build("--cache-read-only", "out/*.txt", env=carol.env)
    assert carol.last_report["summary"]["cache"]["requests"] <= 256 + 16 + 16 + 4, carol.last_report["summary"]


NAMED = "@for i in 1..40\nout/$(i).txt: src.txt\n\techo v$(i) > $@\n"


def named_graph(tmp_path, name: str, s3, endpoint: str = "") -> Project:
    """40 targets: more lookups than a listing costs, so without a bundle the names answer."""
    p = Project(tmp_path / name)
    p.root.mkdir()
    p.batchfile(NAMED)
    p.write("src.txt", "s\n")
    p.env = {**s3.env, **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})}
    return p


def names_by_target(s3) -> dict[str, str]:
    """target -> the object name of its result's name (the path is its last field, base64)."""
    import base64

    found = {}
    for name in s3.keys("an/"):
        path = name.rsplit(".", 1)[-1]
        found[base64.urlsafe_b64decode(path + "=" * (-len(path) % 4)).decode()] = name
    return found


def test_without_a_bundle_plans_come_from_result_names(project, s3, tmp_path, moto_endpoint):
    from faulty_proxy import FaultyProxy

    alice = named_graph(tmp_path, "alice", s3)
    alice.build("out/*.txt", env=alice.env)
    assert len(s3.keys("an/")) == len(s3.keys("ac/")) == 40, "every result has a name"
    for key in s3.keys("bundles/"):
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    proxy = FaultyProxy(moto_endpoint)
    try:
        bob = named_graph(tmp_path, "bob", s3, proxy.url)
        proc = bob.bb("plan", "out/*.txt", env=bob.env, check=0)
        assert "0 to run, 40 cached" in proc.stderr, proc.stderr
        assert not [p for _, p in proxy.seen if "/ac/" in p], "no result is read to plan"
        assert len(proxy.seen) <= 1 + 2 * 16 + 2, proxy.seen  # the bundle, the listings of ac/ and an/
    finally:
        proxy.close()
    bob = named_graph(tmp_path, "bob2", s3)
    report = bob.build("out/*.txt", env=bob.env)
    assert statuses(report, "cached") == {f"out/{i}.txt" for i in range(1, 41)}
    assert bob.read("out/7.txt") == "v7\n"
    # what is kept locally and bundled again is the full result, not the name
    kept = localstore.results(bob.root / ".bb")
    assert len(kept) == 40 and all(r["action"] for r in kept.values())
    [bundle] = s3.keys("bundles/")
    assert all(r["action"] for r in json.loads(s3.get(bundle)).values())


def test_result_names_are_checked_against_their_results(project, s3, tmp_path):
    """Names are as untrusted as results: one that does not parse is ignored
    (the result is read instead), one for a result that is not there is
    ignored, and one that lies about its outputs is caught before its bytes
    are used: the target is rebuilt, with a warning."""
    alice = named_graph(tmp_path, "alice", s3)
    alice.build("out/*.txt", env=alice.env)
    for key in s3.keys("bundles/"):
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    names = names_by_target(s3)
    drop = lambda name: s3.client.delete_object(Bucket=s3.bucket, Key=name)
    # malformed: the size of out/2.txt's output is not a number
    fields = names["out/2.txt"].split(".")
    drop(names["out/2.txt"])
    s3.put(".".join(fields[:5] + ["many"] + fields[6:]), b"")
    # a lie: out/1.txt's name claims out/3.txt's output (a real blob)
    fields, other = names["out/1.txt"].split("."), names["out/3.txt"].split(".")
    drop(names["out/1.txt"])
    s3.put(".".join(fields[:4] + other[4:6] + fields[6:]), b"")
    # a name whose result does not exist
    s3.put(f"team/an/ff/{'f' * 64}.-.0.0.{other[4]}.3.f.b3V0LzUudHh0", b"")
    bob = named_graph(tmp_path, "bob", s3)
    report = bob.build("out/*.txt", env=bob.env)
    assert report["out/1.txt"] == "built", bob.last_proc.stderr
    assert "the name of action result" in bob.last_proc.stderr
    assert report["out/2.txt"] == "cached"
    for i in range(1, 41):
        assert bob.read(f"out/{i}.txt") == f"v{i}\n"
