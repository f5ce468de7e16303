"""Notebook recipes: a jupytext .py (or .ipynb) run with parameters from the
Batchfile, producing the executed notebook and an offline HTML report, keyed
by its cells."""
from __future__ import annotations

import json
import re

NOTEBOOK = '''# %% [markdown]
# # Evaluation of one model

# %% tags=["parameters"]
model = "knn"
k = 3

# %%
rows = open("data.csv").read().split()
print(f"model={model} k={k} rows={len(rows)} k2={k * 2}")
'''

RULES = """
    @for m in [knn, tree]
    @notebook notebooks/eval.py model=$(m) k=5
    reports/$(m).html reports/$(m).ipynb: data.csv

    @default
    all: reports/knn.html reports/tree.html
"""


def make(project):
    project.write("data.csv", "a\nb\nc\n")
    project.write("notebooks/eval.py", NOTEBOOK)
    project.batchfile(RULES)


def test_a_notebook_runs_with_its_parameters_into_an_offline_report(project):
    make(project)
    report = project.build(timeout=300)
    assert set(report.values()) == {"built"}, project.last_proc.stderr
    html = project.read("reports/tree.html")
    assert "model=tree k=5 rows=3 k2=10" in html  # parameters typed and injected, output rendered
    assert not re.search(r"<script[^>]+src=\"https?://", html) and "cdnjs" not in html  # opens offline
    executed = json.loads(project.read("reports/knn.ipynb"))
    tags = [c.get("metadata", {}).get("tags", []) for c in executed["cells"]]
    assert ["injected-parameters"] in tags
    assert set(project.build().values()) == {"cached"}


def test_outputs_metadata_and_format_never_key_a_notebook_but_cells_do(project):
    import jupytext
    import nbformat

    from buildsys.recipes.notebook import canonical

    # the same cells as an .ipynb with stored outputs and execution counts: the same key material
    nb = jupytext.reads(NOTEBOOK, fmt="py:percent")
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="stale\n")]
    nb.cells[2].execution_count = 7
    project.write("as.ipynb", nbformat.writes(nb))
    project.write("as.py", NOTEBOOK)
    project.write("light.py", jupytext.writes(nb, fmt="py:light"))
    assert canonical(str(project.root / "as.ipynb")) == canonical(str(project.root / "as.py")) == canonical(str(project.root / "light.py"))
    # end to end: a metadata-only edit rebuilds nothing; a code edit rebuilds
    make(project)
    project.build(timeout=300)
    header = "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n#     name: python3\n# ---\n\n"
    project.write("notebooks/eval.py", header + NOTEBOOK)
    assert set(project.build().values()) == {"cached"}
    project.write("notebooks/eval.py", NOTEBOOK.replace("k2={k * 2}", "k3={k * 3}"))
    report = project.build(timeout=300)
    assert report["reports/knn.html"] == "built"
    assert "k3=15" in project.read("reports/knn.html")


def test_a_failing_cell_fails_the_target_with_its_cell_and_line(project):
    make(project)
    project.write("notebooks/eval.py", NOTEBOOK + "\n# %%\nx = 1\nraise ValueError('bad data')\n")
    proc = project.bb("build", "reports/knn.html", check=1, timeout=300)
    assert "code cell 3 failed, line 2: raise ValueError('bad data'): ValueError: bad data" in proc.stderr
    assert not project.exists("reports/knn.html")


def test_notebook_rules_are_checked(project):
    project.write("notebooks/eval.py", NOTEBOOK)
    project.batchfile("""
        @notebook notebooks/eval.py
        reports/knn.ipynb:
    """)
    proc = project.bb("build", check=2)
    assert "declares no .html output" in proc.stderr
    project.batchfile("""
        @notebook notebooks/eval.py model
        reports/knn.html:
    """)
    proc = project.bb("build", check=2)
    assert "'model' is not a parameter" in proc.stderr
