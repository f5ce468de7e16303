"""The core promise, end to end through `bb`: build what is missing, only that."""
from __future__ import annotations

import json
import marshal
import os
import shutil

from conftest import statuses

PIPELINE = """
    @default
    all: out/report.txt

    out/clean.txt: data/raw.txt
        echo cleaning >> runs.log
        tr a-z A-Z < $< > $@

    @for part in [a, b]
    out/part-$(part).txt: out/clean.txt data/$(part).txt
        echo part-$(part) >> runs.log
        cat $^ > $@

    out/report.txt: out/part-a.txt out/part-b.txt
        echo report >> runs.log
        cat $^ > $@
"""


def make_pipeline(project):
    project.batchfile(PIPELINE)
    project.write("data/raw.txt", "hello\n")
    project.write("data/a.txt", "a\n")
    project.write("data/b.txt", "b\n")


def runs(project) -> list[str]:
    return project.read("runs.log").split() if project.exists("runs.log") else []


def test_first_build_builds_all_and_second_builds_none(project):
    make_pipeline(project)
    first = project.build()
    assert statuses(first, "built") == {"out/clean.txt", "out/part-a.txt", "out/part-b.txt", "out/report.txt"}
    assert project.read("out/report.txt") == "HELLO\na\nHELLO\nb\n"
    second = project.build()
    assert statuses(second, "built") == set()
    assert statuses(second, "cached") >= {"out/clean.txt", "out/part-a.txt", "out/part-b.txt", "out/report.txt"}
    assert sorted(runs(project)) == ["cleaning", "part-a", "part-b", "report"]


def test_changing_one_input_rebuilds_exactly_its_dependents(project):
    make_pipeline(project)
    project.build()
    project.write("data/b.txt", "B changed\n")
    report = project.build()
    assert statuses(report, "built") == {"out/part-b.txt", "out/report.txt"}
    assert statuses(report, "cached") >= {"out/clean.txt", "out/part-a.txt"}
    assert project.read("out/report.txt").endswith("B changed\n")


def test_a_change_that_produces_identical_output_stops_there(project):
    make_pipeline(project)
    project.build()
    # "hello" and "HELLO" both clean to "HELLO": clean reruns, nothing after it does.
    project.write("data/raw.txt", "HELLO\n")
    report = project.build()
    assert statuses(report, "built") == {"out/clean.txt"}
    assert statuses(report, "cached") >= {"out/part-a.txt", "out/part-b.txt", "out/report.txt"}
    assert runs(project)[-1] == "cleaning"


def test_recipe_edit_rebuilds_and_reverting_is_a_cache_hit(project):
    make_pipeline(project)
    project.build()
    project.batchfile(PIPELINE.replace("cat $^ > $@\n\n    out/report", "cat $^ > $@\n        echo extra >> $@\n\n    out/report"))
    changed = project.build()
    assert statuses(changed, "built") == {"out/part-a.txt", "out/part-b.txt", "out/report.txt"}
    project.batchfile(PIPELINE)
    reverted = project.build()
    assert statuses(reverted, "built") == set()
    assert project.read("out/report.txt") == "HELLO\na\nHELLO\nb\n"


def test_variable_override_from_command_line(project):
    project.batchfile("""
        lr = 0.1
        model.txt: data.txt
            echo lr=$(lr) > $@
    """)
    project.write("data.txt", "x")
    assert project.build() == {"model.txt": "built"}
    assert project.read("model.txt") == "lr=0.1\n"
    assert project.build("lr=0.2") == {"model.txt": "built"}
    assert project.read("model.txt") == "lr=0.2\n"
    assert project.build("lr=0.1") == {"model.txt": "cached"}
    assert project.read("model.txt") == "lr=0.1\n"


def test_keys_do_not_depend_on_the_checkout_path(project, tmp_path):
    make_pipeline(project)
    project.build()
    keys_here = {t["target"]: t["key"] for t in project.last_report["targets"]}
    elsewhere = tmp_path / "another" / "checkout"
    shutil.copytree(project.root, elsewhere, ignore=shutil.ignore_patterns(".bb", "out", "runs.log"))
    from conftest import Project

    other = Project(elsewhere)
    other.build(env={"HOME": str(tmp_path), "USER": "someone-else"})
    keys_there = {t["target"]: t["key"] for t in other.last_report["targets"]}
    assert keys_here == keys_there


def test_declared_env_enters_the_key_and_undeclared_does_not(project):
    project.batchfile("""
        @env SEED
        out.txt: in.txt
            echo "seed=$SEED other=$OTHER" > $@
    """)
    project.write("in.txt", "x")
    assert project.build(env={"SEED": "1", "OTHER": "a"}) == {"out.txt": "built"}
    assert project.read("out.txt") == "seed=1 other=\n"  # undeclared variables do not reach the recipe
    assert project.build(env={"SEED": "1", "OTHER": "b"}) == {"out.txt": "cached"}
    assert project.build(env={"SEED": "2", "OTHER": "b"}) == {"out.txt": "built"}


def test_directory_outputs_and_inputs_are_trees(project):
    project.batchfile("""
        model/: data.txt
            mkdir -p $@/sub
            cp $< $@/weights.bin
            echo meta > $@/sub/meta.txt

        summary.txt: model/
            ls -R $< | sort > $@
            cat $</sub/meta.txt >> $@

        only-meta.txt: model/sub/meta.txt
            cat $< > $@
    """)
    project.write("data.txt", "w1")
    first = project.build("summary.txt", "only-meta.txt")
    assert statuses(first, "built") == {"model", "summary.txt", "only-meta.txt"}
    # Change a file the tree's recipe does not depend on: nothing to do.
    assert statuses(project.build("summary.txt", "only-meta.txt"), "built") == set()
    # Deleting the output tree restores it from the store without running anything.
    shutil.rmtree(project.root / "model")
    again = project.build("model")
    assert again == {"model": "cached"}
    assert (project.root / "model" / "sub" / "meta.txt").read_text() == "meta\n"
    assert (project.root / "model" / "weights.bin").read_text() == "w1"
    # A changed input changes the tree, and what reads it.
    project.write("data.txt", "w2")
    assert statuses(project.build("summary.txt", "only-meta.txt"), "built") == {"model", "summary.txt"}


def test_input_directory_on_disk_is_keyed_by_content(project):
    project.batchfile("""
        count.txt: shards/
            ls $< | wc -l > $@
    """)
    project.write("shards/1.txt", "a")
    project.write("shards/2.txt", "b")
    assert project.build() == {"count.txt": "built"}
    assert project.build() == {"count.txt": "cached"}
    project.write("shards/3.txt", "c")
    assert project.build() == {"count.txt": "built"}
    assert project.read("count.txt").strip() == "3"


def test_globs_match_files_and_other_targets_outputs(project):
    project.batchfile("""
        all.txt: parts/*.txt
            cat $^ > $@

        parts/made.txt: seed.txt
            cp $< $@
    """)
    project.write("parts/a.txt", "a\n")
    project.write("seed.txt", "made\n")
    report = project.build("all.txt")
    assert statuses(report, "built") == {"all.txt", "parts/made.txt"}
    assert project.read("all.txt") == "a\nmade\n"


def test_grid_expands_to_every_combination(project):
    project.batchfile("""
        MODELS = [m1, m2, m3]
        SETS = [s1, s2]

        @for model in MODELS, set in SETS
        res/$(model)-$(set).txt:
            echo $(model) $(set) > $@

        @default
        all: res/$(MODELS)-$(SETS).txt
    """)
    report = project.build()
    assert len(statuses(report, "built")) == 6
    assert project.read("res/m2-s1.txt") == "m2 s1\n"


def test_range_loops_and_pattern_rules(project):
    project.batchfile("""
        @for i in 1..3
        n/$(i).txt:
            echo $(i) > $@

        %.up: %.txt
            tr 0-9 a-j < $< > $@

        @default
        all: n/1.up n/2.up n/3.up
    """)
    report = project.build()
    assert statuses(report, "built") == {"n/1.txt", "n/2.txt", "n/3.txt", "n/1.up", "n/2.up", "n/3.up"}
    assert project.read("n/3.up") == "d\n"
    # a path only a pattern rule makes can be asked for on the command line
    project.write("x.txt", "42\n")
    assert project.build("x.up") == {"x.up": "built"}


def test_include_splices_another_batchfile(project):
    project.write("rules/more.bb", """
        GREETING = hi
        more.txt:
            echo $(GREETING) > $@
    """)
    project.batchfile("""
        include "rules/more.bb"
        @default
        main.txt: more.txt
            cat $< > $@
    """)
    assert statuses(project.build(), "built") == {"main.txt", "more.txt"}
    assert project.read("main.txt") == "hi\n"


def test_always_make_reruns_everything(project):
    make_pipeline(project)
    project.build()
    report = project.build("-B")
    assert statuses(report, "built") == {"out/clean.txt", "out/part-a.txt", "out/part-b.txt", "out/report.txt"}


def test_editing_a_workspace_output_never_corrupts_the_store(project):
    make_pipeline(project)
    project.build()
    with open(project.root / "out/report.txt", "a") as f:  # in place, same inode
        f.write("scribble\n")
    report = project.build()
    assert report["out/report.txt"] == "cached"
    assert project.read("out/report.txt") == "HELLO\na\nHELLO\nb\n"


def test_outputs_of_cached_targets_are_restored_when_needed(project):
    make_pipeline(project)
    project.build()
    shutil.rmtree(project.root / "out")
    project.write("data/b.txt", "b2\n")
    report = project.build()
    assert statuses(report, "built") == {"out/part-b.txt", "out/report.txt"}
    assert project.read("out/report.txt") == "HELLO\na\nHELLO\nb2\n"


def test_select_targets_by_glob(project):
    make_pipeline(project)
    report = project.build("out/part-*")
    assert statuses(report, "built") == {"out/clean.txt", "out/part-a.txt", "out/part-b.txt"}
    assert not project.exists("out/report.txt")


def test_json_report_shape(project):
    make_pipeline(project)
    proc = project.bb("build", "--json", check=0)
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    for t in data["targets"]:
        assert t["status"] in {"built", "cached", "failed", "skipped"}
        assert isinstance(t["duration"], float)
        if t["target"] != "all":
            assert len(t["key"]) == 64


def test_stat_cache_spares_rehashing(project):
    project.batchfile("""
        out.txt: big.bin
            wc -c < $< > $@
    """)
    project.write("big.bin", "x" * 1000)
    project.build()
    # Entries are only trusted once the file is older than the racy window; age it.
    os.utime(project.root / "big.bin", (1_600_000_000, 1_600_000_000))
    project.build()
    cache = marshal.loads((project.root / ".bb" / "stat-cache").read_bytes())
    entry = cache[str(project.root / "big.bin")]
    assert entry[0] == 1000 and entry[1] == 1_600_000_000 * 10**9
