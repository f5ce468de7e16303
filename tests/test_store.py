"""The local store: what is in it, and what happens when it is damaged."""
from __future__ import annotations

import json
import stat

from conftest import statuses

SIMPLE = """
    mid.txt: in.txt
        echo run >> runs.log
        tr a-z A-Z < $< > $@

    out.txt: mid.txt
        cat $< $< > $@
"""


def store_files(project, kind):
    return [p for p in (project.root / ".bb" / kind).rglob("*") if p.is_file()]


def test_layout_blobs_and_results(project):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    blobs = store_files(project, "cas")
    results = store_files(project, "ac")
    assert len(results) == 2
    for blob in blobs:
        assert blob.parent.name == blob.name[:2] and len(blob.name) == 64
        assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), "blobs are read-only"
    result = json.loads(results[0].read_text())
    assert {"key", "outputs", "exit_code", "action"} <= result.keys()
    # workspace outputs are copies, not links to blobs
    assert (project.root / "out.txt").stat().st_nlink == 1


def test_corrupt_action_result_is_a_miss_and_is_rebuilt(project):
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    for result in store_files(project, "ac"):
        result.write_text("{not json")
    (project.root / ".bb" / "last-builds.json").unlink()
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
    for blob in store_files(project, "cas"):
        blob.chmod(0o644)
        blob.write_bytes(b"garbage")
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
    (project.root / ".bb" / "last-builds.json").unlink()
    for path in store_files(project, "ac"):
        result = json.loads(path.read_text())
        for out in result["outputs"]:
            out["path"] = "../../escaped.txt"
        path.write_text(json.dumps(result))
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
    assert list((tmp_path / "flagstore" / "ac").rglob("*"))
    project.bb("build", "out.txt", env={"BB_STORE": str(tmp_path / "envstore")}, check=0)
    assert list((tmp_path / "envstore" / "ac").rglob("*"))
    project.batchfile("settings:\n    store = " + str(tmp_path / "settingstore") + "\n" + SIMPLE.replace("\n    ", "\n"))
    project.bb("build", "out.txt", check=0)
    assert list((tmp_path / "settingstore" / "ac").rglob("*"))


def test_interrupted_write_leaves_no_partial_blob(project):
    # A temp file left by a killed writer is neither a blob nor a result.
    project.batchfile(SIMPLE)
    project.write("in.txt", "abc\n")
    project.build("out.txt")
    shard = store_files(project, "ac")[0].parent
    (shard / ".tmp.999.1").write_text("partial")
    assert statuses(project.build("out.txt", "-B"), "built") == {"mid.txt", "out.txt"}
    proc = project.bb("cache", "gc", "--max-age", "1000d", check=0)
    assert "removed 0 action result(s)" in proc.stdout
