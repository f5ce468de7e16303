"""`bb build --sandbox`: each recipe runs with exactly its declared inputs, as
a remote worker runs it; an undeclared input fails with its name."""
from __future__ import annotations

import json
import subprocess
import sys

import localstore
from conftest import BB_CMD

PIPELINE = """
    out/clean.csv: data/raw.csv src/clean.py
        python3 src/clean.py $< $@
    @default
    all: out/clean.csv listing.txt
    listing.txt: data/
        find data | sort > $@
"""


def write_project(project):
    project.write("data/raw.csv", "a,b\n")
    project.write("data/more/x.csv", "x\n")
    project.write("src/helper.py", "SUFFIX = '!'\n")
    project.write("src/clean.py", "import sys\nsys.path.insert(0, 'src')\nfrom helper import SUFFIX\nopen(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper() + SUFFIX)\n")
    project.batchfile(PIPELINE)


def test_an_undeclared_input_fails_in_the_sandbox_with_its_name(project):
    write_project(project)
    project.write("src/clean.py", "import sys\nsys.path.insert(0, 'src')\nfrom helper import SUFFIX\nopen(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper() + SUFFIX + open('data/lookup.csv').read())\n")
    project.write("data/lookup.csv", "k,v\n")
    proc = project.bb("build", "--sandbox", check=1)
    # the imported helper reached the sandbox by itself; the data file did not
    assert "'data/lookup.csv', which the workspace has but the rule does not declare" in proc.stderr
    # the same Batchfile works outside the sandbox: that is what the sandbox is for
    project.bb("build", check=0)


def test_declared_inputs_build_the_same_bytes_in_the_sandbox(project, tmp_path):
    write_project(project)
    project.batchfile(PIPELINE.replace("src/clean.py\n", "src/clean.py src/helper.py\n", 1))
    report = project.build("--sandbox")
    assert set(report.values()) == {"built"}
    sandboxed = {p: project.read(p) for p in ("out/clean.csv", "listing.txt")}
    assert sandboxed["out/clean.csv"] == "A,B\n!"
    assert sandboxed["listing.txt"] == "data\ndata/more\ndata/more/x.csv\ndata/raw.csv\n"
    # a local build of the same actions finds them in the store: same keys
    assert set(project.build().values()) == {"cached"}
    assert not list((project.root / ".bb" / "sandbox").iterdir())  # scratch folders are removed


def test_the_worker_runs_an_action_from_the_store(project):
    """What a container runs: the action's digest and the store, nothing else."""
    write_project(project)
    project.batchfile(PIPELINE.replace("src/clean.py\n", "src/clean.py src/helper.py\n", 1))
    project.build("--sandbox", "out/clean.csv")
    from buildsys.keys.action import Action

    stored = list(localstore.results(project.root / ".bb").values())
    action = Action.from_json(stored[0]["action"])
    digest = localstore.put_blob(project.root / ".bb", action.to_bytes())
    proc = subprocess.run([sys.executable, "-m", "buildsys.worker", "--store", str(project.root / ".bb"), "--action", digest], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already built" in proc.stdout  # its key is in the store: it runs nothing
    localstore.delete_results(project.root / ".bb")
    proc = subprocess.run([sys.executable, "-m", "buildsys.worker", "--store", str(project.root / ".bb"), "--action", digest], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done" in proc.stdout
    stored = list(localstore.results(project.root / ".bb").values())
    assert stored and stored[0]["key"] == action.key() and stored[0]["provenance"]["executor"] == "container"
    proc = subprocess.run(BB_CMD + ["build", "--json", "out/clean.csv"], cwd=project.root, capture_output=True, text=True)
    assert json.loads(proc.stdout)["targets"][0]["status"] == "cached"


def test_helper_modules_a_script_imports_key_the_target_and_reach_the_sandbox(project):
    write_project(project)
    project.write("src/unrelated.py", "Z = 0\n")
    assert project.build("--sandbox", "out/clean.csv") == {"out/clean.csv": "built"}
    assert project.read("out/clean.csv") == "A,B\n!"
    project.write("src/unrelated.py", "Z = 1\n")
    assert project.build("out/clean.csv") == {"out/clean.csv": "cached"}
    project.write("src/helper.py", "SUFFIX = '?'\n")
    assert "input changed: src/helper.py" in project.bb("why", "out/clean.csv", check=0).stdout
    assert project.build("out/clean.csv") == {"out/clean.csv": "built"}
    assert project.read("out/clean.csv") == "A,B\n?"
