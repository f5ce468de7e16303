"""The files a new user reads first must work: the quickstart and Batchfile.example."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import Project, statuses

REPO = Path(__file__).resolve().parent.parent


def test_quickstart_builds_then_is_a_no_op(tmp_path):
    shutil.copytree(REPO / "examples" / "quickstart", tmp_path / "qs", ignore=shutil.ignore_patterns(".bb", "out", "report.txt"))
    qs = Project(tmp_path / "qs")
    first = qs.build()
    assert statuses(first, "built") == {"out/clean.csv", "out/stats-temp_c.json", "out/stats-rain_mm.json", "report.txt"}
    assert "Weather report" in qs.read("report.txt")
    assert statuses(qs.build(), "built") == set()
    qs.write("params.txt", "threshold=5\n")
    assert statuses(qs.build(), "built") == {"report.txt"}


def test_batchfile_example_parses_and_plans(tmp_path):
    ex = Project(tmp_path / "ex")
    ex.root.mkdir()
    shutil.copy(REPO / "Batchfile.example", ex.root / "Batchfile")
    for path in ["data/raw.csv", "data/iris.csv", "data/wine.csv", "requirements.txt",
                 "scripts/clean.py", "scripts/split.py", "scripts/train.py", "scripts/fit.py",
                 "scripts/train_big.py", "scripts/plot.py"]:
        ex.write(path, "x\n")
    targets = json.loads(ex.bb("list", "--json", check=0).stdout)
    names = {t["target"] for t in targets}
    assert {"results/knn-wine.json", "models/checkpoint", "plots/linear-iris.png", "all", "test"} <= names
    assert len([n for n in names if n.startswith("results/")]) == 8  # 4 models x 2 datasets
    plan = ex.bb("plan", "--no-cache", check=0)
    assert "run     results/linear-iris.json" in plan.stdout
