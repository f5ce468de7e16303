"""The parsed Batchfile as plain data: what the user wrote, before expansion."""
from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Where in a Batchfile (or an included file) something was written."""

    file: str
    line: int
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f":{self.column}" if self.column else "")


def show(text: str, limit: int = 60) -> str:
    """User text inside a one-line message: shortened, and with control
    characters and line separators (\\x0c, \\u2028...) written as escapes."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(func):
    """Errors of `func` print as one paragraph even when they quote the
    user's text: a \\x0c or \\u2028 in a value or path is shown escaped."""
    import functools

    from buildsys.errors import BBError

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BBError as err:
            if not (err.message + err.hint).isprintable():
                err.message, err.hint = show(err.message, 2000), show(err.hint, 2000)
            raise

    return wrapper


class Record(dict):
    """A record: field name -> value (a string, a list or a record), in the
    order written. `{name: knn, k: 5}` in a Batchfile, a mapping in a file
    read with load(). A list of records gives each item of a loop its own
    values: $(m.name), $(m.k)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Record({dict.__repr__(self)})"


_BARE = re.compile(r"[^\s,:#=\[\]{}\"'\\]+")


def render(value) -> str:
    """A value as one would write it in a Batchfile: knn, [a, b], {name: knn, k: 5}."""
    if value.__class__ is str:
        if _BARE.fullmatch(value):
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(render(v) for v in value) + "]"


@dataclass(frozen=True)
class Assignment:
    """`NAME = value` (or += or ?=) at the top level of a Batchfile."""

    name: str
    op: str  # "=", "+=" or "?="
    value: str | tuple | Record  # lists hold strings and records
    location: Location
    loaded: bool = False  # read with load(): data, whose '$' bb never expands


@dataclass(frozen=True)
class Attribute:
    """A rule's `@name args...` line, such as @image or @cpus."""

    name: str
    args: tuple  # strings, or tuples of strings for list arguments
    location: Location


@dataclass(frozen=True)
class Loop:
    """`@for var in over`: the rule once per item."""

    var: str
    over: str | tuple  # a variable name, a range "1..10", or literal items
    location: Location


@dataclass(frozen=True)
class Zip:
    """`@for a, b in zip(A, B)`: one loop over lists of equal length, their
    items taken side by side."""

    loops: tuple[Loop, ...]
    location: Location


@dataclass(frozen=True)
class Rule:
    """`outputs: inputs` and its recipe, as written (before variables and loops are expanded)."""

    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    recipe: str | None
    attributes: tuple[Attribute, ...]
    loops: tuple[Loop | Zip, ...]
    location: Location
    recipe_line: int = 0


@dataclass(frozen=True)
class Setting:
    """One `name = value` line of the settings block."""

    name: str
    value: str | tuple[str, ...]
    location: Location


@dataclass(frozen=True)
class Batchfile:
    """A parsed Batchfile, its includes spliced in, in the order written."""

    path: str
    assignments: tuple[Assignment, ...]
    rules: tuple[Rule, ...]
    settings: tuple[Setting, ...]
    sources: tuple[str, ...] = field(default=())  # every file read, includes too
