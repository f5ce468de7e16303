"""The inspection commands: why, plan / build -n, list, graph, clean, cache gc,
--version, --help, the --json report, and start-up cost."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import localstore
from conftest import statuses

PIPELINE = """\
    lr = 0.1
    mid.txt: in.txt
    \techo run >> {counter}
    \tcat in.txt > $@
    \techo step >> $@
    out.txt: mid.txt
    \techo run >> {counter}
    \tcat mid.txt > $@
    \techo lr=$(lr) >> $@
    @default
    all: out.txt
    """


def pipeline(project, tmp_path, build=True):
    """in.txt -> mid.txt -> out.txt; each recipe run appends a line to a counter file outside the project."""
    counter = tmp_path / "runs"
    project.batchfile(PIPELINE.format(counter=counter))
    project.write("in.txt", "a\n")
    if build:
        report = project.build()
        assert statuses(report, "built") == {"mid.txt", "out.txt"}
    return counter


def runs(counter) -> int:
    return counter.read_text().count("run") if counter.exists() else 0


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr


# ---- bb why -----------------------------------------------------------------------------


def test_why_input_changed(project, tmp_path):
    counter = pipeline(project, tmp_path)
    project.write("in.txt", "b\n")
    out = project.bb("why", "mid.txt", check=0).stdout
    assert "mid.txt" in out
    assert re.search(r"input.*changed.*in\.txt|in\.txt.*changed", out), out
    assert runs(counter) == 2, "bb why must not run anything"


def test_why_recipe_line_changed(project, tmp_path):
    counter = pipeline(project, tmp_path)
    project.batchfile(PIPELINE.format(counter=counter).replace("echo step >>", "echo step2 >>"))
    out = project.bb("why", "mid.txt", check=0).stdout
    assert "recipe" in out.lower(), out
    old = [l for l in out.splitlines() if "echo step >> mid.txt" in l]
    new = [l for l in out.splitlines() if "echo step2 >> mid.txt" in l]
    assert old and new, f"the old and the new line must both be shown\n{out}"
    # unchanged lines are not reported as changes
    assert not any(l.strip().startswith(("-", "+")) and "cat in.txt" in l for l in out.splitlines()), out


def test_why_variable_override(project, tmp_path):
    pipeline(project, tmp_path)
    out = project.bb("why", "out.txt", "lr=0.2", check=0).stdout
    assert "out.txt" in out
    assert "echo lr=0.1 >> out.txt" in out and "echo lr=0.2 >> out.txt" in out, out
    # the override is only asked about, not built
    assert "lr=0.1" in project.read("out.txt")


def test_why_upstream_change(project, tmp_path):
    pipeline(project, tmp_path)
    project.write("in.txt", "changed\n")
    out = project.bb("why", "out.txt", check=0).stdout
    assert "out.txt" in out and "mid.txt" in out, out
    assert "in.txt" in out, f"the chain must go down to the changed file\n{out}"
    # the chain reads from the target down to the cause
    assert out.index("out.txt") < out.index("mid.txt") < out.rindex("in.txt"), out


def test_why_up_to_date(project, tmp_path):
    pipeline(project, tmp_path)
    out = project.bb("why", "out.txt", check=0).stdout
    assert "up to date" in out, out
    assert "rebuilt" not in out


def test_why_unknown_target(project, tmp_path):
    pipeline(project, tmp_path)
    proc = project.bb("why", "otu.txt", check=2)
    no_traceback(proc)
    assert re.search(r"did you mean 'out.txt'", proc.stderr, re.I), proc.stderr


# ---- bb plan / bb build -n ---------------------------------------------------------------------


def test_plan_runs_nothing(project, tmp_path):
    counter = pipeline(project, tmp_path, build=False)
    for args in (["plan"], ["build", "-n"], ["-n"]):
        proc = project.bb(*args, check=0)
        no_traceback(proc)
        assert "mid.txt" in proc.stdout and "out.txt" in proc.stdout, proc.stdout
        assert not project.exists("mid.txt") and not project.exists("out.txt")
        assert runs(counter) == 0
        assert not project.exists(".bb/index.db")


def test_plan_says_why(project, tmp_path):
    counter = pipeline(project, tmp_path)
    project.write("in.txt", "b\n")
    mid_before = project.read("mid.txt")
    for args in (["plan"], ["build", "-n"]):
        proc = project.bb(*args, check=0)
        assert "mid.txt" in proc.stdout
        assert "in.txt" in proc.stdout, f"the reason (in.txt changed) must be given\n{proc.stdout}"
        assert project.read("mid.txt") == mid_before
        assert runs(counter) == 2
    # and a plan of an up-to-date build lists nothing to run
    project.write("in.txt", "a\n")
    proc = project.bb("plan", check=0)
    assert "mid.txt" not in proc.stdout and "out.txt" not in proc.stdout, proc.stdout


# ---- bb list ----------------------------------------------------------------------------------

GRID = """\
    MODELS = [lin, tree]
    DATASETS = [iris, wine]
    @for model in MODELS, dataset in DATASETS
    res/$(model)-$(dataset).txt:
    \techo $(model) $(dataset) > $@
    @default
    all: res/$(MODELS)-$(DATASETS).txt
    """
GRID_TARGETS = {"res/lin-iris.txt", "res/lin-wine.txt", "res/tree-iris.txt", "res/tree-wine.txt"}


def test_list_plain(project):
    project.batchfile(GRID)
    out = project.bb("list", check=0).stdout
    lines = [l for l in out.splitlines() if l.strip()]
    for name in GRID_TARGETS | {"all"}:
        assert any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", l) for l in lines), f"{name} missing\n{out}"
    marked = [l for l in lines if re.search(r"default|\*", l)]
    assert len(marked) == 1 and re.search(r"(^|\s)\*?all\b", marked[0]), f"the default target 'all' must be marked\n{out}"


def test_list_json(project):
    project.batchfile(GRID)
    rows = json.loads(project.bb("list", "--json", check=0).stdout)
    names = [r["target"] for r in rows]
    assert set(names) == GRID_TARGETS | {"all"}
    assert len(names) == len(set(names))
    assert [r["target"] for r in rows if r["default"]] == ["all"]
    by_name = {r["target"]: r for r in rows}
    assert set(by_name["all"]["inputs"]) == GRID_TARGETS
    assert by_name["res/lin-wine.txt"]["outputs"] == ["res/lin-wine.txt"]


# ---- bb graph -----------------------------------------------------------------------------------

CHAIN = """\
    a.txt: in.txt
    \tcat in.txt > $@
    b.txt: a.txt
    \tcat a.txt > $@
    c.txt: a.txt b.txt
    \tcat a.txt b.txt > $@
    """


def test_graph_dot(project):
    project.batchfile(CHAIN)
    project.write("in.txt", "x\n")
    out = project.bb("graph", check=0).stdout
    assert re.match(r"\s*(strict\s+)?digraph\b[^{]*\{", out), out
    assert out.rstrip().endswith("}") and out.count("{") == out.count("}"), out
    edges = set(re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', out))
    assert {("a.txt", "b.txt"), ("a.txt", "c.txt"), ("b.txt", "c.txt")} <= edges, out
    assert ("b.txt", "a.txt") not in edges and ("c.txt", "a.txt") not in edges
    assert not project.exists("a.txt"), "graph must not build"


def test_graph_mermaid(project):
    project.batchfile(CHAIN)
    project.write("in.txt", "x\n")
    out = project.bb("graph", "--format", "mermaid", check=0).stdout
    lines = [l.strip() for l in out.splitlines() if l.strip()]
    assert re.match(r"(flowchart|graph)\s+(LR|TD|TB|RL|BT)\b", lines[0]), out
    # node ids -> labels
    labels = {}
    for l in lines[1:]:
        m = re.match(r'^(\w+)\s*[\[\(\{]+"?([^"\]\)\}]+)"?[\]\)\}]+$', l)
        if m:
            labels[m.group(1)] = m.group(2)
    edges = set()
    for l in lines[1:]:
        m = re.match(r"^(\w+)\s*-->\s*(\w+)$", l)
        if m:
            assert m.group(1) in labels and m.group(2) in labels, f"edge to an undeclared node: {l}\n{out}"
            edges.add((labels[m.group(1)], labels[m.group(2)]))
    assert {("a.txt", "b.txt"), ("a.txt", "c.txt"), ("b.txt", "c.txt")} <= edges, out


# ---- bb clean ------------------------------------------------------------------------------------------


def test_clean_then_restore_from_store(project, tmp_path):
    counter = pipeline(project, tmp_path)
    expected = {"mid.txt": project.read("mid.txt"), "out.txt": project.read("out.txt")}
    project.bb("clean", check=0)
    assert not project.exists("mid.txt") and not project.exists("out.txt")
    assert project.exists("in.txt") and project.exists("Batchfile"), "clean removes outputs only"
    report = project.build()  # the default, all: out.txt
    assert report["mid.txt"] == "cached" and report["out.txt"] == "cached", report
    assert runs(counter) == 2, "restoring from the store must not run recipes"
    assert project.read("out.txt") == expected["out.txt"]
    # an intermediate output appears when it is asked for (README: the store)
    assert project.build("mid.txt") == {"mid.txt": "cached"}
    assert project.read("mid.txt") == expected["mid.txt"]
    assert runs(counter) == 2


def test_clean_one_target(project, tmp_path):
    pipeline(project, tmp_path)
    project.bb("clean", "out.txt", check=0)
    assert not project.exists("out.txt")
    assert project.exists("mid.txt")


def test_clean_purge_rebuilds(project, tmp_path):
    counter = pipeline(project, tmp_path)
    project.bb("clean", "--purge", check=0)
    assert not project.exists("mid.txt") and not project.exists("out.txt")
    assert not project.exists(".bb/cas") and not project.exists(".bb/ac")
    for cache in ("parse", "graph", "noop"):
        assert not project.exists(f".bb/{cache}"), cache
    report = project.build()
    assert report["mid.txt"] == "built" and report["out.txt"] == "built", report
    assert runs(counter) == 4


def test_caches_in_the_workspace_stay_bounded(project):
    # Each Batchfile version leaves a parsed copy, and each new command line
    # (here: overrides) a graph and a no-op stamp, megabytes for a large
    # graph: only the newest are kept, and the newest still answer.
    from buildsys.files import CACHE_ENTRIES

    project.batchfile("""
        X ?= 0
        out.txt:
            echo $(X) > $@
        """)
    for i in range(CACHE_ENTRIES + 4):
        project.write("Batchfile", project.read("Batchfile") + f"# edit {i}\n", dedent=False)
        last_started = time.time_ns()
        assert project.build(f"X={i}") == {"out.txt": "built"}
    for cache in ("parse", "graph", "noop"):
        held = os.listdir(project.root / ".bb" / cache)
        assert 0 < len(held) <= CACHE_ENTRIES, (cache, held)

    def entries():
        return {(cache, e.name, e.stat().st_mtime_ns) for cache in ("parse", "graph") for e in os.scandir(project.root / ".bb" / cache)}

    kept = entries()
    for cache in ("parse", "graph"):
        assert any(c == cache and mtime >= last_started for c, _, mtime in kept), f"the last build's {cache} entry is kept"
    assert project.build(f"X={CACHE_ENTRIES + 3}") == {"out.txt": "cached"}
    assert project.read("out.txt") == f"{CACHE_ENTRIES + 3}\n"
    assert entries() == kept, "the last command's parse and graph were kept: nothing parsed or expanded again"


# ---- bb cache gc ------------------------------------------------------------------------------------------


def _age_store(project, days=3):
    assert localstore.age(project.root / ".bb", days * 86400) > 0, "the store should have entries to age"


def _results(project) -> int:
    return len(localstore.results(project.root / ".bb"))


def test_gc_keeps_current_builds(project, tmp_path):
    counter = tmp_path / "runs"
    project.batchfile(f"v = 1\na.txt:\n\techo run >> {counter}\n\techo $(v) > $@\n")
    assert project.build() == {"a.txt": "built"}
    assert project.build("v=2") == {"a.txt": "built"}  # the current (last) build
    assert _results(project) == 2
    _age_store(project)
    proc = project.bb("cache", "gc", "--max-age", "0s", check=0)
    no_traceback(proc)
    assert _results(project) == 1
    # the last build is still in the store, the older one is gone
    os.remove(project.root / "a.txt")
    assert project.build("v=2") == {"a.txt": "cached"}
    assert project.read("a.txt") == "2\n"
    assert runs(counter) == 2
    assert project.build("v=1") == {"a.txt": "built"}
    assert runs(counter) == 3


def test_gc_include_current(project, tmp_path):
    counter = tmp_path / "runs"
    project.batchfile(f"a.txt:\n\techo run >> {counter}\n\techo 1 > $@\n")
    assert project.build() == {"a.txt": "built"}
    _age_store(project)
    project.bb("cache", "gc", "--max-age", "0s", "--include-current", check=0)
    assert _results(project) == 0
    assert localstore.blobs(project.root / ".bb") == {}
    assert project.build() == {"a.txt": "built"}
    assert runs(counter) == 2


def test_gc_dry_run_removes_nothing(project, tmp_path):
    project.batchfile("a.txt:\n\techo 1 > $@\n")
    project.build()
    _age_store(project)
    proc = project.bb("cache", "gc", "--max-age", "0s", "--include-current", "-n", check=0)
    assert "would remove" in proc.stdout + proc.stderr
    assert _results(project) == 1


def test_gc_without_limits_errors(project):
    project.batchfile("a.txt:\n\techo 1 > $@\n")
    project.build()
    proc = project.bb("cache", "gc")
    assert proc.returncode != 0
    no_traceback(proc)
    assert "--max-age" in proc.stderr and "--max-size" in proc.stderr, proc.stderr
    assert _results(project) == 1


def test_gc_bad_age(project):
    project.batchfile("a.txt:\n\techo 1 > $@\n")
    proc = project.bb("cache", "gc", "--max-age", "soon")
    assert proc.returncode != 0
    no_traceback(proc)
    assert "soon" in proc.stderr


# ---- --version, --help ------------------------------------------------------------------------------------


def test_version(project):
    proc = project.bb("--version", check=0)
    assert re.search(r"\d+\.\d+(\.\d+)?", proc.stdout + proc.stderr), proc.stdout


def test_help_lists_commands(project):
    proc = project.bb("--help", check=0)
    for command in ("build", "plan", "why", "list", "graph", "clean", "cache"):
        assert re.search(rf"^\s+{command}\b", proc.stdout, re.M), f"{command} missing from --help\n{proc.stdout}"


def test_usage_errors_name_every_command(project):
    # A run builds only the parsers of the commands it names; its usage
    # errors and help are still the full parser's.
    project.batchfile("out.txt:\n\techo hi > $@\n")
    proc = project.bb("-f", "list", "nosuchcommand", check=2)
    for command in ("build", "plan", "why", "status", "list", "graph", "clean", "cache"):
        assert f"'{command}'" in proc.stderr, proc.stderr
    proc = project.bb("build", "--no-such-option", check=2)
    assert "unrecognized arguments: --no-such-option" in proc.stderr, proc.stderr
    proc = project.bb("build", "--help", check=0)
    assert "--dry-run" in proc.stdout and "--sandbox" in proc.stdout, proc.stdout
    proc = project.bb("cache", "--help", check=0)
    for command in ("push", "pull", "ls", "stats", "verify", "gc"):
        assert re.search(rf"^\s+{command}\b", proc.stdout, re.M), proc.stdout
    assert project.bb("build").returncode == 0
    assert (project.root / "out.txt").read_text() == "hi\n"


# ---- bb build --json ----------------------------------------------------------------------------------------


def test_json_report(project, tmp_path):
    pipeline(project, tmp_path, build=False)
    proc = project.bb("build", "--json", check=0)
    report = json.loads(proc.stdout)  # stdout is pure JSON
    assert report["ok"] is True
    assert "summary" in report
    rows = {t["target"]: t for t in report["targets"]}
    assert {"mid.txt", "out.txt"} <= set(rows)
    for name in ("mid.txt", "out.txt"):
        row = rows[name]
        assert row["status"] == "built"
        assert re.fullmatch(r"[0-9a-f]{64}", row["key"]), row
        assert isinstance(row["duration"], (int, float)) and row["duration"] >= 0
    assert "mid.txt" in proc.stderr, "progress goes to stderr"
    keys = {n: rows[n]["key"] for n in ("mid.txt", "out.txt")}
    proc = project.bb("build", "--json", check=0)
    again = {t["target"]: t for t in json.loads(proc.stdout)["targets"]}
    for name in ("mid.txt", "out.txt"):
        assert again[name]["status"] == "cached"
        assert again[name]["key"] == keys[name]
        assert isinstance(again[name]["duration"], (int, float))


def test_json_report_on_failure(project):
    project.batchfile("ok.txt:\n\techo ok > $@\nbad.txt:\n\tfalse\nall: ok.txt bad.txt\n")
    proc = project.bb("build", "--json", "-k", "all", check=1)
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    rows = {t["target"]: t for t in report["targets"]}
    assert rows["bad.txt"]["status"] == "failed"
    assert rows["ok.txt"]["status"] == "built"
    assert "bad.txt" in proc.stderr


# ---- start-up cost ------------------------------------------------------------------------------------------

HEAVY = ("boto3", "docker", "s3fs", "nbclient", "jupytext", "lark")


def test_help_imports_nothing_heavy(project):
    code = (
        "import buildsys, buildsys.cli.main, sys\n"
        "try:\n"
        "    buildsys.cli.main.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('OK', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "OK" in proc.stderr, proc.stderr


def _imported(stderr: str, by_bb: bool = False) -> set[str]:
    """Top-level module names from `python -X importtime` output; `by_bb`:
    the full names of those imported once bb started (not by site-packages'
    .pth files, which an editable install's finder is one of)."""
    names = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s*\d+\s*\|\s*\d+\s*\|\s*(\S+)", line)
        if m and by_bb:
            names.add(m.group(1))
            if m.group(1) == "buildsys":
                names = {"buildsys"}
        elif m:
            names.add(m.group(1).split(".")[0])
    return names


def test_noop_build_does_not_import_lark(project, tmp_path):
    pipeline(project, tmp_path, build=False)
    env = {k: v for k, v in os.environ.items() if k != "BB_STORE"}
    cmd = [sys.executable, "-X", "importtime", "-m", "buildsys", "build"]
    first = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "lark" in _imported(first.stderr), "sanity: the first build parses the Batchfile with lark"
    again = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    loaded = _imported(again.stderr)
    assert "buildsys" in loaded, "sanity: importtime output was read"
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # Nor what a no-op never uses, which cost it a third of its time: the
    # language, the index and the store, and dataclasses (which imports
    # inspect); not even the first one, which settles the files the build
    # wrote just before its stamp (reading them again, learning their digests).
    steady = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=60)
    assert steady.returncode == 0, steady.stderr[-2000:]
    unused = {"dataclasses", "inspect", "sqlite3", "buildsys.lang.values", "buildsys.lang.model", "buildsys.keys.workspace", "buildsys.store.api"}
    for run in (again, steady):
        assert not _imported(run.stderr, by_bb=True) & unused, sorted(_imported(run.stderr, by_bb=True) & unused)


def test_log_shows_the_last_output(project):
    project.batchfile("""
        out.txt:
            echo "training loss 0.42"
            echo done > $@

        bad.txt:
            echo "about to fail"
            exit 1
    """)
    project.build("out.txt")
    proc = project.bb("log", "out.txt", check=0)
    assert "training loss 0.42" in proc.stdout
    project.bb("build", "bad.txt", check=1)
    proc = project.bb("log", "bad.txt", check=0)
    assert "about to fail" in proc.stdout and "failed" in proc.stderr
    proc = project.bb("log", "nope.txt", check=2)
    assert "no target named" in proc.stderr


def test_a_no_op_answer_is_never_given_for_another_cache_or_executor_setup(project, tmp_path):
    project.batchfile("out.txt:\n\techo x > $@\n")
    project.build()
    assert project.build() == {"out.txt": "cached"}
    # the fast answer of a local build does not stand for a build with a shared cache or --remote
    proc = project.bb("build", "--cache", "s3://nowhere-bucket/x", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, check=1)
    assert "cannot reach" in proc.stderr
    proc = project.bb("build", "--remote", check=2)
    assert "base image" in proc.stderr
