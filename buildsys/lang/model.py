"""The parsed Batchfile as plain data: what the user wrote, before expansion."""
from __future__ import annotations

from dataclasses import dataclass, field

from buildsys.errors import Location


def show(text: str, limit: int = 60) -> str:
    """User text inside a one-line message: shortened, and with control
    characters and line separators (\\x0c, \\u2028...) written as escapes."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Assignment:
    name: str
    op: str  # "=", "+=" or "?="
    value: str | tuple[str, ...]
    location: Location


@dataclass(frozen=True)
class Attribute:
    name: str
    args: tuple  # strings, or tuples of strings for list arguments
    location: Location


@dataclass(frozen=True)
class Loop:
    var: str
    over: str | tuple[str, ...]  # a variable name, a range "1..10", or literal items
    location: Location


@dataclass(frozen=True)
class Rule:
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    recipe: str | None
    attributes: tuple[Attribute, ...]
    loops: tuple[Loop, ...]
    location: Location
    recipe_line: int = 0


@dataclass(frozen=True)
class Setting:
    name: str
    value: str | tuple[str, ...]
    location: Location


@dataclass(frozen=True)
class Batchfile:
    path: str
    assignments: tuple[Assignment, ...]
    rules: tuple[Rule, ...]
    settings: tuple[Setting, ...]
    sources: tuple[str, ...] = field(default=())  # every file read, includes too
