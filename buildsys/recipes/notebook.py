"""Notebook recipes: a notebook kept as a jupytext `.py` (percent or light
format) or an `.ipynb`, run with parameters, producing the executed notebook
and an HTML report that needs no network to view.

    python -m buildsys.recipes.notebook NOTEBOOK --html OUT.html [--ipynb OUT.ipynb] [-p NAME=VALUE ...]

Parameters are injected the papermill way: the cell tagged `parameters`
holds the defaults; a cell tagged `injected-parameters` is put right after
it (or first, if there is none) and overrides them; it shows in the report.
A value that reads as an integer, a float, True or False is passed as one;
anything else is a string.

What keys a notebook is `canonical(path)`: its cells' kinds, sources and
tags, never stored outputs, execution counts, metadata or the file format,
so converting `.py` <-> `.ipynb` with the same cells changes no key."""
from __future__ import annotations

import argparse
import json
import re
import sys

# nbconvert's templates load scripts (MathJax, require.js, mermaid) from a
# CDN; a report must open offline, so every script that names a URL goes.
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>\s*", re.I | re.S)
_REMOTE_LINK = re.compile(r"<link[^>]*\bhref=\"https?://[^\"]*\"[^>]*>\s*", re.I)
_URL = re.compile(r"https?://", re.I)


def read(path: str):
    """A notebook from a jupytext text file, an .ipynb, or canonical bytes."""
    import jupytext
    import nbformat

    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"{"):
        return nbformat.reads(data.decode("utf-8"), as_version=4)
    return jupytext.reads(data.decode("utf-8"), fmt=path.rsplit(".", 1)[-1] if "." in path else "py")


def canonical(path: str) -> bytes:
    """The notebook as it enters a key and the store: a minimal .ipynb of
    its cells (kind, source, tags), in a fixed encoding."""
    nb = read(path)
    cells = []
    for cell in nb.cells:
        out = {"cell_type": cell.cell_type, "metadata": {}, "source": cell.source}
        tags = sorted(cell.get("metadata", {}).get("tags", []))
        if tags:
            out["metadata"]["tags"] = tags
        if cell.cell_type == "code":
            out.update(execution_count=None, outputs=[])
        cells.append(out)
    doc = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for i, cell in enumerate(doc["cells"]):
        cell["id"] = f"cell-{i}"  # nbformat 4.5 wants ids; stable ones
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def typed(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(value, value)


def inject(nb, params: dict) -> None:
    import nbformat

    if not params:
        return
    source = "# Parameters (injected by bb)\n" + "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    where = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells.insert(where, cell)


def html(nb) -> str:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    body = _SCRIPT.sub(lambda m: "" if _URL.search(m.group(0)) else m.group(0), body)
    return _REMOTE_LINK.sub("", body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildsys.recipes.notebook")
    parser.add_argument("notebook")
    parser.add_argument("--html", required=True)
    parser.add_argument("--ipynb", default="")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a cell may run")
    args = parser.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    params = {}
    for item in args.param:
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            print(f"bb notebook: '{item}' is not NAME=VALUE", file=sys.stderr)
            return 2
        params[name] = typed(value)
    nb = read(args.notebook)
    inject(nb, params)
    client = NotebookClient(nb, kernel_name="python3", timeout=args.timeout, resources={"metadata": {"path": "."}})
    try:
        client.execute()
    except CellExecutionError as err:
        failing = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        # numbered as the author sees them: the injected cell does not count
        number = sum(1 for c in nb.cells[: (failing or 0) + 1] if c.cell_type == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])) if failing is not None else "?"
        line = ""
        if failing is not None:
            m = re.findall(r"line (\d+)", re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(sum((o.get("traceback", []) for o in nb.cells[failing].outputs if o.get("output_type") == "error"), []))))
            src = nb.cells[failing].source.splitlines()
            if m and 0 < int(m[-1]) <= len(src):
                line = f", line {m[-1]}: {src[int(m[-1]) - 1].strip()}"
        name = getattr(err, "ename", "error")
        value = getattr(err, "evalue", str(err).splitlines()[-1] if str(err) else "")
        # the partly executed notebook is the failure's log, never a product;
        # what failed comes last, where bb shows the end of a failed log
        sys.stdout.write(nbformat.writes(nb) + "\n")
        sys.stdout.flush()
        print(f"bb notebook: {args.notebook}: code cell {number} failed{line}: {name}: {value}", file=sys.stderr, flush=True)
        return 1
    if args.ipynb:
        with open(args.ipynb, "w") as f:
            f.write(nbformat.writes(nb))
    with open(args.html, "w") as f:
        f.write(html(nb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
