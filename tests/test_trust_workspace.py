"""The workspace matches the graph, keys cover exactly what can change a
result, and outputs bb did not write are never lost: end to end, through the
`bb` command."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import statuses

PIPELINE = """
    MODEL = knn
    @default
    report.txt: metrics/$(MODEL).json
        cat $< > $@
    metrics/$(MODEL).json: data.csv
        echo "$(MODEL)" > $@; cat data.csv >> $@
"""


def status(project, *args) -> dict:
    proc = project.bb("status", "--json", *args, check=0)
    return {row["path"]: row["state"] for row in json.loads(proc.stdout)}


def test_parameter_change_and_revert_leaves_no_stale_intermediate(project):
    project.batchfile(PIPELINE)
    project.write("data.csv", "1,2\n")
    project.build()
    project.build("MODEL=tree")
    assert project.read("metrics/tree.json").startswith("tree")
    project.build()  # back to knn: everything cached, and the workspace matches
    assert project.read("metrics/knn.json") == "knn\n1,2\n"
    assert project.read("report.txt") == "knn\n1,2\n"
    assert status(project) == {"metrics/knn.json": "ok", "report.txt": "ok"}


def test_status_names_stale_missing_modified_and_out_of_date(project):
    project.batchfile("""
        P = 1
        @default
        report.txt: mid.txt
            cat $< > $@
        mid.txt: in.txt
            echo "$(P)" > $@; cat in.txt >> $@
    """)
    project.write("in.txt", "a\n")
    project.build()
    assert status(project) == {"mid.txt": "ok", "report.txt": "ok"}
    project.build("P=2")
    assert status(project) == {"mid.txt": "stale", "report.txt": "stale"}
    project.build()
    (project.root / "mid.txt").write_text("edited by hand\n")
    os.unlink(project.root / "report.txt")
    assert status(project) == {"mid.txt": "modified", "report.txt": "missing"}
    project.write("in.txt", "b\n")
    assert status(project) == {"mid.txt": "out of date", "report.txt": "out of date"}


def test_hand_edited_output_is_set_aside_not_lost_and_never_up_to_date(project):
    project.batchfile(PIPELINE)
    project.write("data.csv", "1,2\n")
    project.build()
    (project.root / "metrics/knn.json").write_text("my notes\n")
    proc = project.bb("why", "report.txt", check=0)
    assert "up to date" in proc.stdout  # the report's inputs did not change...
    assert status(project)["metrics/knn.json"] == "modified"  # ...but the workspace says so
    project.build()
    assert project.read("metrics/knn.json") == "knn\n1,2\n"
    assert "metrics/knn.json" in project.last_proc.stderr and "moved it to" in project.last_proc.stderr
    assert (project.root / ".bb/modified/metrics/knn.json").read_text() == "my notes\n"


def test_a_user_folder_where_a_file_output_goes_is_set_aside(project):
    project.batchfile("""
        out: in.txt
            cp in.txt out
    """)
    project.write("in.txt", "x\n")
    project.write("out/precious.txt", "keep me\n")
    project.build()
    assert project.read("out") == "x\n"
    assert (project.root / ".bb/modified/out/precious.txt").read_text() == "keep me\n"
    assert "moved it to" in project.last_proc.stderr


def test_clean_then_build_restores_intermediate_folders_and_leaves_no_empty_ones(project):
    project.batchfile(PIPELINE)
    project.write("data.csv", "1,2\n")
    project.build()
    project.bb("clean", check=0)
    assert not (project.root / "metrics").exists()
    assert project.build() == {"metrics/knn.json": "cached", "report.txt": "cached"}
    assert project.read("metrics/knn.json") == "knn\n1,2\n"


def test_failed_recipe_then_fix_restores_the_output(project):
    good = PIPELINE
    project.batchfile(good)
    project.write("data.csv", "1,2\n")
    project.build()
    project.batchfile(good.replace('echo "$(MODEL)" > $@; cat data.csv >> $@', "exit 3"))
    project.build(check=1)
    assert not project.exists("metrics/knn.json")
    project.batchfile(good)
    project.build()
    assert project.read("metrics/knn.json") == "knn\n1,2\n"
    assert status(project) == {"metrics/knn.json": "ok", "report.txt": "ok"}


def test_a_symlinked_output_folder_is_never_written_or_cleaned_through(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "result.txt").write_text("not bb's\n")
    os.symlink(outside, project.root / "results")
    project.batchfile("""
        results/result.txt:
            echo new > $@
    """)
    proc = project.bb("build", check=1)
    assert "symlink" in proc.stderr and "internal error" not in proc.stderr
    assert (outside / "result.txt").read_text() == "not bb's\n"
    proc = project.bb("clean", check=0)
    assert (outside / "result.txt").read_text() == "not bb's\n"


# ---- keys: exactly what can change a result --------------------------------------------------


def test_executable_bit_of_a_file_input_is_keyed(project):
    project.batchfile("""
        out.txt: tool.sh
            test -x tool.sh && echo exec > $@ || echo plain > $@
    """)
    project.write("tool.sh", "#!/bin/sh\n")
    project.build()
    assert project.read("out.txt") == "plain\n"
    os.chmod(project.root / "tool.sh", 0o755)
    assert "tool.sh: its executable bit changed" in project.bb("why", "out.txt", check=0).stdout
    assert project.build() == {"out.txt": "built"}
    assert project.read("out.txt") == "exec\n"


def test_an_empty_folder_in_a_directory_input_is_keyed(project):
    project.batchfile("""
        listing.txt: data/
            find data | sort > $@
    """)
    project.write("data/a.txt", "a\n")
    project.build()
    (project.root / "data/empty").mkdir()
    assert project.build() == {"listing.txt": "built"}
    assert "data/empty" in project.read("listing.txt")


def test_empty_folders_inside_a_directory_output_come_back(project):
    project.batchfile("""
        tree/:
            mkdir -p tree/empty tree/full; echo x > tree/full/f
    """)
    project.build()
    project.bb("clean", check=0)
    assert project.build() == {"tree": "cached"}
    assert (project.root / "tree/empty").is_dir()


def test_swapping_inputs_in_the_header_rebuilds_only_when_the_recipe_sees_the_order(project):
    project.write("a.txt", "a\n")
    project.write("b.txt", "b\n")
    project.batchfile("""
        both.txt: a.txt b.txt
            cat a.txt b.txt > $@
    """)
    project.build()
    project.batchfile("""
        both.txt: b.txt a.txt
            cat a.txt b.txt > $@
    """)
    assert project.build() == {"both.txt": "cached"}
    project.batchfile("""
        both.txt: b.txt a.txt
            cat $^ > $@
    """)
    assert project.build() == {"both.txt": "built"}
    assert project.read("both.txt") == "b\na\n"


def test_upgrading_a_package_of_the_recipes_python_rebuilds_and_why_names_it(project, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "numpy-1.26.0.dist-info").mkdir()
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    project.batchfile("""
        out.txt: in.txt
            python3 -c "import sys; print(sys.prefix)" > $@
    """)
    project.write("in.txt", "x\n")
    project.build(env=env)
    assert project.read("out.txt").strip() == str(venv)
    assert project.build(env=env) == {"out.txt": "cached"}
    (site / "numpy-1.26.0.dist-info").rename(site / "numpy-2.0.0.dist-info")
    why = project.bb("why", "out.txt", env=env, check=0).stdout
    assert "numpy 1.26.0 -> 2.0.0" in why
    assert project.build(env=env) == {"out.txt": "built"}
    (site / "numpy-2.0.0.dist-info").rename(site / "numpy-1.26.0.dist-info")
    assert project.build(env=env) == {"out.txt": "cached"}  # the old environment's result is still there


def test_a_declared_requirements_file_keys_instead_of_the_installed_packages(project, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    project.batchfile("""
        settings:
            requirements = requirements.txt
        out.txt:
            echo ok > $@
    """)
    project.write("requirements.txt", "numpy==1.26.0\n")
    project.build(env=env)
    (site / "ipython-8.0.dist-info").mkdir()
    assert project.build(env=env) == {"out.txt": "cached"}
    project.write("requirements.txt", "numpy==2.0.0\n")
    assert project.build(env=env) == {"out.txt": "built"}


def test_a_missing_requirements_file_is_a_clear_batchfile_error(project):
    project.batchfile("""
        settings:
            requirements = requirements.txt
        out.txt:
            echo ok > $@
    """)
    proc = project.bb("build", check=2)
    assert "requirements file 'requirements.txt'" in proc.stderr and "internal error" not in proc.stderr


# ---- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, mounted for the test (the suite runs as root in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.fail("cannot mount a tmpfs to fill (the suite needs root, as in CI)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_store_disk_fails_the_target_clearly_and_records_nothing(project, small_disk):
    project.batchfile("""
        small.txt:
            echo small > $@
        big.bin: small.txt
            head -c 3000000 /dev/zero > $@
    """)
    store = str(small_disk / "store")
    proc = project.bb("build", "big.bin", "--store", store, check=1)
    assert "no space left" in proc.stderr and "internal error" not in proc.stderr
    assert not project.exists("big.bin")
    assert project.read("small.txt") == "small\n"
    # with room, the same build finishes, and the small target was kept
    report = project.build("big.bin")
    assert statuses(report, "built") == {"small.txt", "big.bin"}  # a new (default) store
    assert os.path.getsize(project.root / "big.bin") == 3000000


def test_permissions_of_stored_blobs_are_read_only(project):
    # large enough to be a file in cas/ (small blobs live in store.db)
    project.batchfile("""
        out.txt:
            head -c 100000 /dev/zero > $@
    """)
    project.build()
    blobs = [p for p in (project.root / ".bb/cas").rglob("*") if p.is_file()]
    assert blobs and all(not (p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) for p in blobs)


def test_two_checkouts_sharing_a_store_do_not_run_the_same_action_at_once(tmp_path):
    from conftest import BB_CMD, Project

    runs = tmp_path / "runs.log"
    store = tmp_path / "store"
    projects = []
    for name in ("alice", "bob"):
        p = Project(tmp_path / name)
        p.root.mkdir()
        p.batchfile(f"""
            out.txt:
                sleep 1.5; echo ran >> {runs}; echo result > $@
        """)
        projects.append(p)
    env = {**os.environ, "BB_STORE": str(store)}
    first = subprocess.Popen(BB_CMD + ["build"], cwd=projects[0].root, env=env, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.time() + 10
    while not (store / "claims").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(BB_CMD + ["build", "-v"], cwd=projects[1].root, env=env, capture_output=True, text=True, timeout=60)
    assert first.wait(timeout=60) == 0 and second.returncode == 0, second.stderr
    assert runs.read_text() == "ran\n"  # once, for both checkouts
    assert projects[1].read("out.txt") == "result\n"
    assert "built it meanwhile" in second.stderr


def test_no_intermediates_brings_home_only_what_was_asked_and_updates_what_is_there(project):
    project.batchfile(PIPELINE)
    project.write("data.csv", "1,2\n")
    project.build()
    project.bb("clean", check=0)
    project.build("--no-intermediates")
    assert project.exists("report.txt") and not project.exists("metrics/knn.json")
    project.build("MODEL=tree")  # the workspace now holds tree's intermediate
    project.build("--no-intermediates")  # back to knn: the tree intermediate is not left stale
    assert not project.exists("metrics/knn.json") or project.read("metrics/knn.json") == "knn\n1,2\n"
    assert project.read("report.txt") == "knn\n1,2\n"
    assert set(status(project).values()) <= {"ok", "missing"}
