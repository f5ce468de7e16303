"""buildsys.keys.imports: the project-local Python code a recipe runs (the
scripts it starts and what they import), found statically, on real files."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from buildsys.keys import imports
from buildsys.keys.imports import ImportCache, local_imports, scan_recipe, scripts_in_recipe


@pytest.fixture
def proj(tmp_path):
    def write(rel: str, text: str = "", *, data: bytes | None = None, mode: int | None = None):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        else:
            path.write_text(textwrap.dedent(text))
        if mode is not None:
            path.chmod(mode)
        # old enough not to be "racy": what the caches may remember
        old = time.time() - 10
        os.utime(path, (old, old))
        return path

    write.root = str(tmp_path)
    return write


def test_a_helper_imported_by_a_script_is_found(proj):
    proj("src/train.py", "import helper\nfrom helper import fit\n")
    proj("src/helper.py", "def fit(): pass\n")
    assert local_imports(["src/train.py"], proj.root) == ["src/helper.py"]


def test_a_helper_of_a_helper_is_found_and_an_unrelated_module_is_not(proj):
    proj("src/train.py", "import helper\n")
    proj("src/helper.py", "from features import build\n")
    proj("src/features.py", "def build(): pass\n")
    proj("src/unrelated.py", "import helper\n")
    proj("src/report.py", "import unrelated\n")
    assert local_imports(["src/train.py"], proj.root) == ["src/features.py", "src/helper.py"]


def test_imports_inside_functions_try_and_type_checking_count(proj):
    proj(
        "train.py",
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import typed_helper
        try:
            import fast_helper
        except ImportError:
            import slow_helper
        def main():
            import lazy_helper
        """,
    )
    for name in ("typed_helper", "fast_helper", "slow_helper", "lazy_helper"):
        proj(f"{name}.py")
    assert local_imports(["train.py"], proj.root) == ["fast_helper.py", "lazy_helper.py", "slow_helper.py", "typed_helper.py"]


def test_relative_imports_in_a_package_bring_the_package_inits(proj):
    proj("src/mlpkg/__init__.py", "")
    proj("src/mlpkg/models/__init__.py", "from .linear import Linear\n")
    proj("src/mlpkg/models/linear.py", "from ..utils import seed\nfrom . import layers\n")
    proj("src/mlpkg/models/layers.py")
    proj("src/mlpkg/utils.py")
    proj("src/mlpkg/unused.py")
    proj("scripts/train.py", "from mlpkg.models import Linear\n")
    assert local_imports(["scripts/train.py"], proj.root) == [
        "src/mlpkg/__init__.py",
        "src/mlpkg/models/__init__.py",
        "src/mlpkg/models/layers.py",
        "src/mlpkg/models/linear.py",
        "src/mlpkg/utils.py",
    ]


def test_from_package_import_name_takes_a_submodule_when_one_exists(proj):
    proj("pkg/__init__.py", "")
    proj("pkg/a.py")
    proj("train.py", "from pkg import a, not_a_module\nimport pkg.b.c\n")
    proj("pkg/b/c.py")  # pkg.b is a namespace package inside pkg
    assert local_imports(["train.py"], proj.root) == ["pkg/__init__.py", "pkg/a.py", "pkg/b/c.py"]


def test_python_dash_m_runs_the_module_and_its_packages(proj):
    proj("pkg/__init__.py", "")
    proj("pkg/mod.py", "from . import helper\n")
    proj("pkg/helper.py")
    proj("pkg/app/__init__.py")
    proj("pkg/app/__main__.py", "import pkg.helper\n")
    scripts = scripts_in_recipe("python -m pkg.mod --epochs 3 > out.txt", proj.root)
    assert scripts == ["pkg/__init__.py", "pkg/mod.py"]
    assert local_imports(scripts, proj.root) == ["pkg/helper.py"]
    assert scripts_in_recipe("python3 -u -m pkg.app", proj.root) == ["pkg/__init__.py", "pkg/app/__init__.py", "pkg/app/__main__.py"]
    assert scripts_in_recipe("python -mpkg.mod", proj.root) == ["pkg/__init__.py", "pkg/mod.py"]


def test_a_local_module_shadowing_the_standard_library_is_local(proj):
    # Python puts the script's folder first on sys.path: its json.py wins over the stdlib's
    proj("scripts/run.py", "import json\nimport os\n")
    proj("scripts/json.py", "")
    assert local_imports(["scripts/run.py"], proj.root) == ["scripts/json.py"]


def test_the_standard_library_and_site_packages_never_appear(proj):
    proj("train.py", "import json, os.path, sys\nimport pytest\nfrom collections import OrderedDict\nimport numpy as np\nfrom blake3 import blake3\n")
    assert local_imports(["train.py"], proj.root) == []
    assert pytest.__file__ and not pytest.__file__.startswith(proj.root)


def test_a_cycle_terminates(proj):
    proj("main.py", "import a\n")
    proj("a.py", "import b\n")
    proj("b.py", "import a\n")
    assert local_imports(["main.py"], proj.root) == ["a.py", "b.py"]
    assert local_imports(["a.py"], proj.root) == ["b.py"]


def test_a_long_chain_needs_no_recursion(proj):
    n = max(3000, sys.getrecursionlimit() + 500)
    proj("m0.py", "import m1\n")
    for i in range(1, n):
        proj(f"chain/m{i}.py", f"import m{i + 1}\n" if i + 1 < n else "")
    proj("main.py", "import sys, os\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), 'chain'))\nimport m0\n")
    found = local_imports(["main.py"], proj.root)
    assert len(found) == n and found[0] == "chain/m1.py"


def test_syntax_errors_and_odd_bytes_do_not_raise(proj):
    proj("broken.py", "import helper\ndef f(:\n")
    proj("helper.py")
    proj("nul.py", data=b"import helper\x00\n")
    proj("latin.py", data="# -*- coding: latin-1 -*-\nimport latin_helper\nname = 'café'\n".encode("latin-1"))
    proj("latin_helper.py")
    proj("garbage.py", data=b"\xff\xfe\x00import \x9c\x80 helper \xc3(\n")
    proj("deep.py", "import helper\nx = " + "(" * 5000 + "1" + ")" * 5000 + "\n")
    proj("main.py", "import broken, nul, latin, garbage, deep\n")
    found = local_imports(["main.py"], proj.root)
    # a file this Python cannot parse is read line by line: its imports still count
    assert "helper.py" in found and "latin_helper.py" in found
    assert {"broken.py", "nul.py", "latin.py", "garbage.py", "deep.py"} <= set(found)


def test_importlib_with_a_literal_name_and_with_a_literal_prefix(proj):
    proj("src/__init__.py")
    proj("src/plugins/__init__.py")
    proj("src/plugins/x.py")
    proj("src/plugins/y.py")
    proj("src/plugins/sub/__init__.py")
    proj("src/plugins/notes.txt")
    proj("one.py", "import importlib\nplugin = importlib.import_module('src.plugins.x')\n")
    assert local_imports(["one.py"], proj.root) == ["src/__init__.py", "src/plugins/__init__.py", "src/plugins/x.py"]
    proj("any.py", "from importlib import import_module\ndef load(name):\n    return import_module(f'src.plugins.{name}')\n")
    assert local_imports(["any.py"], proj.root) == [
        "src/__init__.py",
        "src/plugins/__init__.py",
        "src/plugins/sub/__init__.py",
        "src/plugins/x.py",
        "src/plugins/y.py",
    ]


def test_sys_path_edits_with_file_relative_paths_are_followed(proj):
    proj("lib/shared.py", "")
    proj("tools/gen/run.py", "import sys, os\nsys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'lib')))\nimport shared\n")
    assert local_imports(["tools/gen/run.py"], proj.root) == ["lib/shared.py"]
    proj("tools/gen/run2.py", "import sys\nfrom pathlib import Path\nsys.path.append(str(Path(__file__).resolve().parents[2] / 'lib'))\nimport shared\n")
    assert local_imports(["tools/gen/run2.py"], proj.root) == ["lib/shared.py"]


def test_nothing_outside_the_project(proj, tmp_path):
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.mkdir(exist_ok=True)
    (outside / "far.py").write_text("")
    proj("main.py", f"import sys\nsys.path.insert(0, {str(outside)!r})\nimport far\nfrom .. import up\nfrom ... import x\n")
    assert local_imports(["main.py"], proj.root) == []
    assert local_imports([str(outside / "far.py"), "../x.py", "missing.py"], proj.root) == []


def test_scripts_in_recipe(proj):
    proj("src/train.py")
    proj("src/helper.py")
    proj("tools/prep.py", "#!/usr/bin/env python3\nimport sys\n", mode=0o755)
    proj("tools/shell.py", "#!/bin/sh\necho hi\n", mode=0o755)
    proj("tools/noext", "#!/usr/bin/python3 -u\n", mode=0o755)
    root = proj.root
    assert scripts_in_recipe("python3 -u src/train.py --lr 0.1 data.csv > out/model.pkl", root) == ["src/train.py"]
    assert scripts_in_recipe("python missing.py && echo done", root) == []
    assert scripts_in_recipe("./tools/prep.py in out\n./tools/shell.py\ntools/noext", root) == ["tools/noext", "tools/prep.py"]
    assert scripts_in_recipe("cd src\npython train.py", root) == ["src/train.py"]
    assert scripts_in_recipe("cd tools && ./prep.py", root) == ["tools/prep.py"]
    assert scripts_in_recipe("OMP_NUM_THREADS=1 env FOO=1 nice -n 5 python -W ignore src/train.py", root) == ["src/train.py"]
    assert scripts_in_recipe("python -c 'import sys; print(1)'", root) == []
    assert scripts_in_recipe('python -c "from src import helper; helper.main()"', root) == ["src/helper.py"]
    assert scripts_in_recipe("python - <<'EOF'\nimport src.helper\nEOF\necho python src/nothing.py", root) == ["src/helper.py"]
    assert scripts_in_recipe("python <<< 'import src.helper'", root) == ["src/helper.py"]
    assert scripts_in_recipe("bash -c 'python src/train.py'", root) == ["src/train.py"]
    assert scripts_in_recipe("torchrun --nproc_per_node 2 src/train.py", root) == ["src/train.py"]
    assert scripts_in_recipe("python -m torch.distributed.run --nproc_per_node=2 src/train.py", root) == ["src/train.py"]
    assert scripts_in_recipe('python "src/train.py" \\\n  --name \'it\'"s"', root) == ["src/train.py"]
    assert scripts_in_recipe(f"{sys.executable} {root}/src/train.py", root) == ["src/train.py"]
    assert scripts_in_recipe("echo 'a quoted\npython src/train.py' > notes.txt", root) == []  # inside a quote: not a command
    assert scripts_in_recipe("echo 'never closed\npython src/train.py", root) == ["src/train.py"]  # in doubt, an input more
    assert scripts_in_recipe("cat data.csv | sort | uniq > out.txt", root) == []
    # one plain command: its command word, never its arguments, may be a script
    assert scripts_in_recipe("cat tools/noext src/x > out/b.txt", root) == []
    assert scripts_in_recipe("tools/noext in/a.txt > out/b.txt", root) == ["tools/noext"]
    assert scripts_in_recipe("env tools/noext in/a.txt", root) == ["tools/noext"]
    assert scripts_in_recipe("  wc -l < tools/noext > out/n.txt\n", root) == []


def test_pythonpath_in_a_recipe_widens_the_search(proj):
    proj("lib/shared.py")
    proj("scripts/run.py", "import shared\n")
    scan = scan_recipe("PYTHONPATH=lib:$PYTHONPATH python scripts/run.py", proj.root)
    assert scan.scripts == ["scripts/run.py"] and scan.path == ["lib"]
    assert local_imports(scan.scripts, proj.root) == []
    assert local_imports(scan.scripts, proj.root, path=scan.path) == ["lib/shared.py"]


def test_a_cache_parses_each_file_once_per_process_and_once_across_runs(proj, tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "_PARSED", {})
    proj("src/step.py", "import helper\n")
    proj("src/helper.py", "import util\n")
    proj("src/util.py")
    state = str(tmp_path / ".bb")
    cache = ImportCache(state)
    for i in range(1000):
        recipe = f"python src/step.py --part {i} out/{i}.json"
        scripts = scripts_in_recipe(recipe, proj.root, cache)
        assert local_imports(scripts, proj.root, cache) == ["src/helper.py", "src/util.py"]
    assert cache.parsed == 3
    cache.save()
    assert os.path.exists(os.path.join(state, imports.CACHE_FILE))

    # a new process: nothing parsed in memory; the state file answers
    monkeypatch.setattr(imports, "_PARSED", {})
    again = ImportCache(state)
    assert local_imports(["src/step.py"], proj.root, again) == ["src/helper.py", "src/util.py"]
    assert again.parsed == 0

    # an edit is seen (stat changed), in this process and the next
    proj("src/helper.py", "import util, extra\n")
    proj("src/extra.py")
    fresh = ImportCache(state)
    assert local_imports(["src/step.py"], proj.root, fresh) == ["src/extra.py", "src/helper.py", "src/util.py"]
    assert fresh.parsed == 2  # helper.py, extra.py
    fresh.save()
    monkeypatch.setattr(imports, "_PARSED", {})
    last = ImportCache(state)
    assert local_imports(["src/step.py"], proj.root, last) == ["src/extra.py", "src/helper.py", "src/util.py"]
    assert last.parsed == 0


def test_a_corrupt_cache_file_is_ignored(proj, tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "_PARSED", {})
    proj("main.py", "import helper\n")
    proj("helper.py")
    state = tmp_path / ".bb"
    state.mkdir()
    st = os.stat(tmp_path / "main.py")
    sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    bad = {"v": imports.CACHE_VERSION, "files": {str(tmp_path / "main.py"): sig + [[["i", 1, "../../etc", []]]]}}
    (state / imports.CACHE_FILE).write_text(__import__("json").dumps(bad))
    assert local_imports(["main.py"], proj.root, ImportCache(str(state))) == ["helper.py"]
    (state / imports.CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(imports, "_PARSED", {})
    assert local_imports(["main.py"], proj.root, ImportCache(str(state))) == ["helper.py"]


def test_missing_lists_where_a_new_module_would_change_the_closure(proj):
    proj("scripts/run.py", "import utils\n")
    proj("utils.py")
    cache = ImportCache()
    assert local_imports(["scripts/run.py"], proj.root, cache) == ["utils.py"]
    # a utils.py beside the script would be imported first: a no-op stamp must watch it
    assert "scripts/utils.py" in cache.missing and "scripts/utils" in cache.missing


def test_more_recipe_shapes(proj):
    proj("src/train.py")
    proj("jobs/pkg/__init__.py")
    proj("jobs/pkg/run.py", "import pkg.other\n")
    proj("jobs/pkg/other.py")
    root = proj.root
    # a heredoc fed to another command is data, not commands
    assert scripts_in_recipe("cat > notes.txt <<EOF\npython src/train.py\nEOF\necho done", root) == []
    # -m from the folder the recipe moved to
    scan = scan_recipe("cd jobs && python -m pkg.run", root)
    assert scan.scripts == ["jobs/pkg/__init__.py", "jobs/pkg/run.py"] and scan.path == ["jobs"]
    assert local_imports(scan.scripts, root, path=scan.path) == ["jobs/pkg/other.py"]
    assert scripts_in_recipe("python -m not_here.mod && python -c 'import nothing_local'", root) == []
    # comments are not commands
    assert scripts_in_recipe("# python src/train.py\necho 'x' # python src/train.py", root) == []


def test_relative_import_module_and_run_path(proj):
    proj("pkg/__init__.py", "")
    proj("pkg/loader.py", "import importlib, runpy, os\nm = importlib.import_module('.impl', __package__)\nrunpy.run_path(os.path.join(os.path.dirname(__file__), 'extra.py'))\n")
    proj("pkg/impl.py")
    proj("pkg/extra.py")
    proj("main.py", "import pkg.loader\n")
    assert local_imports(["main.py"], proj.root) == ["pkg/__init__.py", "pkg/extra.py", "pkg/impl.py", "pkg/loader.py"]


def test_every_match_on_the_search_path_counts(proj):
    # Python takes scripts/utils.py (sys.path[0]); with PYTHONPATH=. or `python -m`
    # it could take ./utils.py: both are inputs (a wrong guess only adds an input)
    proj("scripts/run.py", "import utils\n")
    proj("scripts/utils.py")
    proj("utils.py")
    assert local_imports(["scripts/run.py"], proj.root) == ["scripts/utils.py", "utils.py"]
