"""Python function recipes: a target made by `module:function`.

    python -m buildsys.recipes.function MODULE:FUNCTION --in PATH ... --out PATH ... [-p NAME=VALUE ...]

The module is imported from the project (the Batchfile's folder and its
`src/` folder are on sys.path), and the function is called with keyword
arguments: `inputs` (the target's input paths, a list), `outputs` (its
output paths, a list) and each parameter (typed as for notebooks: 5 is an
int, 0.1 a float, True/False booleans, anything else a string). A function
that does not take `inputs` or `outputs` (or **kwargs) is not given them.
Its return value is ignored; an exception fails the target with its
traceback. The module's file and the project modules it imports are inputs
of the target's key (buildsys.keys.imports)."""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

from buildsys.recipes.notebook import typed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildsys.recipes.function")
    parser.add_argument("target", metavar="MODULE:FUNCTION")
    parser.add_argument("--in", dest="inputs", action="append", default=[])
    parser.add_argument("--out", dest="outputs", action="append", default=[])
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    module_name, _, function_name = args.target.partition(":")
    for folder in ("src", "."):
        if os.path.isdir(folder):
            sys.path.insert(0, os.path.abspath(folder))
    function = getattr(importlib.import_module(module_name), function_name)
    kwargs = {}
    for item in args.param:
        name, _, value = item.partition("=")
        kwargs[name] = typed(value)
    accepts = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepts.values())
    for name, value in (("inputs", args.inputs), ("outputs", args.outputs)):
        if takes_all or name in accepts:
            kwargs[name] = value
    function(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
