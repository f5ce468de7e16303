"""Property-based fuzzing of the Batchfile front end (parse, then expand
into a graph), in-process, with hypothesis.

Whatever the bytes, reading a Batchfile ends in one of two ways: a graph, or
a BBError that names where (file:line) or what (a target, the Batchfile).
Any other exception is a bug in bb (the user would see "internal error").

Inputs come from (a) random text built from the language's own tokens and
fragments, and (b) byte-level mutations of Batchfile.example and the
quickstart's Batchfile. Runs are derandomized, so CI sees the same cases
every time; the examples that found bugs are pinned with @example."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from buildsys.errors import BBError
from buildsys.lang.graph import build_graph, select
from buildsys.lang.parse import parse_file

REPO = Path(__file__).resolve().parent.parent
SEEDS = [(REPO / "Batchfile.example").read_bytes(), (REPO / "examples/quickstart/Batchfile").read_bytes()]

# The inputs the two seed files name, so that an unmutated seed builds a
# graph and mutations reach the later stages (expansion, globs, patterns).
FILES = [
    "data/raw.csv", "data/iris.csv", "data/wine.csv", "data/weather.csv", "params.txt", "requirements.txt",
    "scripts/clean.py", "scripts/split.py", "scripts/train.py", "scripts/fit.py", "scripts/train_big.py",
    "scripts/plot.py", "scripts/stats.py", "scripts/report.py", "in.txt", "data/a.csv", "data/b c.csv", "notebooks/evaluate.py",
]

TOKENS = [
    # structure
    "\n", "\n", "\n", "\n", "\t", "    ", " ", "  ", ":", "=", "+=", "?=", "[", "]", ",", "@", "#", "# note\n",
    "\\\n", "\r\n", '"', "'", "\\", "%", "$", "$(", ")", "(", "$$", "$@", "$<", "$^", "$*", "$(in)", "$(out)",
    # words and values
    "a", "b.txt", "out.txt", "in.txt", "X", "L", "i", "x", "-", "..", "1..3", "3..1", "0..0", "-2..2",
    "d/", "d/x", "out/", "out/$(i).txt", "out/$(L).txt", "data/*.csv", "data/**/*.csv", "%.o", "out/%.txt",
    "in/%.md", "$(X)", "$(L)", "$(i)", "$(nope)", "[a, b]", "[]", "[a,\n b,\n]", '"q"', '"a b"', "'s'",
    '"\\x00"', '"\\n\\t"', '"\\u00e9"', '"\\ud800"', '"\\N{BULLET}"', '"\\x4"', "s3://bucket/p",
    # statements
    "X = 1\n", "L = [a, b, c]\n", "X += more\n", "L += [d]\n", "X ?= 2\n", "out.txt: in.txt\n",
    "\techo $^ > $@\n", "    cat $< > $@\n", "all: out.txt\n", "@for i in 1..3\n", "@for i in L, j in [p, q]\n",
    "@for i in X\n", "@for", " in ", "@phony\n", "@default\n", "@local\n", "@env A B\n", "@secret S\n",
    "@secret A\n", "@cpus 2\n", "@cpus 0\n", "@memory 8G\n", "@memory 99999999999999999999999999G\n",
    "@timeout 2h\n", "@timeout 1e999\n", "@retries 1\n", "@image img:latest\n", "@gpus ²\n", "@nope\n",
    "include", 'include "inc.bb"\n', 'include "Batchfile"\n', 'include "/dev/zero"\n', 'include "fifo"\n',
    'include "missing.bb"\n', 'include "data"\n', "settings:\n", "    store = .bb\n", "    env = [A]\n",
    "    secrets = [A]\n", "    jobs = 4\n", "    jobs = ٣\n", "    cache = s3://b/p\n", "    region = xx\n",
    "    nope = 1\n", "d/ d/x:\n", "a a/b:\n",
    # records, params files, zipped loops, nested references
    "{", "}", "{a: 1}", "[{a: 1, b: x}, {a: 2}]", "{k: [1, 2], o: {p: q}}", '{"a": "b"}', "R = [{a: 1}, {b: 2}]\n",
    "$(r.a)", "$(R.a)", "$(r.a:-z)", "$(r.)", "$(C_$(i))", "$(C_$(r.a))", "$(a b)", "$((1+2))", "$(x", "C_1 = c\n",
    "@for r in R\n", "@for i, j in zip(L, [p, q])\n", "@for i, j in zip(1..2, L), k in L\n", "zip(", "load(",
    'P = load("p.json")\n', 'P = load("p.yaml")\n', 'P = load("p.toml")\n', 'P = load("bad.json")\n', "$(P.m.name)",
    "$(P.x)", "@for r in P.m\n",
    # characters a file may hold
    "é", "∂", "😀", "\x00", "\u2028", "\x0c", "\x0b", "\x1b", "\ufeff", "\u200b",
]

# Random words stay inside the fuzz folder: no '/' or '.', so that no glob
# can walk the whole filesystem (that is slow, not wrong).
SAFE = st.characters(blacklist_characters="/.*?", blacklist_categories=("Cs",))

line = st.lists(st.sampled_from(TOKENS) | st.text(SAFE, max_size=4), max_size=10).map("".join)
token_text = st.lists(line, min_size=1, max_size=12).map("\n".join)

# Statements shaped like the grammar's, so that most inputs parse and reach
# expansion: loops, lists in paths, patterns, globs, nested outputs...
NAMES = ["X", "L", "i", "S", "A", "é", "_x1", "1x", "x-y", "R", "P"]
WORDS = [
    "out.txt", "in.txt", "a", "a/b", "d/", "d/x", "out/", "out/$(i).txt", "out/$(L).txt", "$(L)", "$(X)",
    "x$(L)y$(L)", "data/*.csv", "data/a.csv", "%.o", "%.c", "out/%.txt", "in/%.md", "out/%/", "$(i)",
    "$@", "$(nope)", "é.txt", "inc.txt", "all", "t$(i)", "../up.txt", "/abs.txt", ".", "./out.txt",
    "out/$(r.a).txt", "$(R.a)", "t$(r.b:-0)", "$(C_$(i))", "$(P.m.name)", "x$(j)",
]
VALUES = ["1", "a b c", "[a, b]", "[a, b, c, d]", "[]", '"q s"', "$(L)", "$(X)$(X)", "1..3", "", "[$(L), x]", '"\\t"',
          "[{a: 1, b: x}, {a: 2}]", "[{a: $(X)}, {a: [1, 2]}]", "{k: 1, o: {p: q}}", 'load("p.json")', 'load("p.yaml")', 'load("p.toml")']
word = st.sampled_from(WORDS) | st.text(SAFE, min_size=1, max_size=3)
words = st.lists(word, max_size=4).map(" ".join)
outputs = st.lists(word, min_size=1, max_size=3).map(" ".join)
assignment = st.builds(
    lambda n, op, v: f"{n} {op} {v}\n", st.sampled_from(NAMES), st.sampled_from(["=", "+=", "?="]), st.sampled_from(VALUES)
)
OVERS = ["1..3", "2..2", "3..1", "L", "X", "$(L)", "[a, b]", "[p, q, r]", "nope", "-1..1", "R", "P.m", "[{a: 1}, {a: 2}]"]
loop = st.one_of(
    st.builds(lambda v, over: f"{v} in {over}", st.sampled_from(["i", "j", "r", "L", "X"]), st.sampled_from(OVERS)),
    st.builds(lambda o1, o2: f"r, j in zip({o1}, {o2})", st.sampled_from(OVERS), st.sampled_from(OVERS)),
)
decorator = st.one_of(
    st.lists(loop, min_size=1, max_size=3).map(lambda ls: "@for " + ", ".join(ls) + "\n"),
    st.sampled_from([t for t in TOKENS if t.startswith("@") and t.endswith("\n")]),
    st.builds(lambda n, a: f"@{n} {a}\n", st.sampled_from(["env", "secret", "image", "cpus", "memory", "timeout"]), words),
)
recipe = st.lists(
    st.builds(lambda ind, body: ind + body + "\n", st.sampled_from(["\t", "    ", "  ", "\t\t"]),
              st.sampled_from(["echo $^ > $@", "cat $< > $@", "echo $(L) $(out) $(in) $*", "echo $$HOME", "echo $(X)", "", "# c",
                               "echo $(r.a) $(r.b:-1) > $@", "echo $(C_$(i)) $(P.x)", "echo $(echo hi)", "echo $$(echo hi)"])),
    max_size=3,
).map("".join)
rule = st.builds(lambda ds, outs, ins, r: "".join(ds) + f"{outs}: {ins}\n{r}", st.lists(decorator, max_size=3), outputs, words, recipe)
settings_block = st.lists(
    st.builds(lambda n, v: f"    {n} = {v}\n", st.sampled_from(["env", "secrets", "jobs", "store", "shell", "cache", "nope"]), st.sampled_from(VALUES)),
    max_size=3,
).map(lambda lines: "settings:\n" + "".join(lines))
# Whole pieces of the parameter syntax that work, so that the cases around
# them reach record loops, zips and params files with a graph to build.
SNIPPETS = [
    "R = [{a: 1, b: x}, {a: 2}]\n@for r in R\nout/$(r.a).txt: in.txt\n\techo $(r.b:-1) > $@\n",
    'P = load("p.json")\n@for r in P.m\npm/$(r.name).txt:\n\techo $(r.k:-0) $(P.x) > $@\n',
    'P = load("p.toml")\n@for r, i in zip(P.m, 1..2)\npt/$(r.name)-$(i).txt:\n\techo $(C_$(i):-c) > $@\n',
    'P = load("p.yaml")\nall-p: pm/$(P.m.name).txt\n',
]
statement = st.one_of(assignment, rule, rule, settings_block, st.sampled_from(['include "inc.bb"\n', "\n", "# comment\n", *SNIPPETS]))


@st.composite
def statements(draw) -> bytes:
    text = "".join(draw(st.lists(statement, min_size=1, max_size=8)))
    for _ in range(draw(st.integers(0, 2))):  # a little noise
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
    return text.encode("utf-8")


# What a mutation writes: mostly the language's tokens and text, sometimes
# raw bytes (most of which only test the UTF-8 check).
piece = st.one_of(
    *[st.sampled_from(TOKENS).map(str.encode)] * 4,
    st.text(SAFE, min_size=1, max_size=4).map(str.encode),
    st.binary(min_size=1, max_size=4),
)


@st.composite
def mutated(draw) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(piece)
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 60))]
        elif op == "replace":
            chunk = draw(piece)
            data[pos : pos + len(chunk)] = chunk
        else:  # copy a piece of the seed elsewhere: repeated rules, split lines
            start = draw(st.integers(0, len(seed)))
            data[pos:pos] = seed[start : start + draw(st.integers(1, 200))]
    return bytes(data)


def _walks_outside(data: bytes) -> bool:
    """A glob from / or from a parent folder: it would scan far outside the fuzz folder."""
    return re.search(rb"(^|[\s:=\[,\"'])(/|\.\./)\S*[*?]", data) is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    for rel in FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{rel}\n")
    (root / "inc.bb").write_text("INCLUDED = yes\ninc.txt: in.txt\n\tcat $< > $@\n")
    (root / "p.json").write_text('{"x": 1, "m": [{"name": "a", "k": 1}, {"name": "b"}]}')
    (root / "p.yaml").write_text("x: 1\nm:\n  - {name: a, k: 1}\n  - name: b\n")
    (root / "p.toml").write_text('x = 1\nm = [{name = "a", k = 1}, {name = "b"}]\n')
    (root / "bad.json").write_text('{"x": [[1]]}')
    os.mkfifo(root / "fifo")
    return root


LOCATED = re.compile(r"[^\s:]+:\d+")  # file:line
BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines breaks at


def check(folder: Path, data: bytes) -> None:
    note(f"Batchfile bytes: {data!r}")
    (folder / "Batchfile").write_bytes(data)
    try:
        graph = build_graph(parse_file(folder / "Batchfile"), {}, str(folder))
        select(graph, [])
    except BBError as err:
        text = err.render()
        assert LOCATED.search(text) or "Batchfile" in text, f"the error names no place:\n{text}"
        # one paragraph: the user's text is quoted with its line breaks escaped
        assert not BREAKS.search(err.message + err.hint), f"a line break inside the message:\n{text!r}"


FUZZ = settings(
    derandomize=True,  # the same cases on every run and machine
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_seeds_build_a_graph(folder):
    for seed in SEEDS:
        (folder / "Batchfile").write_bytes(seed)
        assert build_graph(parse_file(folder / "Batchfile"), {}, str(folder)).targets


@settings(FUZZ, max_examples=1500)
@given(data=statements())
def test_grammar_shaped_files_parse_or_fail_cleanly(folder, data):
    assume(not _walks_outside(data))
    check(folder, data)


@settings(FUZZ, max_examples=600)
@given(text=token_text)
def test_token_soup_parses_or_fails_cleanly(folder, text):
    data = text.encode("utf-8")
    assume(not _walks_outside(data))
    check(folder, data)


@settings(FUZZ, max_examples=1200)
@given(data=mutated())
def test_mutated_examples_parse_or_fail_cleanly(folder, data):
    assume(not _walks_outside(data))
    check(folder, data)


# ---- the one-token rule header against the word-by-word reading ----------------


@pytest.fixture(scope="module")
def word_by_word():
    """The parser without the HEADER shortcut: the grammar's own reference
    for what every header means."""
    from lark import Lark

    from buildsys.lang import parse

    text = parse._grammar().decode()
    assert "\n      | HEADER _NL\n" in text
    return Lark(text.replace("\n      | HEADER _NL\n", "\n"), parser="lalr", lexer="contextual")


def read_with(parser, text: str):
    """What parse_text gives with `parser` in place of bb's: the statements,
    or the error as the user would read it."""
    from buildsys.lang import parse

    saved, parse._parser = parse._lark(), parser
    try:
        return parse.parse_text(text, "Batchfile")
    except BBError as err:
        return err.render()
    finally:
        parse._parser = saved


def same_reading(word_by_word, data: bytes) -> None:
    from buildsys.lang import parse

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert read_with(parse._lark(), text) == read_with(word_by_word, text), f"read differently: {text!r}"


HEADERS = [
    "a b: c d # note\n\tcat $^ > $@\n", "out/$(a:b).txt: in.txt\n", "x: \\\n  y\n\tz\n", "includes: q\n", "include: q\n",
    "settings: x\n", "settings:\n", "include q: r\n", "a:b\n", "a :b\n", "a: b: c\n", "a: b = c\n", "a b:\n", ": a\n",
    "a:\r\n\tb\r\n", "a: b\x0c\n", "  a: b\n", "a: [b]\n", 'include "a" b: c\n', "X = [a,\nb: c\n]\n", "@phony\nall: a b\n",
    "a: $(x y\n", "a: b\\\n", "a: b #c\n  d\n", "é: ∂\n", "a: b\n    c\n# gap\n\n    d\n",
]


@pytest.mark.parametrize("text", HEADERS)
def test_header_shortcut_reads_as_word_by_word(word_by_word, text):
    same_reading(word_by_word, text.encode())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tail", ["=", "[", "\\", ","])
def test_header_that_is_not_one_is_refused_at_once(word_by_word, tail):
    # A header pattern that could cut a long word many ways would backtrack
    # through all of them (2^60 here) before giving the line back to the
    # word-by-word reading: it must not hang.
    same_reading(word_by_word, f"a: {'b' * 60}{tail}\n".encode())
    same_reading(word_by_word, f"{'o' * 60} {'p$(x)' * 30}{tail}: c\n".encode())


@settings(FUZZ, max_examples=800)
@given(data=statements())
def test_header_shortcut_on_grammar_shaped_files(word_by_word, data):
    same_reading(word_by_word, data)


@settings(FUZZ, max_examples=400)
@given(text=token_text)
def test_header_shortcut_on_token_soup(word_by_word, text):
    same_reading(word_by_word, text.encode())


@settings(FUZZ, max_examples=800)
@given(data=mutated())
def test_header_shortcut_on_mutated_examples(word_by_word, data):
    same_reading(word_by_word, data)
