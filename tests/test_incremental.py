"""Builds after a small change: the expanded graph is reused while what made
it is unchanged, and only the targets a changed file reaches run again, with
the same bytes a full build makes. Every other kind of change still takes
the path that sees it."""
from __future__ import annotations

import json
import os
import shutil
import time

from conftest import Project, statuses

PIPELINE = """
    include "rules.bb"
    P = load("params.json")

    @default
    all: out/join.txt out/env.txt

    @for i in [1, 2, 3]
    out/t$(i).txt: src.txt in/$(i).txt
        echo t$(i) >> runs.log
        cat $^ > $@

    out/join.txt: out/t*.txt data/*.txt
        echo join >> runs.log
        echo "lr=$(P.lr)" > $@
        cat $^ >> $@

    @env SEED
    out/env.txt: src.txt
        echo env >> runs.log
        echo "seed=$SEED $(GREETING)" > $@
"""


def make(project):
    project.batchfile(PIPELINE)
    project.write("rules.bb", "GREETING = hi\n")
    project.write("params.json", '{"lr": 0.1}\n')
    project.write("src.txt", "src\n")
    for i in (1, 2, 3):
        project.write(f"in/{i}.txt", f"leaf {i}\n")
    project.write("data/a.txt", "a\n")


def runs(project) -> list[str]:
    text = project.read("runs.log") if project.exists("runs.log") else ""
    (project.root / "runs.log").unlink(missing_ok=True)
    return sorted(text.split())


def settle(project, *args, env=None):
    """Build until a build has left a stamp that trusts every file (files
    younger than the racy window are marked to be looked at again) and the
    graph is cached, then forget which recipes ran."""
    for _ in range(5):
        time.sleep(0.06)
        project.build(*args, env=env)
        stamps = list((project.root / ".bb" / "noop").glob("*"))
        if stamps and b"racy" not in stamps[0].read_bytes() and any((project.root / ".bb" / "graph").glob("*")):
            break
    runs(project)


def outputs(root) -> dict:
    found = {}
    for folder, _, files in os.walk(root / "out"):
        for f in files:
            path = os.path.join(folder, f)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


def full_build_elsewhere(project, tmp_path, env=None) -> dict:
    """The outputs a build from nothing makes of the same sources."""
    other = Project(tmp_path / "fresh")
    shutil.copytree(project.root, other.root, ignore=shutil.ignore_patterns(".bb", "out", "runs.log"))
    other.build(env=env)
    return outputs(other.root)


SEED = {"SEED": "1"}


def test_editing_one_input_reruns_exactly_its_cone(project, tmp_path):
    make(project)
    settle(project, env=SEED)
    project.write("in/2.txt", "leaf 2, edited\n")
    report = project.build(env=SEED)
    assert runs(project) == ["join", "t2"]
    assert statuses(report, "built") == {"out/t2.txt", "out/join.txt"}
    assert statuses(report, "cached") == {"out/t1.txt", "out/t3.txt", "out/env.txt"}
    assert outputs(project.root) == full_build_elsewhere(project, tmp_path, env=SEED)
    # and the next build has nothing to do
    time.sleep(0.06)
    assert statuses(project.build(env=SEED), "built") == set()
    assert runs(project) == []


def test_successive_edits_each_rerun_their_own_cone(project, tmp_path):
    make(project)
    settle(project, env=SEED)
    for i, expected in ((1, ["join", "t1"]), (3, ["join", "t3"]), (1, ["join", "t1"])):
        time.sleep(0.06)
        project.write(f"in/{i}.txt", f"leaf {i} at {time.time()}\n")
        project.build(env=SEED)
        assert runs(project) == expected
    project.write("src.txt", "src 2\n")
    project.build(env=SEED)
    assert runs(project) == ["env", "join", "t1", "t2", "t3"]
    assert outputs(project.root) == full_build_elsewhere(project, tmp_path, env=SEED)


def test_an_edit_with_the_same_bytes_stops_early(project):
    make(project)
    settle(project, env=SEED)
    project.write("in/2.txt", "leaf 2\n")  # rewritten, same content
    report = project.build(env=SEED)
    assert runs(project) == []
    assert statuses(report, "built") == set()


def test_other_changes_take_the_path_that_sees_them(project, tmp_path):
    make(project)
    settle(project, env=SEED)
    # the Batchfile
    project.batchfile(PIPELINE.replace("cat $^ > $@", "cat $^ > $@; echo . >> $@"))
    project.build(env=SEED)
    assert runs(project) == ["join", "t1", "t2", "t3"]
    settle(project, env=SEED)
    # an include
    project.write("rules.bb", "GREETING = hello\n")
    project.build(env=SEED)
    assert runs(project) == ["env"]
    assert project.read("out/env.txt") == "seed=1 hello\n"
    settle(project, env=SEED)
    # a loaded parameter file
    project.write("params.json", '{"lr": 0.2}\n')
    project.build(env=SEED)
    assert runs(project) == ["join"]
    assert project.read("out/join.txt").startswith("lr=0.2\n")
    settle(project, env=SEED)
    # a new file in a globbed folder
    project.write("data/b.txt", "b\n")
    project.build(env=SEED)
    assert runs(project) == ["join"]
    assert project.read("out/join.txt").endswith("a\nb\n")
    settle(project, env=SEED)
    # ... and taken away again: the join of before, from the store
    (project.root / "data/b.txt").unlink()
    assert project.build(env=SEED)["out/join.txt"] == "cached"
    assert runs(project) == []
    assert project.read("out/join.txt").endswith("leaf 3\n.\na\n")
    settle(project, env=SEED)
    # a declared variable
    project.build(env={"SEED": "2"})
    assert runs(project) == ["env"]
    assert project.read("out/env.txt") == "seed=2 hello\n"
    settle(project, env={"SEED": "2"})
    # an override on the command line, then back
    project.build("GREETING=hey", env={"SEED": "2"})
    assert runs(project) == ["env"]
    assert project.read("out/env.txt") == "seed=2 hey\n"
    project.build(env={"SEED": "2"})
    assert runs(project) == []
    assert project.read("out/env.txt") == "seed=2 hello\n"
    assert outputs(project.root) == full_build_elsewhere(project, tmp_path, env={"SEED": "2"})


def test_a_corrupt_or_foreign_graph_cache_is_ignored(project):
    make(project)
    settle(project, env=SEED)
    entries = list((project.root / ".bb" / "graph").glob("*"))
    assert entries, "sanity: the graph is cached"
    for entry in entries:
        entry.write_bytes(b"\x80\x05garbage")
    project.write("in/1.txt", "leaf 1, edited\n")
    project.build(env=SEED)
    assert runs(project) == ["join", "t1"]
    settle(project, env=SEED)
    # a well-formed entry of another Batchfile's graph, under this one's name
    import pickle

    for entry in (project.root / ".bb" / "graph").glob("*"):
        ident, sources, folders, graph = pickle.loads(entry.read_bytes())
        entry.write_bytes(pickle.dumps((ident + ["other"], sources, folders, graph)))
    project.write("in/2.txt", "leaf 2, edited\n")
    project.build(env=SEED)
    assert runs(project) == ["join", "t2"]


def test_an_edited_helper_module_reruns_what_imports_it(project):
    project.batchfile("""
        @default
        all: a.txt b.txt

        a.txt: a.py
            echo a >> runs.log
            python3 a.py > $@

        b.txt: b.txt.in
            echo b >> runs.log
            cp $< $@
    """)
    project.write("a.py", "import helper\nprint(helper.X)\n")
    project.write("helper.py", "X = 1\n")
    project.write("b.txt.in", "b\n")
    settle(project)
    project.write("helper.py", "X = 22\n")  # another size: Python's own .pyc check is by second and size
    project.build()
    assert runs(project) == ["a"]
    assert project.read("a.txt") == "22\n"


def test_a_file_inside_an_input_folder(project):
    project.batchfile("""
        @default
        all: count.txt other.txt

        count.txt: data/
            echo count >> runs.log
            cat data/x/*.txt > $@

        other.txt: data/x/1.txt
            echo other >> runs.log
            cp $< $@
    """)
    project.write("data/x/1.txt", "1\n")
    project.write("data/x/2.txt", "2\n")
    settle(project)
    project.write("data/x/2.txt", "2 edited\n")
    project.build()
    assert runs(project) == ["count"]
    settle(project)
    project.write("data/x/1.txt", "1 edited\n")
    project.build()
    assert runs(project) == ["count", "other"]
    assert project.read("count.txt") == "1 edited\n2 edited\n"


def test_deleted_and_edited_outputs_are_restored_as_a_full_build_does(project):
    make(project)
    settle(project, env=SEED)
    expected = outputs(project.root)
    (project.root / "out/t1.txt").unlink()
    project.build(env=SEED)
    assert runs(project) == []
    assert outputs(project.root) == expected
    settle(project, env=SEED)
    project.write("out/t2.txt", "scribbled by hand\n")
    project.build(env=SEED)
    assert runs(project) == []
    assert outputs(project.root) == expected
    kept = list((project.root / ".bb" / "modified").rglob("t2.txt*"))
    assert [p.read_text() for p in kept] == ["scribbled by hand\n"]


def test_a_failed_build_is_followed_by_a_correct_one(project):
    make(project)
    settle(project, env=SEED)
    project.batchfile(PIPELINE.replace("cat $^ > $@", "cat $^ > $@; ! grep -q bad $@"))
    settle(project, env=SEED)
    project.write("in/2.txt", "bad\n")
    project.build(env=SEED, check=1)
    assert runs(project) == ["t2"]
    project.write("in/2.txt", "good\n")
    project.build(env=SEED)
    assert runs(project) == ["join", "t2"]
    assert json.loads(project.last_proc.stdout)["ok"]


def test_an_index_without_its_result_columns_or_with_damaged_ones(project, tmp_path):
    """An incremental build reads the results of the targets its cone reads
    from columns of the index; an index without them (written by an earlier
    bb) or with columns that are not what bb writes costs a slower read,
    never a wrong build."""
    import sqlite3

    project.batchfile("""
        @for i in [1, 2, 3]
        out/t$(i).txt: in/$(i).txt
            cat $< > $@

        @default
        out/join.txt: out/t1.txt out/t2.txt out/t3.txt
            cat $^ > $@
    """)
    for i in (1, 2, 3):
        project.write(f"in/{i}.txt", f"leaf {i}\n")
    settle(project)

    def sql(statement: str):
        conn = sqlite3.connect(project.root / ".bb" / "index.db", isolation_level=None)
        try:
            return conn.execute(statement).fetchall()
        finally:
            conn.close()

    sql("drop table results")
    project.write("in/2.txt", "leaf 2, edited\n")
    assert statuses(project.build(), "built") == {"out/t2.txt", "out/join.txt"}
    # the incremental build read t1 and t3 from their entries, and gave them columns
    assert {t for t, in sql("select target from results")} == {"out/t1.txt", "out/t2.txt", "out/t3.txt", "out/join.txt"}
    settle(project)
    sql("update results set outputs = 'out/t1.txt' || char(0) || '../../etc/passwd' || char(0) || '9' || char(0) || '0' where target = 'out/t1.txt'")
    sql("update results set outputs = 'out/t2.txt' where target = 'out/t2.txt'")
    project.write("in/3.txt", "leaf 3, edited\n")
    assert statuses(project.build(), "built") == {"out/t3.txt", "out/join.txt"}
    assert project.read("out/join.txt") == "leaf 1\nleaf 2, edited\nleaf 3, edited\n"
    assert outputs(project.root) == full_build_elsewhere(project, tmp_path)
    # Columns that are almost right: a trailing separator, a log that is no
    # digest, an exit code of another type. Each is read from its entry instead.
    settle(project)
    sql("update results set outputs = outputs || char(0) where target = 'out/t1.txt'")
    sql("update results set log = 'not a digest' where target = 'out/t2.txt'")
    sql("update results set exit_code = 'zero' where target = 'out/t3.txt'")
    project.write("in/1.txt", "leaf 1, edited\n")
    assert statuses(project.build(), "built") == {"out/t1.txt", "out/join.txt"}
    assert project.read("out/join.txt") == "leaf 1, edited\nleaf 2, edited\nleaf 3, edited\n"
    assert outputs(project.root) == full_build_elsewhere(project, tmp_path / "again")
    # ...and the rows it did not use were written again from the entries
    [(log, exit_type)] = sql("select r.log, typeof(r.exit_code) from results r where target = 'out/t2.txt'")
    assert log != "not a digest" and exit_type == "integer"
    assert sql("select typeof(exit_code) from results where target = 'out/t3.txt'") == [("integer",)]


def test_index_columns_are_checked_before_they_become_results():
    """The index's columns are read thousands at a time, checked at once:
    anything that is not a digest, a size or a bit is never a result."""
    from buildsys.digest import all_digests
    from buildsys.keys.workspace import _from_row

    d, e = "a" * 64, "b" * 64
    assert all_digests([d, e]) and all_digests([])
    assert not all_digests([d, e.upper()]) and not all_digests([d, d[:-1]]) and not all_digests([d, None]) and not all_digests([d + d])

    def outputs(*fields):
        return "\0".join(fields)

    good = _from_row(d, outputs("a.txt", e, "12", "0", "b/", d, "0", "1"), "", 0, 1.0, 0.5)
    assert [(o.path, o.digest, o.size, o.executable) for o in good.outputs] == [("a.txt", e, 12, False), ("b/", d, 0, True)]
    assert _from_row(d, "", "", 0, 1.0, 0.5).outputs == ()
    for bad in (
        outputs("a.txt", e, "12", "0") + "\0",  # a separator with nothing after it
        outputs("a.txt", e.upper(), "12", "0"),
        outputs("a.txt", e[:-1], "12", "0"),
        outputs("a.txt", e, "-1", "0"),
        outputs("a.txt", e, "1.5", "0"),
        outputs("a.txt", e, "\u0661", "0"),  # a digit, but not an ASCII one
        outputs("a.txt", e, "12", "yes"),
        outputs("a.txt", e, "12"),
        outputs("a.txt", e, "12", "0", "b.txt"),
    ):
        assert _from_row(d, bad, "", 0, 1.0, 0.5) is None, bad


def test_a_batchfile_edited_as_it_was_read_is_trusted_only_by_a_later_run(project):
    """A Batchfile modified within a timestamp tick of being read could be
    edited again with its stat unchanged: neither the graph nor the no-op
    stamp is kept from that read, however long the build then takes; the
    next build reads it again and keeps both."""
    project.batchfile("""
        out.txt: in.txt
            sleep 1
            cp $< $@
    """)
    project.write("in.txt", "in\n")
    soon = time.time() + 0.5  # still ahead when bb reads it, long past when the build ends
    os.utime(project.root / "Batchfile", (soon, soon))
    project.build()
    assert not list((project.root / ".bb" / "noop").glob("*"))
    assert not list((project.root / ".bb" / "graph").glob("*"))
    time.sleep(0.1)
    assert project.build() == {"out.txt": "cached"}
    assert list((project.root / ".bb" / "noop").glob("*"))
    assert list((project.root / ".bb" / "graph").glob("*"))


# The output's mtime is set ahead of the clock, so that it is still "racy"
# (too recent for its stat to be trusted) when the stamp is written, however
# slow the machine.
AHEAD = """
    out.txt: src.txt
        echo run >> runs.log
        cat $< > $@
        python3 -c "import os, sys, time; t = time.time() + float(sys.argv[1]); os.utime('$@', (t, t))" {ahead}
"""


def _stamp_text(project) -> str:
    import marshal

    return "".join(repr(marshal.loads(p.read_bytes())) for p in (project.root / ".bb" / "noop").glob("*"))


def test_an_output_written_just_before_the_stamp_is_checked_by_its_bytes(project):
    """A racy output is signed by its digest: an edit that keeps its size
    and mtime is still seen, and the build's bytes come back."""
    project.batchfile(AHEAD.format(ahead=30))
    project.write("src.txt", "abcdef\n")
    project.build()
    assert runs(project) == ["run"]
    assert "'racy'" in _stamp_text(project)
    out = project.root / "out.txt"
    st = out.stat()
    with open(out, "r+b") as f:  # same size, same inode, the mtime put back
        f.write(b"ABCDEF\n")
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [st.st_size, st.st_mtime_ns, st.st_ino] == [out.stat().st_size, out.stat().st_mtime_ns, out.stat().st_ino]
    project.build()
    assert runs(project) == []
    assert project.read("out.txt") == "abcdef\n"
    assert [p.read_text() for p in (project.root / ".bb" / "modified").rglob("out.txt*")] == ["ABCDEF\n"]


def test_the_first_no_op_after_a_build_trusts_racy_outputs_once_read(project):
    """Right after a build, a no-op reads the racy outputs' bytes instead of
    planning again, and signs them by their stat for the next check."""
    project.batchfile(AHEAD.format(ahead=0.3))
    project.write("src.txt", "abcdef\n")
    project.build()
    assert runs(project) == ["run"]
    assert "'racy'" in _stamp_text(project)
    time.sleep(0.5)
    assert project.build() == {"out.txt": "cached"}
    assert "'racy'" not in _stamp_text(project)
    assert project.build() == {"out.txt": "cached"}
    assert runs(project) == [] and project.read("out.txt") == "abcdef\n"


# ---- what the graph asked of its folders ---------------------------------------

FOLDERS = """
    @default
    final.txt: out/t*.txt data/*.txt
        echo final >> runs.log
        cat $^ > $@

    @for i in [1, 2]
    out/t$(i).txt: in/$(i).txt
        echo t$(i) >> runs.log
        cat $< > $@
"""


def _graph_entry(project):
    """The graph cache's entry, by inode and mtime: rewritten whenever the
    Batchfile is expanded again."""
    (entry,) = (project.root / ".bb" / "graph").glob("*")
    st = entry.stat()
    return st.st_ino, st.st_mtime_ns


def _build_v(project) -> str:
    """`bb build -v`'s account of the path it took."""
    return project.bb("build", "-v", check=0).stderr


def test_a_first_build_leaves_its_graph_and_stamp_usable(project):
    """The first build of a checkout creates .bb/ beside the Batchfile and
    its outputs in the folders the graph watches; neither makes the next
    build parse the Batchfile or plan every target again."""
    project.batchfile(FOLDERS)
    for i in (1, 2):
        project.write(f"in/{i}.txt", f"leaf {i}\n")
    project.write("data/a.txt", "a\n")
    os.utime(project.root / "Batchfile", (time.time() - 10, time.time() - 10))
    project.build()
    assert runs(project) == ["final", "t1", "t2"]
    entry = _graph_entry(project)  # kept by the first build
    time.sleep(0.06)
    assert "planning every target" not in _build_v(project)
    assert runs(project) == []
    project.write("in/1.txt", "leaf 1, edited\n")
    assert "planning every target" not in _build_v(project)
    assert runs(project) == ["final", "t1"]
    assert _graph_entry(project) == entry


def test_files_the_graph_never_asked_about_change_nothing(project):
    """Notes beside the sources, a log in the output folder, a README among
    the data: no glob matches them and no rule names them, so the no-op
    stays a no-op and an edit still reruns only its cone, from the cached
    graph. A file a glob does match is seen, an output's folder included."""
    project.batchfile(FOLDERS)
    for i in (1, 2):
        project.write(f"in/{i}.txt", f"leaf {i}\n")
    project.write("data/a.txt", "a\n")
    settle(project)
    entry = _graph_entry(project)
    project.write("notes.txt", "to do\n")
    project.write("out/scratch.log", "debugging\n")
    project.write("data/README.md", "about the data\n")
    (project.root / "in" / "old").mkdir()
    assert "planning every target" not in _build_v(project)
    assert runs(project) == []
    project.write("in/2.txt", "leaf 2, edited\n")
    project.write("notes2.txt", "more\n")
    assert "planning every target" not in _build_v(project)
    assert runs(project) == ["final", "t2"]
    assert _graph_entry(project) == entry
    settle(project)
    # a new file the data glob matches
    project.write("data/b.txt", "b\n")
    assert "planning every target: what 'data/*.txt' matches changed" in _build_v(project)
    assert runs(project) == ["final"]
    assert project.read("final.txt").endswith("a\nb\n")
    settle(project)
    # a file in the output folder that the outputs' glob matches, made by no rule
    project.write("out/t9.txt", "stray\n")
    assert "planning every target: what 'out/t*.txt' matches changed" in _build_v(project)
    assert runs(project) == ["final"]
    assert project.read("final.txt") == "leaf 1\nleaf 2, edited\nstray\na\nb\n"


def test_a_folder_a_wildcard_folder_reaches_is_watched_once_it_appears(project):
    """`d*/x/*.txt` reads every d*/ and its x/: an empty d2/x/ matches no
    file yet, but the graph must now watch it, so that a file put there
    later is seen."""
    project.batchfile("""
        all.txt: d*/x/*.txt
            cat $^ > $@
    """)
    project.write("d1/x/a.txt", "a\n")
    settle(project)
    (project.root / "d2" / "x").mkdir(parents=True)
    assert project.build() == {"all.txt": "cached"}
    settle(project)
    project.write("d2/x/b.txt", "b\n")
    assert project.build() == {"all.txt": "built"}
    assert project.read("all.txt") == "a\nb\n"


def test_a_pattern_rules_candidate_appearing_changes_the_graph(project):
    """Two pattern rules make %.out; the first one whose input exists wins.
    The graph asked whether x.first exists and was told no: its appearing
    changes which rule makes x.out, past the graph cache and the stamp."""
    project.batchfile("""
        @default
        all: x.out

        %.out: %.first
            echo first > $@

        %.out: %.second
            echo second > $@
    """)
    project.write("x.second", "2\n")
    settle(project)
    assert project.read("x.out") == "second\n"
    project.write("x.first", "1\n")
    assert "planning every target: 'x.first' appeared" in _build_v(project)
    assert project.read("x.out") == "first\n"
    settle(project)
    (project.root / "x.first").unlink()
    assert project.build()["x.out"] == "cached"
    assert project.read("x.out") == "second\n"


def test_a_touched_source_with_its_bytes_unchanged_is_a_no_op(project):
    """A source whose stat changed but whose bytes did not (touched, checked
    out again, saved unchanged) changes no key: the no-op check compares
    its bytes and finds nothing to do; a real edit still reruns its cone."""
    make(project)
    settle(project, env=SEED)
    past = time.time() - 100
    for i in (1, 2, 3):
        os.utime(project.root / f"in/{i}.txt", (past, past))
    proc = project.bb("build", "-v", env=SEED, check=0)
    assert "changed since the last build" not in proc.stderr and "planning every target" not in proc.stderr
    assert runs(project) == []
    project.write("in/2.txt", "leaf 9\n")  # the same size, other bytes
    os.utime(project.root / "in/2.txt", (past, past))
    assert statuses(project.build(env=SEED), "built") == {"out/t2.txt", "out/join.txt"}
    assert runs(project) == ["join", "t2"]
    settle(project, env=SEED)
    os.chmod(project.root / "in/3.txt", 0o755)  # the same bytes, but keys cover the executable bit
    assert statuses(project.build(env=SEED), "built") == {"out/t3.txt"}
    assert runs(project) == ["t3"]


JOIN = """
    @for i in 1..20
    out/t$(i).txt: in/$(i).txt
        echo t$(i) >> runs.log
        cat $< > $@

    parts: out/t*.txt

    gen/: src.txt
        echo gen >> runs.log
        mkdir -p gen && cat src.txt > gen/a.txt && echo b > gen/b.txt

    @default
    out/join.txt: parts gen/a.txt src.txt
        echo join >> runs.log
        cat out/t*.txt gen/a.txt src.txt > $@
"""


def test_a_join_of_many_is_keyed_from_its_verified_earlier_action(project, tmp_path):
    """A target reading many current targets (a join of a fan-out) takes
    their outputs' digests from its earlier action, checked against the key
    the stamp recorded: it gets the key a full plan computes, and a stored
    action that is missing or does not hash to its key is never used."""
    import sqlite3

    project.batchfile(JOIN)
    project.write("src.txt", "src\n")
    for i in range(1, 21):
        project.write(f"in/{i}.txt", f"leaf {i}\n")
    settle(project)

    def full_plan_runs_nothing():
        shutil.rmtree(project.root / ".bb" / "noop")
        assert statuses(project.build(), "built") == set()
        assert runs(project) == []

    def check(edit: str, expected: list[str], folder: str):
        project.write(edit, f"{edit} at {time.time()}\n")
        project.build()
        assert runs(project) == expected
        assert outputs(project.root) == full_build_elsewhere(project, tmp_path / folder)
        full_plan_runs_nothing()
        settle(project)

    check("in/7.txt", ["join", "t7"], "leaf")
    check("src.txt", ["gen", "join"], "source")  # a folder output in the cone, beside the carried ones

    def sql(statement: str, *args):
        conn = sqlite3.connect(project.root / ".bb" / "store.db", isolation_level=None)
        try:
            return conn.execute(statement, args).fetchall()
        finally:
            conn.close()

    def join_key() -> str:
        conn = sqlite3.connect(project.root / ".bb" / "index.db")
        try:
            return conn.execute("select key from last where target = 'out/join.txt'").fetchone()[0]
        finally:
            conn.close()

    # The join's stored action names another digest for t3 (its key is kept)
    key = join_key()
    [(data,)] = sql("select data from results where key = ?", key)
    result = json.loads(data)
    inputs = {path: digest for path, digest, _ in result["action"]["inputs"]}
    for entry in result["action"]["inputs"]:
        if entry[0] == "out/t3.txt":
            entry[1] = inputs["out/t4.txt"]
    sql("update results set data = ? where key = ?", json.dumps(result).encode(), key)
    check("in/9.txt", ["join", "t9"], "forged")
    # ...or is not in the store at all
    sql("delete from results where key = ?", join_key())
    check("in/11.txt", ["join", "t11"], "missing")

