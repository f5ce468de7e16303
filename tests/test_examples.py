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
                 "scripts/train_big.py", "scripts/plot.py", "notebooks/evaluate.py"]:
        ex.write(path, "x\n")
    targets = json.loads(ex.bb("list", "--json", check=0).stdout)
    names = {t["target"] for t in targets}
    assert {"results/knn-wine.json", "models/checkpoint", "plots/linear-iris.png", "all", "test", "reports/linear.html", "summaries/linear.txt"} <= names
    assert len([n for n in names if n.startswith("results/")]) == 8  # 4 models x 2 datasets
    plan = ex.bb("plan", "--no-cache", check=0)
    assert "run     results/linear-iris.json" in plan.stdout


def test_ml_example_trains_reports_and_reruns_only_what_a_parameter_touches(tmp_path):
    shutil.copytree(REPO / "examples" / "ml", tmp_path / "ml", ignore=shutil.ignore_patterns(".bb", "data", "models", "metrics", "reports", "leaderboard.md"))
    ml = Project(tmp_path / "ml")
    first = ml.build("-j2", timeout=600)
    names = ["knn5", "knn15", "tree3", "tree8", "forest", "logreg"]
    assert statuses(first, "built") >= {f"models/{n}.pkl" for n in names} | {f"reports/{n}.html" for n in names} | {"leaderboard.md"}
    board = ml.read("leaderboard.md").splitlines()
    assert len(board) == 2 + len(names) and board[2].startswith("| 1 |")
    report = ml.read("reports/tree3.html")
    assert "tree3: accuracy" in report and "Confusion matrix" in report
    # one model's hyper-parameter changes: that model (and what reads it) runs again, no other
    params = json.loads(ml.read("params.json"))
    params["models"][2]["depth"] = 4
    ml.write("params.json", json.dumps(params, indent=2))
    assert "param m.depth: '3' -> '4'" in ml.bb("why", "models/tree3.pkl", check=0).stdout
    second = ml.build("-j2", timeout=600)
    assert "models/tree3.pkl" in statuses(second, "built")
    assert statuses(second, "built") <= {"models/tree3.pkl", "reports/tree3.html", "leaderboard.md"}
    assert statuses(ml.build(), "built") == set()
