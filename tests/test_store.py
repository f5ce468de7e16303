"""The local store: what is in it, and what happens when it is damaged."""
from __future__ import annotations

import json
import stat

import localstore
from conftest import statuses

SIMPLE = """
    mid.txt: in.txt
        echo run >> runs.log
        tr a-z A-Z < $< > $@

    out.txt: mid.txt
        cat $< $< > $@
"""


def store(project):
    return project.root / ".bb"


def test_layout_blobs_and_results(project):
    project.batchfile(SIMPLE + """
    big.bin: in.txt
        head -c 200000 /dev/zero | tr '\\0' x > $@
""")
    project.write("in.txt", "abc\n")
    project.build("out.txt", "big.bin")
    results = localstore.results(store(project))
    assert len(results) == 3
    for key, result in results.items():
        assert {"key", "outputs", "exit_code", "action"} <= result.keys() and result["key"] == key
    # small outputs live in store.db: no file per task; a large one is a read-only file in cas/
    files = [p for p in (store(project) / "cas").rglob("*") if p.is_file()]
    assert [f.stat().st_size for f in files] == [200000]
    for blob in files:
        assert blob.parent.name == blob.name[:2] and len(blob.name) == 64
        assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), "blobs are read-only"
    assert {o["digest"] for r in results.values() for o in r["outputs"]} <= set(localstore.blobs(store(project)))
    # workspace outputs are copies, not links to blobs
    assert (project.root / "out.txt").stat().st_nlink == 1
    assert (project.root / "big.bin").stat().st_nlink == 1


def test_corrupt_action_result_is_a_miss_and_is_rebuilt(project):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    for key in localstore.results(store(project)):
        localstore.write_result(store(project), key, b"{not json")
    localstore.drop_index(project.root / ".bb")
    (project.root / "out.txt").unlink()
    report = project.build("out.txt")
    assert statuses(report, "built") == {"mid.txt", "out.txt"}
    assert "corrupt" in project.last_proc.stderr
    assert project.read("out.txt") == "ABC\nABC\n"
    # and the store is healthy again
    assert statuses(project.build("out.txt"), "built") == set()


def test_corrupt_blob_is_detected_and_rebuilt(project):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    expected = project.read("out.txt")
    for digest in localstore.blobs(store(project)):
        localstore.overwrite_blob(store(project), digest, b"garbage")
    (project.root / "out.txt").unlink()
    report = project.build("out.txt")
    assert "does not match its digest" in project.last_proc.stderr and "Traceback" not in project.last_proc.stderr
    assert report["out.txt"] == "built", "a result whose blob is corrupt is a miss"
    assert project.read("out.txt") == expected
    assert project.build("out.txt") == {"mid.txt": "cached", "out.txt": "cached"}


def test_forged_result_with_escaping_path_is_ignored(project, tmp_path):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    localstore.drop_index(project.root / ".bb")
    for key, result in localstore.results(store(project)).items():
        for out in result["outputs"]:
            out["path"] = "../../escaped.txt"
        localstore.write_result(store(project), key, json.dumps(result).encode())
    (project.root / "out.txt").unlink()
    report = project.build("out.txt")
    assert report["out.txt"] == "built"
    assert not (tmp_path / "escaped.txt").exists()
    assert not (project.root.parent / "escaped.txt").exists()
    assert "ignored the stored result" in project.last_proc.stderr


def test_alias_inputs_enter_the_key(project):
    project.batchfile("""
        @for n in [a, b]
        $(n).txt: src-$(n).txt
            cp $< $@

        parts: a.txt b.txt

        @default
        joined.txt: parts
            cat a.txt b.txt > $@
    """)
    project.write("src-a.txt", "1\n")
    project.write("src-b.txt", "2\n")
    project.build()
    assert project.read("joined.txt") == "1\n2\n"
    project.write("src-b.txt", "3\n")
    report = project.build()
    assert report["joined.txt"] == "built"
    assert project.read("joined.txt") == "1\n3\n"


def test_target_needing_its_own_output_is_an_error(project):
    project.batchfile("""
        data.txt: data.txt
            sort -o $@ $<
    """)
    project.write("data.txt", "b\na\n")
    proc = project.bb("build", check=2)
    assert "own output" in proc.stderr


def test_store_location_from_flag_env_and_setting(project, tmp_path):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.bb("build", "out.txt", "--store", str(tmp_path / "flagstore"), check=0)
    assert localstore.results(tmp_path / "flagstore")
    project.bb("build", "out.txt", env={"BB_STORE": str(tmp_path / "envstore")}, check=0)
    assert localstore.results(tmp_path / "envstore")
    project.batchfile("settings:\n    store = " + str(tmp_path / "settingstore") + "\n" + SIMPLE.replace("\n    ", "\n"))
    project.bb("build", "out.txt", check=0)
    assert localstore.results(tmp_path / "settingstore")


def test_interrupted_write_leaves_no_partial_blob(project):
    # A temp file left by a killed writer of a large blob is not a blob.
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    (store(project) / "cas").mkdir(exist_ok=True)
    (store(project) / "cas" / ".tmp.999.1").write_text("partial")
    assert statuses(project.build("out.txt", "-B"), "built") == {"mid.txt", "out.txt"}
    proc = project.bb("cache", "gc", "--max-age", "1000d", check=0)
    assert "removed 0 action result(s)" in proc.stdout


def test_a_damaged_database_is_set_aside_and_rebuilt(project):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    db = store(project) / "store.db"
    db.write_bytes(b"this is not an SQLite database" * 100)
    localstore.drop_index(project.root / ".bb")
    (project.root / "out.txt").unlink()
    report = project.build("out.txt")
    assert statuses(report, "built") == {"mid.txt", "out.txt"}
    stderr = project.last_proc.stderr
    assert "is not a database; moved it to" in stderr and "Traceback" not in stderr
    kept = [p for p in store(project).iterdir() if p.name.startswith("store.db.damaged-")]
    assert [p.read_bytes()[:30] for p in kept] == [b"this is not an SQLite database"], "the damaged file is kept"
    assert project.read("out.txt") == "ABC\nABC\n"
    assert project.bb("cache", "verify", check=0).stdout.strip().endswith("0 corrupt blob(s)")


def test_verify_reports_a_database_damaged_inside(project):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    db = store(project) / "store.db"
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 2 * page
    data[page + 8: 2 * page] = b"\xff" * (page - 8)  # a page's contents, past the header
    db.write_bytes(bytes(data))
    proc = project.bb("cache", "verify", check=1)
    assert "is damaged" in proc.stdout and "move it aside" in proc.stdout


def _claimed_elsewhere(store_dir, key: str) -> bool:
    """Does another process find the action's claim taken? (POSIX locks never
    block their own process, so the question is asked from a child.)"""
    import subprocess
    import sys

    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2][:12], 16))\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(store_dir / "claims"), key]).returncode == 1


def test_batched_writes_are_read_here_at_once_and_elsewhere_with_the_claim(tmp_path):
    """During a build the store writes small blobs and results behind the
    recipes: this process reads them at once; another bb sharing the store
    finds the action claimed until they are written, and then both."""
    from buildsys.store.api import ActionResult, OutputEntry
    from buildsys.store.local import LocalStore

    root = tmp_path / "store"
    out = tmp_path / "out.txt"
    out.write_text("bytes\n")
    here, elsewhere = LocalStore(str(root)), LocalStore(str(root))  # two connections, as two bb
    key = "ab" * 32
    with here.batched(3600):  # the periodic write does not come during the test
        with here.claim(key, lambda: True):
            digest, _ = here.put_file(str(out))
            here.put_result(ActionResult(key, (OutputEntry("out.txt", digest, 6),), 0, "", 0.0, 0.0, {}))
        assert here.get_result(key).outputs[0].digest == digest and here.read_bytes(digest) == b"bytes\n"
        assert elsewhere.get_result(key) is None and not elsewhere.has_blob(digest)
        assert _claimed_elsewhere(root, key)
        here.flush()
        assert elsewhere.get_result(key).outputs[0].digest == digest and elsewhere.read_bytes(digest) == b"bytes\n"
        assert not _claimed_elsewhere(root, key)
        # a result that took longer to make than the batch waits is written at once
        slow = "cd" * 32
        here.put_result(ActionResult(slow, (OutputEntry("out.txt", digest, 6),), 0, "", 0.0, 3600.0, {}))
        assert elsewhere.get_result(slow) is not None
    # after the batch, a write is in the database at once
    out.write_text("other bytes\n")
    digest, _ = here.put_file(str(out))
    assert elsewhere.read_bytes(digest) == b"other bytes\n"
