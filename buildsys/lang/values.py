"""Values that are more than a string: lists, records, and data read from
params files (JSON, TOML, YAML) or given on the command line.

A value is a string, a tuple (a list: of strings and records) or a Record
(field name -> value). Everything inside is text: numbers read from a file
keep the text written there (1.0e-3 stays 1.0e-3; TOML integers are
normalized: 1_000 is 1000), booleans become true and false, null is empty.

This module imports nothing heavy: the command line parses its overrides
with it before deciding whether a build is a no-op.
"""
from __future__ import annotations

import re

from buildsys.errors import BatchfileError, UsageError
from buildsys.lang.model import Location, Record, render, show

# A field name: what may stand after a dot in $(m.k).
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# A command-line override's name: a variable, or a field of one (PARAMS.train.lr).
OVERRIDE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")

# Bounds on data read from a file: a params file is small; a YAML file whose
# aliases refer to each other would otherwise unfold into billions of values.
MAX_DEPTH = 32
MAX_NODES = 1 << 20
MAX_TEXT = 1 << 20  # characters in one value (graph.MAX_VALUE)

FORMATS = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def usable(text: str) -> bool:
    """Text that can go into a path, a recipe and a key: no NUL, no lone
    surrogate (bytes that were not UTF-8), not over MAX_TEXT characters."""
    return "\0" not in text and len(text) <= MAX_TEXT and not any("\ud800" <= c <= "\udfff" for c in text)


def all_text(value) -> bool:
    """Every string inside `value` is usable()."""
    if value.__class__ is str:
        return usable(value)
    if isinstance(value, dict):
        return all(usable(k) and all_text(v) for k, v in value.items())
    return all(all_text(v) for v in value)


def has_record(value) -> bool:
    return isinstance(value, dict) or (isinstance(value, tuple) and any(isinstance(v, dict) for v in value))


# ---- data from files -------------------------------------------------------------


def _scalar(value) -> str | None:
    """A file's scalar as the word one writes for it; None if it is not one."""
    if value.__class__ is str:
        return value
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than Python prints
            return None
    if isinstance(value, float):
        return repr(value)
    iso = getattr(value, "isoformat", None)  # TOML and YAML dates and times
    if iso is not None:
        return iso()
    return None


def from_data(data, where: Location, label: str = "the file") -> str | tuple | Record:
    """Data parsed from a params file as a Batchfile value: mappings become
    records, sequences lists, scalars text (null is empty). A list inside a
    list, a value over 1 MiB or data nested deeper than MAX_DEPTH is an
    error naming its place in the file (models[2].k)."""
    count = 0

    def fail(path: str, why: str, hint: str = "") -> BatchfileError:
        at = f" at {show(path)}" if path else ""
        return BatchfileError(f"{label}{at}: {why}", where=where, hint=hint)

    def convert(value, path: str, depth: int, in_list: bool):
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise fail(path, f"the file holds more than {MAX_NODES:,} values.", "Keep data this big in a file a recipe reads; load() is for parameters.")
        if depth > MAX_DEPTH:
            raise fail(path, f"the data is nested more than {MAX_DEPTH} levels deep (or refers to itself).")
        text = _scalar(value)
        if text is not None:
            if not usable(text):
                raise fail(path, "a value holds a NUL character, text that is not UTF-8, or more than 1 MiB.")
            return text
        if isinstance(value, dict):
            out = Record()
            for key, item in value.items():
                name = _scalar(key)
                if name is None or not usable(name):
                    raise fail(path, f"the key {show(repr(key))} is not text.")
                out[name] = convert(item, f"{path}.{name}" if path else name, depth + 1, False)
            return out
        if isinstance(value, (list, tuple)):
            if in_list:
                raise fail(path, "a list inside a list; a Batchfile list holds strings and records.", "Put the inner list in a record field: [{layers: [64, 64]}].")
            return tuple(convert(item, f"{path}[{i}]", depth + 1, True) for i, item in enumerate(value))
        raise fail(path, f"a value of type {type(value).__name__} is not text, a list or a mapping.")

    try:
        return convert(data, "", 0, False)
    except RecursionError:
        raise fail("", f"the data is nested more than {MAX_DEPTH} levels deep.") from None


def parse_data(text: str, kind: str, shown: str, where: Location):
    """Parse a params file's text as `kind` (JSON, TOML or YAML). An error
    names the file's line and column where the parser gives them, else the
    load() that reads it (`where`)."""
    label = f"'{show(shown, 200)}' is not valid {kind}"

    def fail(why: str, line: int = 0, column: int = 0) -> BatchfileError:
        at = Location(shown, line, column) if line > 0 else where
        return BatchfileError(f"{label}: {show(why.strip().rstrip('.'), 200)}.", where=at)

    try:
        if kind == "JSON":
            import json

            try:  # numbers keep the text written: 1.0e-3 reaches a recipe as 1.0e-3
                return json.loads(text, parse_float=str, parse_int=str)
            except json.JSONDecodeError as err:
                raise fail(err.msg, err.lineno, err.colno) from None
        if kind == "TOML":
            import tomllib

            try:
                return tomllib.loads(text, parse_float=str)
            except tomllib.TOMLDecodeError as err:
                m = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
                message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(err))
                raise (fail(message, int(m.group(1)), int(m.group(2))) if m else fail(message)) from None
        try:
            import yaml
        except ImportError:
            raise BatchfileError(
                f"reading '{show(shown, 200)}' needs PyYAML, which is not installed.",
                where=where,
                hint="Install it (pip install pyyaml), or write the parameters as JSON or TOML, which bb reads with the standard library.",
            ) from None
        try:
            return yaml.load(text, Loader=_yaml_loader(yaml))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None) or str(err)
            if mark is not None:
                raise fail(str(problem), mark.line + 1, mark.column + 1) from None
            raise fail(str(problem)) from None
    except RecursionError:
        raise fail("it is nested too deeply to read") from None
    except BatchfileError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError) as err:  # a number or date out of range, say
        raise fail(str(err) or type(err).__name__) from None


_YAML_LOADER = None


def _yaml_loader(yaml):
    """PyYAML's safe loader, keeping numbers as the text written."""
    global _YAML_LOADER
    if _YAML_LOADER is None:

        class Loader(yaml.SafeLoader):
            pass

        def as_written(loader, node):
            return loader.construct_scalar(node)

        Loader.add_constructor("tag:yaml.org,2002:float", as_written)
        Loader.add_constructor("tag:yaml.org,2002:int", as_written)
        _YAML_LOADER = Loader
    return _YAML_LOADER


# ---- values on the command line ---------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:(?P<punct>[\[\]{},:])|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<word>[^\s\[\]{},:"']+))""")


def override_value(name: str, text: str):
    """The value of `NAME=text` on the command line: a list when written as
    one ([knn, tree], [{name: knn, k: 5}]), else the text as it is."""
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return text
    from buildsys.lang.parse import _unquote

    tokens = []
    pos = 0
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if m is None or m.end() == pos:
            if stripped[pos:].strip() == "":
                break
            raise _bad_list(name, text, f"unexpected {show(stripped[pos:].lstrip()[:1])!r}")
        pos = m.end()
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
    at = 0

    def peek():
        return tokens[at] if at < len(tokens) else ("end", "")

    def take(kind=None, value=None):
        nonlocal at
        tok = peek()
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            want = f"'{value}'" if value else {"word": "a word", "string": "a quoted string"}.get(kind, kind)
            got = "the end" if tok[0] == "end" else f"'{show(tok[1])}'"
            raise _bad_list(name, text, f"expected {want}, found {got}")
        at += 1
        return tok

    def text_of(tok):
        if tok[0] == "string":
            try:
                return _unquote(tok[1])
            except BatchfileError as err:
                raise _bad_list(name, text, err.message.rstrip(".")) from None
        return tok[1]

    def sequence(close, item):
        out = []
        while peek() != ("punct", close):
            out.append(item())
            if peek() == ("punct", ","):
                take()
            elif peek() != ("punct", close):
                take("punct", close)  # raises: expected the closing bracket
        take("punct", close)
        return out

    def value(in_list):
        kind, tok = peek()
        if (kind, tok) == ("punct", "["):
            if in_list:
                raise _bad_list(name, text, "a list inside a list")
            take()
            return tuple(sequence("]", lambda: value(True)))
        if (kind, tok) == ("punct", "{"):
            take()
            record = Record()

            def field():
                key = take()
                if key[0] not in ("word", "string") or not FIELD.fullmatch(text_of(key)):
                    raise _bad_list(name, text, f"'{show(key[1])}' is not a field name")
                if text_of(key) in record:
                    raise _bad_list(name, text, f"the field '{text_of(key)}' is given twice")
                take("punct", ":")
                record[text_of(key)] = value(False)

            sequence("}", field)
            return record
        if kind in ("word", "string"):
            take()
            return text_of((kind, tok))
        return text_of(take("word"))

    result = value(False)
    if at != len(tokens):
        raise _bad_list(name, text, f"'{show(tokens[at][1])}' after the list's closing ']'")
    if not all_text(result):
        raise UsageError(f"the command-line value of {name} is not usable text (a NUL, or bytes that are not UTF-8).", hint=f"Pass {name}=VALUE as UTF-8 text.")
    return result


def _bad_list(name: str, text: str, why: str) -> UsageError:
    return UsageError(
        f"the command-line value of {name}, '{show(text, 80)}', is not a list: {why}.",
        hint=f"Write a list as {name}='[a, b]' and records as {name}='[{{name: a, k: 5}}]' (quoted for the shell);"
        " quote items holding spaces or , [ ] { } : with double quotes.",
    )


def check_override(name: str, value) -> None:
    if not all_text(value):
        raise UsageError(
            f"the command-line value of {name} is not usable text (a NUL, bytes that are not UTF-8, or over {MAX_TEXT:,} characters).",
            hint=f"Pass {name}=VALUE as UTF-8 text.",
        )


__all__ = ["Record", "render", "from_data", "parse_data", "override_value", "FIELD", "OVERRIDE_NAME", "FORMATS"]
