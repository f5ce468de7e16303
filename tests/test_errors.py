"""Bad input gets a clear one-paragraph error, never a Python traceback.

Exit codes: 2 for a bad Batchfile (or usage), 1 for a failed build.
Every test drives the real `bb` command in a fresh project folder."""
from __future__ import annotations

import os
import re

import pytest


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    assert "internal error" not in proc.stderr, proc.stderr


def bad(project, text, *args, code=2):
    """Write a Batchfile, run bb, expect `code` and no traceback; return stderr."""
    project.batchfile(text)
    proc = project.bb(*args, check=code)
    no_traceback(proc)
    assert proc.stderr.strip(), "an error must say something"
    return proc.stderr


# ---- syntax errors ----------------------------------------------------------------


def assert_syntax_error(project, text, *, line, expected):
    """The error names Batchfile:LINE:COL on its first line, says what was
    expected (each of `expected` appears in that sentence), and shows the
    offending source line with a caret under column COL."""
    err = bad(project, text)
    lines = err.splitlines()
    head = lines[0]
    m = re.search(r"Batchfile:(\d+):(\d+)", head)
    assert m, f"the first line must name Batchfile:line:col\n{err}"
    assert int(m.group(1)) == line, f"expected the error on line {line}\n{err}"
    col = int(m.group(2))
    # One paragraph: the sentence is on one line and quotes no raw newline.
    assert "'\n'" not in err, f"the message quotes a raw newline character\n{err}"
    assert re.search(r"\bexpected\b", head, re.I), f"the first line must say what was expected\n{err}"
    for word in expected:
        assert word in head, f"{word!r} should be named as expected\n{err}"
    # The offending line, then a caret under the column.
    source = text.splitlines()[line - 1]
    shown = [i for i, l in enumerate(lines[1:], 1) if l.strip() and l.strip() == source.strip()]
    assert shown, f"the offending line {source!r} is not shown\n{err}"
    i = shown[0]
    assert i + 1 < len(lines), f"no caret line under the source\n{err}"
    src_line, caret_line = lines[i], lines[i + 1]
    assert caret_line.strip() == "^", f"expected a caret line\n{err}"
    assert src_line.rstrip().endswith(source.rstrip()), err
    prefix = len(src_line.rstrip()) - len(source.rstrip())  # the excerpt's own indentation
    assert caret_line.index("^") - prefix == col - 1, f"caret not under column {col}\n{err}"


def test_rule_header_missing_colon(project):
    assert_syntax_error(project, "out.txt in.txt\n\techo hi > $@\n", line=1, expected=["':'"])


def test_unclosed_list_at_end_of_file(project):
    assert_syntax_error(project, "X = [a, b\n", line=1, expected=["']'"])


def test_unclosed_list_before_a_rule(project):
    text = "X = [a, b\nout.txt:\n\techo hi > $@\n"
    err = bad(project, text)
    assert re.search(r"Batchfile:\d+:\d+", err.splitlines()[0]), err
    assert "']'" in err, err


def test_for_without_in(project):
    assert_syntax_error(project, "MODELS = [a, b]\n@for m MODELS\nout-$(m).txt:\n\techo > $@\n", line=2, expected=["'in'"])


@pytest.mark.parametrize("indent", ["\t", "    "], ids=["tab", "spaces"])
def test_stray_indented_line_at_top(project, indent):
    text = f"{indent}echo stray\nout.txt:\n\techo hi > $@\n"
    err = bad(project, text)
    head = err.splitlines()[0]
    assert re.search(r"Batchfile:1:\d+", head), err
    # A user needs to hear that an indented (recipe) line must follow a rule header.
    assert re.search(r"indent|rule header|recipe line", err, re.I), err
    assert "echo stray" in err, err
    assert "'\n'" not in err, f"the message quotes a raw newline character\n{err}"


# ---- unknown names: did you mean ------------------------------------------------------


def test_unknown_variable_did_you_mean(project):
    err = bad(project, "MODELS = [a, b]\nout.txt:\n\techo $(MODLES) > $@\n")
    assert "MODLES" in err
    assert re.search(r"did you mean 'MODELS'", err, re.I), err
    assert "Batchfile:3" in err, err


def test_unknown_attribute_did_you_mean(project):
    err = bad(project, "@cpu 2\nout.txt:\n\techo > $@\n")
    assert "@cpu" in err
    assert re.search(r"did you mean '@cpus'", err, re.I), err
    assert "Batchfile:1" in err, err


def test_unknown_setting_did_you_mean(project):
    err = bad(project, "settings:\n    stor = x\nout.txt:\n\techo > $@\n")
    assert "stor" in err
    assert re.search(r"did you mean 'store'", err, re.I), err
    assert "Batchfile:2" in err, err


def test_unknown_target_on_command_line(project):
    project.batchfile("output.txt:\n\techo > $@\n")
    proc = project.bb("build", "outptu.txt", check=2)
    no_traceback(proc)
    assert "outptu.txt" in proc.stderr
    assert re.search(r"did you mean 'output.txt'", proc.stderr, re.I), proc.stderr
    assert not project.exists("output.txt")


def test_shell_substitution_hint(project):
    err = bad(project, "out.txt:\n\techo $(date) > $@\n")
    assert "date" in err
    assert "$$(date)" in err, err
    assert "Batchfile:2" in err, err


# ---- graph errors ------------------------------------------------------------------------


def _arrows(text):
    return text.replace("\u2192", "->")


def test_two_cycle(project):
    err = _arrows(bad(project, "a: b\n\techo > $@\nb: a\n\techo > $@\n"))
    assert "cycle" in err.lower(), err
    assert re.search(r"\ba -> b -> a\b|\bb -> a -> b\b", err), err


def test_three_cycle(project):
    err = _arrows(bad(project, "a: b\n\techo > $@\nb: c\n\techo > $@\nc: a\n\techo > $@\n"))
    assert "cycle" in err.lower(), err
    assert re.search(r"\ba -> b -> c -> a\b|\bb -> c -> a -> b\b|\bc -> a -> b -> c\b", err), err


def test_two_rules_for_one_output(project):
    err = bad(project, "a.txt:\n\techo 1 > $@\nx.txt:\n\techo > $@\n\na.txt:\n\techo 2 > $@\n")
    assert "a.txt" in err
    assert "Batchfile:1" in err and "Batchfile:6" in err, err


def test_missing_input_names_who_needs_it(project):
    project.batchfile("a.txt: missing.txt\n\techo > $@\nb.txt: missing.txt\n\techo > $@\nall: a.txt b.txt\n")
    proc = project.bb("build", "all", check=2)
    no_traceback(proc)
    assert "missing.txt" in proc.stderr
    assert "'a.txt'" in proc.stderr and "'b.txt'" in proc.stderr, proc.stderr
    assert not project.exists("a.txt") and not project.exists("b.txt")


# ---- failing recipes ------------------------------------------------------------------------


def test_failing_recipe(project, tmp_path):
    counter = tmp_path / "runs"
    project.batchfile(f"""\
        out.txt:
        \techo run >> {counter}
        \techo partial > $@
        \tfor i in $$(seq 1 200); do echo line$$i; done
        \texit 3
        """)
    report = project.build(check=1)
    no_traceback(project.last_proc)
    err = project.last_proc.stderr
    assert report == {"out.txt": "failed"}
    assert "out.txt" in err
    assert re.search(r"\b3\b", err) and "code 3" in err, err
    # the tail of the output, not all 200 lines
    assert "line200" in err and "line199" in err, err
    assert not re.search(r"\bline1\b", err), "the whole output was dumped, not its tail"
    assert not project.exists("out.txt"), "a failed recipe must not leave its partial output"
    assert counter.read_text().count("run") == 1
    # nothing was recorded: a rerun runs the recipe again
    report = project.build(check=1)
    assert report == {"out.txt": "failed"}
    assert counter.read_text().count("run") == 2
    assert not project.exists("out.txt")


def test_failing_recipe_plain_output_exit_code(project):
    project.batchfile("out.txt:\n\techo boom\n\tfalse\n")
    proc = project.bb(check=1)
    no_traceback(proc)
    assert "out.txt" in proc.stderr and "boom" in proc.stderr


def test_recipe_without_its_output(project, tmp_path):
    counter = tmp_path / "runs"
    project.batchfile(f"out.txt:\n\techo run >> {counter}\n\techo hello\n")
    report = project.build(check=1)
    no_traceback(project.last_proc)
    err = project.last_proc.stderr
    assert report == {"out.txt": "failed"}
    assert "out.txt" in err
    assert re.search(r"did not (create|produce|write)|not created|missing", err, re.I), err
    report = project.build(check=1)
    assert report == {"out.txt": "failed"}, "nothing may be recorded for a failed target"
    assert counter.read_text().count("run") == 2


# ---- bad attribute values --------------------------------------------------------------------


@pytest.mark.parametrize("attr, value", [("@memory", "lots"), ("@timeout", "soon"), ("@cpus", "0")])
def test_bad_attribute_values(project, attr, value):
    err = bad(project, f"x.txt:\n\techo > $@\n{attr} {value}\nout.txt:\n\techo > $@\n")
    assert "Batchfile:3" in err, err
    assert attr in err and f"'{value}'" in err, err
    assert not project.exists("out.txt") and not project.exists("x.txt")


# ---- files and folders -------------------------------------------------------------------------


def test_include_missing_file(project):
    err = bad(project, 'include "nope.bb"\nout.txt:\n\techo > $@\n')
    assert "nope.bb" in err
    assert "Batchfile:1" in err


def test_include_of_a_symlink_loop(project):
    os.symlink("loop.bb", project.root / "loop.bb")
    (project.root / "sub").mkdir()
    (project.root / "sub" / "inc.bb").write_text("include ../loop.bb\n")
    err = bad(project, 'include sub/inc.bb\nout.txt:\n\techo > $@\n')
    assert "sub/inc.bb:1" in err and "symlink loop" in err and "loop.bb" in err, err


def test_directory_does_not_exist(project):
    proc = project.bb("-C", "/nonexistent/bb-test-dir")
    assert proc.returncode != 0
    no_traceback(proc)
    assert "/nonexistent/bb-test-dir" in proc.stderr


def test_batchfile_does_not_exist(project):
    proc = project.bb("-f", "missing")
    assert proc.returncode != 0
    no_traceback(proc)
    assert "missing" in proc.stderr


def test_no_batchfile_in_folder(project):
    proc = project.bb()
    assert proc.returncode == 2
    no_traceback(proc)
    assert "Batchfile" in proc.stderr


# ---- timeouts and retries --------------------------------------------------------------------


def test_timeout(project):
    project.batchfile("@timeout 1s\nout.txt:\n\tsleep 30\n\techo done > $@\n")
    report = project.build(check=1)
    no_traceback(project.last_proc)
    assert report == {"out.txt": "failed"}
    assert "timed out" in project.last_proc.stderr, project.last_proc.stderr
    assert "out.txt" in project.last_proc.stderr
    assert not project.exists("out.txt")


def test_retries(project, tmp_path):
    counter = tmp_path / "attempts"
    project.batchfile(f"""\
        @retries 2
        out.txt:
        \tn=$$(cat {counter} 2>/dev/null || echo 0); n=$$((n + 1)); echo $$n > {counter}
        \ttest $$n -ge 3
        \techo ok > $@
        """)
    report = project.build()
    assert report == {"out.txt": "built"}
    assert counter.read_text().strip() == "3"
    assert project.read("out.txt") == "ok\n"


def test_retries_exhausted(project, tmp_path):
    counter = tmp_path / "attempts"
    project.batchfile(f"@retries 1\nout.txt:\n\techo x >> {counter}\n\tfalse\n")
    report = project.build(check=1)
    assert report == {"out.txt": "failed"}
    assert counter.read_text().count("x") == 2
