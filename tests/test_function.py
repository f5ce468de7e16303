"""Python function recipes: @python MODULE:FUNCTION, called with the target's
inputs, outputs and parameters; keyed by its module and what it imports."""
from __future__ import annotations


def make(project):
    project.write("data/raw.csv", "a,b\n1,2\n")
    project.write("src/scaling.py", "FACTOR = 10\n")
    project.write("src/unrelated.py", "X = 1\n")
    project.write("src/prep.py", (
        "from scaling import FACTOR\n"
        "def scale(inputs, outputs, column, offset=0):\n"
        "    rows = open(inputs[0]).read().split()\n"
        "    with open(outputs[0], 'w') as f:\n"
        "        f.write(f'{column}: {FACTOR * (len(rows) + offset)} ({type(offset).__name__})\\n')\n"
    ))
    project.batchfile("""
        @for c in [a, b]
        @python prep:scale column=$(c) offset=2
        out/$(c).txt: data/raw.csv
    """)


def test_a_function_is_called_with_inputs_outputs_and_typed_parameters(project):
    make(project)
    assert project.build("out/a.txt", "out/b.txt") == {"out/a.txt": "built", "out/b.txt": "built"}
    assert project.read("out/b.txt") == "b: 40 (int)\n"
    assert project.build("--sandbox", "-B", "out/a.txt") == {"out/a.txt": "built"}  # its module and helper travel with it


def test_editing_a_helper_the_function_imports_rebuilds_it_and_an_unrelated_module_does_not(project):
    make(project)
    project.build("out/a.txt")
    project.write("src/unrelated.py", "X = 2\n")
    assert project.build("out/a.txt") == {"out/a.txt": "cached"}
    project.write("src/scaling.py", "FACTOR = 100\n")
    assert "input changed: src/scaling.py" in project.bb("why", "out/a.txt", check=0).stdout
    assert project.build("out/a.txt") == {"out/a.txt": "built"}
    assert project.read("out/a.txt") == "a: 400 (int)\n"


def test_a_function_rule_is_checked(project):
    project.batchfile("""
        @python nowhere:fit
        out.txt:
    """)
    proc = project.bb("build", check=2)
    assert "no module 'nowhere' in the project" in proc.stderr
    project.batchfile("""
        @python fit
        out.txt:
    """)
    proc = project.bb("build", check=2)
    assert "is not MODULE:FUNCTION" in proc.stderr
