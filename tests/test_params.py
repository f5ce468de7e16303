"""Parameters: records (per-item values for loops), params files read with
load(), zipped loops, nested references and list values on the command line.

The scenario: several models trained by one rule, each with its own
hyper-parameters. Every end-to-end test drives the real `bb` command; errors
are one paragraph naming file:line, exit 2, never a traceback."""
from __future__ import annotations

import json
import os
import re

import pytest

from buildsys.errors import BatchfileError, UsageError
from buildsys.lang.model import Record
from buildsys.lang.values import from_data, override_value
from buildsys.lang.model import Location


def no_traceback(proc):
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr


def bad(project, text, *args, env=None):
    """Write a Batchfile, run `bb plan` (or args), expect exit 2; return stderr."""
    project.batchfile(text)
    proc = project.bb(*(args or ("plan",)), check=2, env=env)
    no_traceback(proc)
    assert proc.stderr.startswith("bb: error: "), proc.stderr
    assert proc.stderr.count("\n") <= 3, f"one paragraph, please:\n{proc.stderr}"
    return proc.stderr


def built(report: dict) -> set[str]:
    return {name for name, status in report.items() if status == "built"}


ML = """
    MODELS = [
        {name: knn,  k: 5, note: "the baseline"},
        {name: tree, depth: 3},
        {name: svm,  C: 1.0, kernel: rbf},
    ]
    DATASETS = [iris, wine]

    @for m in MODELS
    models/$(m.name).txt: train.sh
        sh train.sh $(m.name) k=$(m.k:-1) depth=$(m.depth:-none) C=$(m.C:-0.5) > $@

    @for m in MODELS, d in DATASETS
    scores/$(m.name)-$(d).txt: models/$(m.name).txt
        cat $< > $@; echo on $(d) >> $@

    @default
    all: scores/$(MODELS.name)-$(DATASETS).txt
"""


@pytest.fixture
def ml(project):
    project.batchfile(ML)
    project.write("train.sh", 'echo "trained $*"\n')
    return project


# ---- 1. records ----------------------------------------------------------------------


def test_each_record_gives_its_loop_item_its_own_values(ml):
    report = ml.build()
    assert built(report) == {
        "models/knn.txt", "models/tree.txt", "models/svm.txt",
        *(f"scores/{m}-{d}.txt" for m in ("knn", "tree", "svm") for d in ("iris", "wine")),
    }
    assert ml.read("models/knn.txt") == "trained knn k=5 depth=none C=0.5\n"
    assert ml.read("models/tree.txt") == "trained tree k=1 depth=3 C=0.5\n"
    assert ml.read("models/svm.txt") == "trained svm k=1 depth=none C=1.0\n"
    assert ml.read("scores/tree-wine.txt") == "trained tree k=1 depth=3 C=0.5\non wine\n"


def test_a_hyper_parameter_change_rebuilds_only_that_models_targets(ml):
    ml.build()
    ml.batchfile(ML.replace("k: 5", "k: 7"))
    assert built(ml.build()) == {"models/knn.txt", "scores/knn-iris.txt", "scores/knn-wine.txt"}
    assert ml.read("models/knn.txt") == "trained knn k=7 depth=none C=0.5\n"
    assert built(ml.build()) == set()
    # back to k=5: the earlier results are still in the store
    ml.batchfile(ML)
    assert built(ml.build()) == set()
    assert ml.read("models/knn.txt") == "trained knn k=5 depth=none C=0.5\n"


def test_a_field_no_rule_reads_rebuilds_nothing(ml):
    ml.build()
    ml.batchfile(ML.replace('"the baseline"', '"the old baseline"'))
    assert built(ml.build()) == set()


def test_why_names_the_changed_field_as_a_parameter(ml):
    ml.build()
    ml.batchfile(ML.replace("kernel: rbf", "kernel: linear").replace("C: 1.0", "C: 2.0"))
    why = ml.bb("why", "models/svm.txt", check=0).stdout
    assert "param m.C: '1.0' -> '2.0'" in why, why
    assert "kernel" not in why, why  # no rule reads it
    # a field that appears (a default gave the value before) is a parameter too
    ml.batchfile(ML.replace("{name: tree, depth: 3}", "{name: tree, depth: 3, k: 2}"))
    why = ml.bb("why", "models/tree.txt", check=0).stdout
    assert "param m.k: None -> '2'" in why, why


def test_a_field_passed_to_a_python_function_is_a_parameter(project):
    project.write("src/fit.py", "def fit(inputs, outputs, k):\n    open(outputs[0], 'w').write(f'k={k}\\n')\n")
    text = "M = [{name: knn, k: 5}]\n@for m in M\n@python fit:fit k=$(m.k)\nout/$(m.name).txt:\n"
    project.batchfile(text)
    project.build()
    assert project.read("out/knn.txt") == "k=5\n"
    project.batchfile(text.replace("k: 5", "k: 6"))
    assert "param m.k: '5' -> '6'" in project.bb("why", "out/knn.txt", check=0).stdout


def test_record_fields_enter_the_key_in_a_stable_order(project):
    # the same records written with their fields in another order: the same keys
    project.batchfile("M = [{a: 1, b: 2}]\n@for m in M\nout.txt:\n\techo $(m.b) $(m.a) > $@\n")
    first = project.build()
    key = project.last_report["targets"][0]["key"]
    project.batchfile("M = [{b: 2, a: 1}]\n@for m in M\nout.txt:\n\techo $(m.b) $(m.a) > $@\n")
    assert built(project.build()) == set()
    assert project.last_report["targets"][0]["key"] == key, first


def test_records_read_across_lines_with_quotes_nesting_and_a_top_level_record(project):
    project.batchfile("""
        OPT = {lr: 0.01, schedule: {warmup: 100}}
        MODELS = [
            {"name": "mlp", layers: [64, 32], act: 'relu'},   # JSON-style keys work too
            {
                name: cnn,
                layers: [8],
                act: "leaky relu",
            },
        ]
        @for m in MODELS
        out/$(m.name).txt:
            echo $(m.name) $(m.layers) "$(m.act)" $(OPT.lr) $(OPT.schedule.warmup) > $@
    """)
    project.build("out/mlp.txt", "out/cnn.txt")
    assert project.read("out/mlp.txt") == "mlp 64 32 relu 0.01 100\n"
    assert project.read("out/cnn.txt") == "cnn 8 leaky relu 0.01 100\n"


def test_missing_field_names_the_record_and_the_field(project):
    err = bad(project, """
        MODELS = [{name: knn, k: 5}, {name: tree, depth: 3}]
        @for m in MODELS
        models/$(m.name).txt:
            echo $(m.k) > $@
    """)
    assert "Batchfile:5" in err, err
    assert "{name: tree, depth: 3}" in err and "no field 'k'" in err and "item 2 of MODELS" in err, err
    assert "$(m.k:-VALUE)" in err, err  # the way out: a default


def test_missing_field_of_a_projection_names_the_item(project):
    err = bad(project, "M = [{name: a}, {nom: b}]\nall: out/$(M.name).txt\n")
    assert "Batchfile:2" in err and "record 2 of M" in err and "{nom: b}" in err and "'name'" in err, err


def test_default_applies_to_missing_and_empty_fields(project):
    project.batchfile("""
        M = [{name: a, k: ""}, {name: b}, {name: c, k: 3}]
        @for m in M
        out/$(m.name).txt:
            echo $(m.k:-1) $(UNSET:-dflt) > $@
        @default
        all: out/$(M.name).txt
    """)
    project.build()
    assert [project.read(f"out/{n}.txt") for n in "abc"] == ["1 dflt\n", "1 dflt\n", "3 dflt\n"]


@pytest.mark.parametrize("text, words", [
    ("M = [{name: a}]\n@for m in M\nout-$(m):\n\techo > $@\n", ["is a record", "$(m.name)"]),
    ("M = [{name: a}]\nall: out-$(M)\n", ["list of records", "$(M.name)"]),
    ("M = [a, b]\n@for m in M\nout-$(m.k):\n\techo > $@\n", ["'m' is 'a', a word, not a record"]),
    ("K = {k: 1}\n@for m in K\nout-$(m):\n\techo > $@\n", ["is a record", "not a list"]),
    ("K = {k: 1}\nK += [x]\n", ["cannot add to a record"]),
    ("M = [{k: 1, k: 2}]\n", ["field 'k' twice"]),
    ('M = [{"a b": 1}]\n', ["not a field name"]),
    ("X = {a,b}.csv\n", ["syntax error", "record", "quote a string"]),
    ("settings:\n    env = [{a: 1}]\nout:\n\ttrue\n", ["setting 'env'", "not a record"]),
    ("@env [{a: 1}]\nout:\n\techo > $@\n", ["@env", "not a record"]),
])
def test_record_misuse_is_a_clear_error(project, text, words):
    err = bad(project, text)
    assert re.search(r"Batchfile:\d+", err), err
    for w in words:
        assert w in err, err


# ---- 2. params files -------------------------------------------------------------------


PARAMS_RULES = """
    PARAMS = load("params.{ext}")
    @for m in PARAMS.models
    models/$(m.name).txt:
        echo $(m.name) lr=$(PARAMS.train.lr) k=$(m.k) > $@
    @default
    all: models/$(PARAMS.models.name).txt
"""

PARAMS_FILES = {
    "json": '{"train": {"lr": 0.1, "epochs": 10}, "models": [{"name": "knn", "k": 5}, {"name": "tree", "k": 1}]}\n',
    "toml": 'models = [{name = "knn", k = 5}, {name = "tree", k = 1}]\n[train]\nlr = 0.1\nepochs = 10\n',
    "yaml": "train:\n  lr: 0.1\n  epochs: 10\nmodels:\n  - {name: knn, k: 5}\n  - name: tree\n    k: 1\n",
}


@pytest.mark.parametrize("ext", ["json", "toml", "yaml"])
def test_load_reads_a_params_file_and_notices_its_edits(project, ext):
    project.batchfile(PARAMS_RULES.replace("{ext}", ext))
    project.write(f"params.{ext}", PARAMS_FILES[ext])
    assert built(project.build()) == {"models/knn.txt", "models/tree.txt"}
    assert project.read("models/knn.txt") == "knn lr=0.1 k=5\n"
    assert built(project.build()) == set()  # the no-op stamp holds
    # an edit of the params file: the parse cache and the no-op stamp see it
    project.write(f"params.{ext}", PARAMS_FILES[ext].replace("5", "6", 1))
    assert built(project.build()) == {"models/knn.txt"}
    assert project.read("models/knn.txt") == "knn lr=0.1 k=6\n"
    why = project.bb("build", "-n", "-v", check=0)
    assert built(project.build()) == set(), why.stderr
    project.write(f"params.{ext}", PARAMS_FILES[ext].replace("5", "6", 1).replace("0.1", "0.2"))
    why = project.bb("why", "models/tree.txt", check=0).stdout
    assert "PARAMS.train.lr" in why and "0.2" in why, why
    assert built(project.build()) == {"models/knn.txt", "models/tree.txt"}


def test_load_is_relative_to_the_batchfile_that_names_it(project):
    project.write("conf/params.json", '{"greeting": "hello"}')
    project.write("conf/rules.bb", 'P = load("params.json")\n')
    project.batchfile('include "conf/rules.bb"\nout.txt:\n\techo $(P.greeting) > $@\n')
    project.build()
    assert project.read("out.txt") == "hello\n"


def test_a_list_of_records_straight_from_a_file(project):
    project.write("models.json", json.dumps([{"name": "a", "k": 1, "on": True, "x": None}, {"name": "b", "k": 2.5, "on": False, "x": 3}]))
    project.batchfile('MODELS = load("models.json")\n@for m in MODELS\nout/$(m.name).txt:\n\techo $(m.k) $(m.on) [$(m.x)] > $@\n@default\nall: out/$(MODELS.name).txt\n')
    project.build()
    assert project.read("out/a.txt") == "1 true []\n"
    assert project.read("out/b.txt") == "2.5 false [3]\n"


@pytest.mark.parametrize("ext, text", [
    ("json", '{"lr": 1.0e-3, "n": 10, "w": 0.10, "on": true}'),
    ("toml", "lr = 1.0e-3\nn = 10\nw = 0.10\non = true\n"),
    ("yaml", "lr: 1.0e-3\nn: 10\nw: 0.10\n'on': true\n"),
])
def test_numbers_keep_the_text_written_in_the_file(project, ext, text):
    project.write(f"p.{ext}", text)
    project.batchfile(f'P = load("p.{ext}")\nout.txt:\n\techo $(P.lr) $(P.n) $(P.w) $(P.on) > $@\n')
    project.build()
    assert project.read("out.txt") == "1.0e-3 10 0.10 true\n"


def test_yaml_without_pyyaml_says_so(project, tmp_path):
    fake = tmp_path / "no-yaml"
    (fake / "yaml").mkdir(parents=True)
    (fake / "yaml" / "__init__.py").write_text("raise ImportError('no yaml here')\n")
    project.write("params.yaml", "a: 1\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    err = bad(project, 'P = load("params.yaml")\nout.txt:\n\techo $(P.a) > $@\n', env=env)
    assert "Batchfile:1" in err and "PyYAML" in err and "JSON or TOML" in err, err


@pytest.mark.parametrize("name, content, words", [
    ("p.json", '{"a": 1,}', ["p.json:1:", "not valid JSON"]),
    ("p.toml", "a = \n", ["p.toml:1:", "not valid TOML"]),
    ("p.yaml", "a: [1\n", ["p.yaml:2:", "not valid YAML"]),
    ("p.json", '{"a": [[1]]}', ["Batchfile:1", "a[0]", "list inside a list"]),
    ("p.json", '{"a": ' * 50 + "1" + "}" * 50, ["Batchfile:1", "nested more than 32 levels"]),
    ("p.yaml", "a: &a [*a]\n", ["Batchfile:1"]),
    ("p.txt", "a", ["Batchfile:1", ".json, .toml, .yaml"]),
    ("missing.json", None, ["Batchfile:1", "no such file"]),
])
def test_bad_params_files_are_clear_errors(project, name, content, words):
    if content is not None:
        project.write(name, content)
    err = bad(project, f'P = load("{name}")\nout.txt:\n\techo > $@\n')
    for w in words:
        assert w in err, err


def test_load_is_only_for_variables(project):
    project.write("p.json", "{}")
    err = bad(project, 'settings:\n    store = load("p.json")\nout.txt:\n\techo > $@\n')
    assert "Batchfile:2" in err and "load()" in err, err


def test_data_conversion():
    where = Location("Batchfile", 1, 1)
    value = from_data({"a": [1, {"b": None}], "t": True, "f": 0.5}, where)
    assert value == Record(a=("1", Record(b="")), t="true", f="0.5")
    assert isinstance(value, Record) and isinstance(value["a"][1], Record)
    with pytest.raises(BatchfileError, match="a list inside a list"):
        from_data({"a": [[1]]}, where)
    with pytest.raises(BatchfileError, match="NUL"):
        from_data(["a\0b"], where)


# ---- 3. zipped loops ----------------------------------------------------------------------


def test_zip_pairs_items_and_combines_with_a_grid(project):
    project.batchfile("""
        MODELS = [{name: knn, k: 5}, {name: tree, k: 1}]
        DATA = [iris, wine]
        @for m, d in zip(MODELS, DATA), s in 1..2
        out/$(m.name)-$(d)-$(s).txt:
            echo $(m.k) > $@
        @for a, b in zip([x, y], 3..4)
        pair-$(a)-$(b).txt:
            echo > $@
    """)
    names = {t["target"] for t in json.loads(project.bb("list", "--json", check=0).stdout)}
    assert names == {
        "out/knn-iris-1.txt", "out/knn-iris-2.txt", "out/tree-wine-1.txt", "out/tree-wine-2.txt",
        "pair-x-3.txt", "pair-y-4.txt",
    }


def test_zip_of_unequal_lists_is_an_error(project):
    err = bad(project, "A = [a, b, c]\nB = [x, y]\n@for a, b in zip(A, B)\nout-$(a)-$(b):\n\techo > $@\n")
    assert "Batchfile:3" in err and "differ in length" in err and "A: 3" in err and "B: 2" in err, err


def test_zip_needs_one_list_per_variable(project):
    err = bad(project, "A = [a]\n@for a, b in zip(A)\nout-$(a):\n\techo > $@\n")
    assert "Batchfile:2" in err and "2 variables for 1 lists" in err, err
    err = bad(project, "A = [a]\n@for a, b in A\nout-$(a):\n\techo > $@\n")
    assert "Batchfile:2" in err and "'zip('" in err, err


# ---- 4. nested references, and never the shell's -------------------------------------------


def test_nested_references_expand_inner_first(project):
    project.batchfile("""
        MODELS = [knn, tree]
        C_knn = 0.5
        C_tree = 2
        SETS_knn = [a, b]
        SETS_tree = c
        @for m in MODELS
        out/$(m).txt: $(C_$(m))-in.txt
            echo C=$(C_$(m)) sets: $(SETS_$(m)) > $@
    """)
    for c in ("0.5", "2"):
        project.write(f"{c}-in.txt", "x\n")
    project.build("out/knn.txt", "out/tree.txt")
    assert project.read("out/knn.txt") == "C=0.5 sets: a b\n"
    assert project.read("out/tree.txt") == "C=2 sets: c\n"
    # bb why names the variable the nested reference reads
    project.batchfile(project.read("Batchfile").replace("C_knn = 0.5", "C_knn = 0.7"))
    project.write("0.7-in.txt", "x\n")
    why = project.bb("why", "out/knn.txt", check=0).stdout
    assert "variable C_knn changed: '0.5' -> '0.7'" in why, why


def test_nested_reference_to_a_record_field_and_a_list_in_a_path(project):
    project.batchfile("""
        M = [{name: knn}, {name: tree}]
        FILES_knn = [a, b]
        FILES_tree = [c]
        @for m in M
        out/$(m.name)/$(FILES_$(m.name)).txt:
            touch $(out)
    """)
    listing = {t["target"]: t["outputs"] for t in json.loads(project.bb("list", "--json", check=0).stdout)}
    assert listing == {"out/knn/a.txt": ["out/knn/a.txt", "out/knn/b.txt"], "out/tree/c.txt": ["out/tree/c.txt"]}


@pytest.mark.parametrize("recipe, shown", [
    ("echo $(C_$(m)) > $@", "C_b"),  # the inner reference works, the outer names nothing
    ("echo $(C_$(nope)) > $@", "nope"),
    ("echo $(nope) > $@", "nope"),
    ("echo $(echo hi) > $@", "$(echo hi)"),
    ("echo $((1 + 2)) > $@", "$((1 + 2)"),
    ("echo $(C_$(m) > $@", "'$(C_$(m)' is not a variable reference"),
])
def test_an_unknown_reference_in_a_recipe_is_an_error_never_the_shells(project, recipe, shown):
    err = bad(project, f"C_a = 1\nM = [a, b]\n@for m in M\nout-$(m):\n\t{recipe}\n")
    assert "Batchfile:5" in err and shown in err, err
    assert not list(project.root.glob("out-*"))


def test_dollar_dollar_is_still_the_shells(project):
    project.batchfile("out.txt:\n\techo $$(echo hi) $$((1 + 2)) > $@\n")
    project.build()
    assert project.read("out.txt") == "hi 3\n"


# ---- 5. values on the command line -------------------------------------------------------------


def test_a_list_on_the_command_line(project):
    project.batchfile("MODELS = [linear]\nX = a\n@for m in MODELS\nout/$(m).txt:\n\techo $(m) $(X) > $@\n@default\nall: out/$(MODELS).txt\n")
    report = project.build("MODELS=[knn,tree]", "X=[literal")
    assert built(report) == {"out/knn.txt", "out/tree.txt"}
    assert project.read("out/knn.txt") == "knn [literal\n"  # X=value stays a string
    report = project.build("MODELS=[ knn, \"x,y\" ]")  # quoted: an item holding a comma
    assert built(report) == {"out/knn.txt", "out/x,y.txt"}  # knn again: X is back to 'a'


def test_a_record_list_and_a_field_on_the_command_line(project):
    project.write("p.json", '{"lr": 0.1, "opt": {"momentum": 0.9}}')
    project.batchfile("""
        P = load("p.json")
        MODELS = [{name: knn, k: 5}]
        @for m in MODELS
        out/$(m.name).txt:
            echo k=$(m.k) lr=$(P.lr) mom=$(P.opt.momentum) > $@
        @default
        all: out/$(MODELS.name).txt
    """)
    assert built(project.build("MODELS=[{name: svm, k: 2}, {name: knn, k: 3}]", "P.opt.momentum=0.5")) == {"out/svm.txt", "out/knn.txt"}
    assert project.read("out/knn.txt") == "k=3 lr=0.1 mom=0.5\n"
    assert built(project.build("MODELS=[{name: svm, k: 2}, {name: knn, k: 3}]", "P.opt.momentum=0.5")) == set()


@pytest.mark.parametrize("word, message", [
    ("MODELS=[knn,", None),  # not closed: a string, as before
    ("MODELS=[knn,]x]", "after the list's closing"),
    ("MODELS=[{name knn}]", "expected ':'"),
    ("MODELS=[[a]]", "a list inside a list"),
    ("P.lr.x=1", "not a record"),
    ("P.nope=1", "no field 'nope'"),
    ("NOPE.x=1", "no variable 'NOPE'"),
])
def test_bad_command_line_values_are_usage_errors(project, word, message):
    project.write("p.json", '{"lr": 0.1}')
    project.batchfile('P = load("p.json")\nMODELS = [a]\n@for m in MODELS\nout-$(m):\n\techo $(P.lr) > $@\n')
    proc = project.bb("plan", word, check=0 if message is None else 2)
    no_traceback(proc)
    if message:
        assert message in proc.stderr, proc.stderr


def test_override_value_parser():
    assert override_value("X", "plain") == "plain"
    assert override_value("X", "[a,b]") == ("a", "b")
    assert override_value("X", "[]") == ()
    assert override_value("X", ' [a, "b c", \'d\'] ') == ("a", "b c", "d")
    assert override_value("X", "[{name: a, k: 5}, {n: [1, 2]}]") == (Record(name="a", k="5"), Record(n=("1", "2")))
    assert override_value("X", '["\\u00e9"]') == ("é",)
    for bad_text in ("[a b]", "[a,,b]", "[{a: 1, a: 2}]", '["\\x00"]', "[{1: a}]"):
        with pytest.raises(UsageError):
            override_value("X", bad_text)


# ---- planning --------------------------------------------------------------------------------


def test_a_glob_over_outputs_sees_every_targets_outputs(project):
    # the shape of bench/gen.py's 100k-target plan: a @for rule, then a join
    # whose glob matches the loop's outputs (none exist on disk yet)
    project.batchfile("@for i in 1..3\nout/t$(i).txt:\n\techo $(i) > $@\n@default\nfinal.txt: out/t*.txt\n\tcat out/t*.txt > $@\n")
    assert built(project.build()) == {"out/t1.txt", "out/t2.txt", "out/t3.txt", "final.txt"}
    assert project.read("final.txt") == "1\n2\n3\n"
