"""A Batchfile that is hostile or simply mistaken gets a clear error, fast:
binary bytes, files that never end, values and loops that grow without
bound, outputs nested in outputs, file names that are shell code.

Every test drives the real `bb` command: exit 2, a one-paragraph message
naming file:line:col, never a traceback. Nothing here is timed; each case
would take seconds to minutes (or all memory) without its limit."""
from __future__ import annotations

import os
import re

import pytest

from buildsys.errors import BatchfileError


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    assert "internal error" not in proc.stderr, proc.stderr


def bad(project, text, *args, env=None, timeout=60):
    """Write a Batchfile (text or bytes), run `bb plan`, expect exit 2; return stderr."""
    path = project.root / "Batchfile"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    proc = project.bb(*(args or ("plan",)), check=2, env=env, timeout=timeout)
    no_traceback(proc)
    assert proc.stderr.startswith("bb: error: "), proc.stderr
    return proc.stderr


def at(err: str, where: str):
    assert re.search(rf"(^|\s){re.escape(where)}\b", err), f"the error should name {where}\n{err}"


# ---- 1. NUL bytes --------------------------------------------------------------------


def test_nul_byte_in_batchfile_names_line_and_column(project):
    err = bad(project, b"out.txt:\n\techo a\x00b > $@\n")
    at(err, "Batchfile:2:8")
    assert "NUL" in err, err


def test_nul_byte_in_an_included_file(project):
    project.root.joinpath("more.bb").write_bytes(b"X = 1\nY = ab\x00\n")
    err = bad(project, 'include "more.bb"\nout.txt:\n\techo > $@\n')
    at(err, "more.bb:2:7")


def test_nul_escape_in_a_quoted_path(project):
    err = bad(project, 'DATA = "data\\x00.csv"\nout.txt: $(DATA)\n\techo > $@\n')
    at(err, "Batchfile:1:8")
    assert "NUL" in err, err


def test_bytes_that_are_not_utf8(project):
    err = bad(project, b"out.txt:\n\techo \xff\xfe > $@\n")
    at(err, "Batchfile:2:7")
    assert "UTF-8" in err, err


def test_bad_escape_in_a_string(project):
    err = bad(project, 'X = "a\\x4"\nout.txt:\n\techo > $@\n')
    at(err, "Batchfile:1:5")
    assert "escape" in err, err


# ---- 2. what include reads ---------------------------------------------------------------


def _fifo(project):
    path = project.root / "pipe.bb"
    os.mkfifo(path)
    return "pipe.bb"


def _folder(project):
    (project.root / "rules.d").mkdir()
    return "rules.d"


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda p: "/dev/zero", "character device"),
        (lambda p: "/proc/self/mem", "proc"),
        (_fifo, "named pipe"),
        (_folder, "directory"),
    ],
    ids=["dev-zero", "proc-self-mem", "fifo", "directory"],
)
def test_include_reads_only_regular_files(project, make, kind):
    name = make(project)
    err = bad(project, f'X = 1\ninclude "{name}"\nout.txt:\n\techo > $@\n', timeout=30)
    at(err, "Batchfile:2:9")
    assert name in err and kind in err, err
    assert "regular file" in err, err


def test_batchfile_given_with_f_must_be_a_regular_file(project):
    proc = project.bb("-f", "/dev/zero", "plan", check=2, timeout=30)
    no_traceback(proc)
    assert "/dev/zero" in proc.stderr and "regular file" in proc.stderr, proc.stderr


def test_include_of_a_huge_file_is_refused(project):
    with open(project.root / "huge.bb", "wb") as f:
        f.truncate(17 << 20)  # sparse: reading it would still mean 17 MiB
    err = bad(project, 'include "huge.bb"\nout.txt:\n\techo > $@\n')
    at(err, "Batchfile:1:9")
    assert "16 MiB" in err, err


def test_a_line_of_millions_of_words_is_refused_before_parsing(project):
    # 5 MB of words: Lark needed 13 s for this; the check answers at once.
    err = bad(project, "all: " + "w " * 2_500_000 + "\nout.txt:\n\techo > $@\n")
    at(err, "Batchfile:1:4194305")
    assert "line 1 is 5,000,005 characters long" in err, err


# ---- 3. values that grow without bound ------------------------------------------------------


def test_a_doubling_variable_stops_at_the_limit_naming_it(project):
    lines = ["V1 = xx"] + [f"V{i} = $(V{i - 1})$(V{i - 1})" for i in range(2, 42)]
    err = bad(project, "\n".join(lines) + "\nout.txt:\n\techo $(V41) > $@\n")
    at(err, "Batchfile:20:1")
    assert "variable 'V20'" in err and "1 MiB" in err, err


def test_appending_a_variable_to_itself_stops_at_the_limit(project):
    lines = ["V = xxxxxxxx"] + ["V += $(V)"] * 40
    err = bad(project, "\n".join(lines) + "\nout.txt:\n\techo > $@\n")
    assert "variable 'V'" in err and "1 MiB" in err, err
    assert re.search(r"Batchfile:\d+:1\b", err), err


def test_a_recipe_that_expands_beyond_the_limit(project):
    text = "X = " + "x" * 1000 + "\nout.txt:\n\techo " + "$(X)" * 2000 + " > $@\n"
    err = bad(project, text)
    at(err, "Batchfile:3")
    assert "the recipe of 'out.txt'" in err and "1 MiB" in err, err


def test_a_header_word_that_expands_beyond_the_limit(project):
    text = "X = " + "x" * 1000 + "\nout.txt: in/" + "$(X)" * 2000 + "\n\techo > $@\n"
    err = bad(project, text)
    at(err, "Batchfile:2:1")
    assert "1 MiB" in err, err


# ---- 4. loops ---------------------------------------------------------------------------------


def test_a_1000_by_1000_grid_is_refused_before_expanding(project):
    err = bad(project, "@for a in 1..1000, b in 1..1000\nout/$(a)-$(b).txt:\n\techo > $@\n")
    at(err, "Batchfile:1:6")
    assert "1,000,000 targets" in err and "a: 1,000 x b: 1,000" in err, err
    assert "BB_MAX_TARGETS" in err, err


def test_a_range_with_absurd_bounds(project):
    err = bad(project, "@for i in 1..99999999999999999999999\nout/$(i).txt:\n\techo > $@\n")
    at(err, "Batchfile:1:6")
    assert "18 digits" in err, err


def test_list_variables_multiplying_in_one_word(project):
    text = "A = [" + ", ".join(f"a{i}" for i in range(400)) + "]\nB = [" + ", ".join(f"b{i}" for i in range(400)) + "]\n"
    err = bad(project, text + "all: out/$(A)-$(B).txt\n")
    at(err, "Batchfile:3:1")
    assert "160,000 words" in err and "A: 400 x B: 400" in err, err


def test_bb_max_targets_lowers_and_raises_the_limit(project):
    text = "@for a in 1..4, b in [x, y, z]\nout/$(a)-$(b).txt:\n\techo > $@\n"
    err = bad(project, text, env={"BB_MAX_TARGETS": "11"})
    assert "12 targets" in err and "BB_MAX_TARGETS=12" in err, err
    proc = project.bb("list", check=0, env={"BB_MAX_TARGETS": "12"})
    assert "out/4-z.txt" in proc.stdout, proc.stdout


def test_the_total_of_all_rules_is_limited_too(project):
    text = "@for a in 1..6\nout/a$(a).txt:\n\techo > $@\n\n@for b in 1..6\nout/b$(b).txt:\n\techo > $@\n"
    err = bad(project, text, env={"BB_MAX_TARGETS": "10"})
    at(err, "Batchfile:5:6")
    assert "limit of 10 targets" in err, err


def test_all_expansion_together_is_bounded(project):
    # each path is small, but together they outgrow what the allowed targets
    # may use (1 KiB each: here 1,000 KiB for BB_MAX_TARGETS=1000)
    text = "X = " + "x" * 2000 + "\n@for i in 1..900\nout/$(i).txt: in/$(i)-$(X)\n\techo > $@\n"
    err = bad(project, text, env={"BB_MAX_TARGETS": "1000"})
    at(err, "Batchfile:3:1")
    assert "more than 1,000 KiB" in err and "BB_MAX_TARGETS" in err, err


def test_a_bad_bb_max_targets_is_a_usage_error(project):
    project.batchfile("out.txt:\n\techo > $@\n")
    proc = project.bb("plan", check=2, env={"BB_MAX_TARGETS": "lots"})
    no_traceback(proc)
    assert "BB_MAX_TARGETS" in proc.stderr, proc.stderr


# ---- 5. outputs nested in outputs ------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, message",
    [
        ("a", "a/b", "output 'a/b' lies inside output 'a'"),
        ("a/b", "a", "output 'a' would hold output 'a/b'"),
        ("d/", "d/x", "output 'd/x' lies inside output 'd/'"),
        ("d/sub/x.txt", "d/", "output 'd/' would hold output 'd/sub/x.txt'"),
    ],
)
def test_an_output_inside_another_rules_output(project, first, second, message):
    err = bad(project, f"{first}:\n\tmkdir -p $@\n\nx.txt:\n\techo > $@\n\n{second}:\n\techo > $@\n")
    at(err, "Batchfile:7:1")  # the second rule, which names the first
    at(err, "Batchfile:1:1")
    assert message in err, err


def test_nested_outputs_of_one_rule(project):
    err = bad(project, "x.txt:\n\techo > $@\nd/ d/x:\n\tmkdir -p $@\n")
    at(err, "Batchfile:3:1")
    assert "of the same rule" in err, err


def test_nested_outputs_from_a_loop(project):
    err = bad(project, "@for p in [a, a/b]\nout/$(p):\n\techo > $@\n")
    assert "output 'out/a/b' lies inside output 'out/a'" in err, err


def test_a_phony_name_is_not_a_folder(project):
    project.batchfile("@phony\ncheck:\n\techo checking\n\ncheck/result.txt:\n\techo ok > $@\n")
    project.bb("build", "check/result.txt", check=0)
    assert project.read("check/result.txt") == "ok\n"


def test_siblings_in_deep_folders_are_fine(project):
    project.batchfile("@for i in 1..50\nout/a/b/c/$(i).txt:\n\techo $(i) > $@\n\nout/a/b/d.txt:\n\techo d > $@\n")
    project.bb("list", check=0)


# ---- 6. file names from globs reach the shell as words ---------------------------------------------


def test_a_file_name_cannot_inject_shell_code(project):
    project.write("data/a.csv", "a\n")
    project.write("data/a.csv;touch INJECTED;echo .csv", "evil\n")
    project.write("data/with space.csv", "space\n")
    project.batchfile("all.txt: data/*.csv\n\tcat $^ > $@\n\tfor f in $^; do echo \"[$$f]\"; done >> $@\n")
    assert project.build() == {"all.txt": "built"}
    assert not project.exists("INJECTED")
    assert not project.exists("data/INJECTED")
    assert project.read("all.txt") == (
        "a\nevil\nspace\n[data/a.csv]\n[data/a.csv;touch INJECTED;echo .csv]\n[data/with space.csv]\n"
    )


def test_first_input_output_and_stem_are_quoted(project):
    project.write("in/my notes.md", "hello\n")
    project.batchfile("out/%.txt: in/%.md\n\techo $* > $@.stem\n\tcp $< $@\n\tls $(out) > /dev/null\n")
    assert project.build("out/my notes.txt") == {"out/my notes.txt": "built"}
    assert project.read("out/my notes.txt") == "hello\n"
    assert project.read("out/my notes.txt.stem") == "my notes\n"


def test_plain_names_reach_the_recipe_unchanged(project):
    project.write("data/a.csv", "a\n")
    project.write("data/b.csv", "b\n")
    project.batchfile("out/all.txt: data/*.csv\n\techo $^ > $@\n\techo $< $@ >> $@\n\techo $(in) $(out) >> $@\n")
    project.build()
    assert project.read("out/all.txt") == "data/a.csv data/b.csv\ndata/a.csv out/all.txt\ndata/a.csv data/b.csv out/all.txt\n"


def test_a_globbed_file_name_that_is_not_utf8(project):
    project.write("data/a.csv", "a\n")
    with open(os.path.join(os.fsencode(project.root), b"data", b"b\xff.csv"), "w") as f:
        f.write("b\n")
    err = bad(project, "all.txt: data/*.csv\n\tcat $^ > $@\n")
    at(err, "Batchfile:1:1")
    assert "data/b\\xff.csv" in err and "not UTF-8" in err, err


# ---- 7. secrets ----------------------------------------------------------------------------------


def test_secret_attribute_and_setting_parse(project, monkeypatch):
    from buildsys.lang.graph import build_graph
    from buildsys.lang.parse import parse_file

    project.batchfile(
        "settings:\n    env = [LANG_X]\n    secrets = [HF_TOKEN]\n\n"
        "@secret AWS_SECRET_ACCESS_KEY WANDB_API_KEY\n@env SEED\nmodel.pt:\n\techo > $@\n\n"
        "plain.txt:\n\techo > $@\n"
    )
    monkeypatch.chdir(project.root)
    graph = build_graph(parse_file("Batchfile"), {}, str(project.root))
    model = graph.targets["model.pt"].attrs
    assert model.secrets == ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY")
    assert model.env == ("LANG_X", "SEED")
    assert graph.targets["plain.txt"].attrs.secrets == ("HF_TOKEN",)
    assert graph.settings.secrets == ("HF_TOKEN",)
    project.bb("plan", check=0)


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("@env TOKEN\n@secret TOKEN\nout.txt:\n\techo > $@\n", "Batchfile:2:2", "'TOKEN' is both an @env variable and a @secret"),
        ("settings:\n    env = [TOKEN]\n    secrets = [TOKEN]\nout.txt:\n\techo > $@\n", "Batchfile:3:5", "settings 'env' and 'secrets'"),
        ("settings:\n    secrets = [TOKEN]\n@env TOKEN\nout.txt:\n\techo > $@\n", "Batchfile:3:2", "'TOKEN' is both"),
        ("settings:\n    env = TOKEN\n@secret TOKEN\nout.txt:\n\techo > $@\n", "Batchfile:3:2", "'TOKEN' is both"),
        ("@secret 9LIVES\nout.txt:\n\techo > $@\n", "Batchfile:1:2", "'9LIVES' is not an environment variable name"),
        ("@secret [A, B-C]\nout.txt:\n\techo > $@\n", "Batchfile:1:2", "'B-C' is not an environment variable name"),
        ("settings:\n    secrets = A-1\nout.txt:\n\techo > $@\n", "Batchfile:2:5", "'A-1' is not an environment variable name"),
    ],
    ids=["rule-both", "settings-both", "setting-secret-rule-env", "setting-env-rule-secret", "bad-name", "bad-name-in-list", "bad-setting"],
)
def test_secret_errors(project, text, where, what):
    err = bad(project, text)
    at(err, where)
    assert what in err, err


# ---- strings ---------------------------------------------------------------------------------------


def test_line_separators_inside_lines_do_not_shift_recipes():
    # str.splitlines() breaks at \x0c and \u2028 too; Lark counts "\n" only
    from buildsys.lang.parse import parse_text

    first, second = parse_text("a:\n\techo 1\x0c2\u2028 > $@\nb:\n\techo b > $@\n", "Batchfile")
    assert second.recipe == "echo b > $@"
    assert first.recipe == "echo 1\x0c2\u2028 > $@"


def test_control_characters_are_escaped_in_messages(project):
    err = bad(project, 'settings:\n    cache = "s3\\x0c\\u2028"\nout.txt:\n\techo > $@\n')
    at(err, "Batchfile:2:5")
    assert "'s3\\x0c\\u2028'" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_escapes_keep_non_ascii_text(project, monkeypatch):
    from buildsys.lang.parse import parse_text

    [assignment] = parse_text('X = "café\\tß \\u00e9 \\N{GREEK SMALL LETTER ALPHA} \\d"\n', "Batchfile")
    assert assignment.value == "café\tß é α \\d"
    with pytest.raises(BatchfileError, match="bad escape"):
        parse_text('X = "\\ud800"\n', "Batchfile")
