"""Model -> graph: variables, loops, pattern rules and globs expanded into
concrete targets, with their dependencies, checked for cycles, clashes and
missing inputs. Everything here is iterative, so deep chains plan fine."""
from __future__ import annotations

import fnmatch
import itertools
import math
import operator
import os
import re
from dataclasses import dataclass, field

from buildsys import units
from buildsys.errors import BatchfileError, UsageError, did_you_mean
from buildsys.lang.model import Attribute, Batchfile, Location, Loop, Record, Rule, Zip, one_line, render, show
from buildsys.lang.probes import Probes
from buildsys.lang.settings import Settings
from buildsys.lang.settings import resolve as resolve_settings
from buildsys.lang.values import check_override

# $$, an automatic variable, $(NAME); a '$(' that starts no plain reference
# matches alone (group 1 is "("): a nested reference, or an error.
REF = re.compile(r"\$(\$|@|<|\^|\*|\(([^()\s$]+)\)|\()")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RANGE = re.compile(r"(-?[0-9]{1,18})\.\.(-?[0-9]{1,18})")

# ---- limits ------------------------------------------------------------------
# A Batchfile is a program of sorts: a variable that doubles itself forty
# times, or a 1000 x 1000 @for grid, would make bb allocate without end.
# These limits turn such files into an error that names the line.
MAX_VALUE = 1 << 20  # characters in one variable value, expanded path or recipe
MAX_RULE_TARGETS = 100_000  # targets one rule may make (the product of its loops)
MAX_TARGETS = 500_000  # targets in one graph
LIMIT_ENV = "BB_MAX_TARGETS"  # raises (or lowers) both target limits
# Everything expansion creates, in all (about the bytes it allocates), per
# allowed target: 488 MiB by default. The 100k-target benchmark graphs use
# 120-240 bytes per target; a hostile file stops at about 550 MB of memory.
BYTES_PER_TARGET = 1024


class Limits:
    """The limits of one graph, and what expanding it has used so far."""

    __slots__ = ("rule_targets", "targets", "bytes_left", "made")

    def __init__(self, rule_targets: int = MAX_RULE_TARGETS, targets: int = MAX_TARGETS):
        self.rule_targets, self.targets = rule_targets, targets
        self.bytes_left = targets * BYTES_PER_TARGET
        self.made = 0  # targets planned so far

    @classmethod
    def from_env(cls) -> "Limits":
        raw = os.environ.get(LIMIT_ENV, "").strip()
        if not raw:
            return cls()
        if not re.fullmatch(r"[0-9]{1,12}", raw) or int(raw) < 1:
            raise UsageError(f"{LIMIT_ENV}={raw!r} is not a positive whole number.", hint=f"Set {LIMIT_ENV} to the number of targets a Batchfile may make, or unset it.")
        return cls(int(raw), int(raw))

    def spend(self, size: int, where: Location | None) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise BatchfileError(
                f"expanding the Batchfile makes more than {_mib(self.targets * BYTES_PER_TARGET)} of"
                " values, paths and recipes; it stopped here.",
                where=where,
                hint="Look for variables or loops that multiply (a variable repeating another, nested lists in paths);"
                f" for a genuinely bigger graph raise {LIMIT_ENV} (now {self.targets:,} targets).",
            )

    def hint(self, needed: int) -> str:
        return f"If the graph really is that big, allow it with {LIMIT_ENV}={needed} in the environment."


def _mib(size: int) -> str:
    return f"{size >> 20:,} MiB" if size >= 1 << 20 else f"{size >> 10:,} KiB"


def _too_long(what: str, size: int, where: Location | None, culprit: str = "") -> BatchfileError:
    alone = f"; $({culprit}) alone is {size:,} characters" if culprit else ""
    return BatchfileError(
        f"{what} is over {MAX_VALUE >> 20} MiB ({MAX_VALUE:,} characters) once expanded{alone}.",
        where=where,
        hint="A variable that repeats another ($(A)$(A)) doubles at each step;"
        " keep large data in a file the recipe reads instead of in the Batchfile.",
    )


def _short(text: str) -> str:
    return show(text.strip())


@dataclass(frozen=True)
class Attrs:
    """A target's attributes from its @ lines, defaults filled in."""

    cpus: int = 1
    memory: int = 0  # bytes; 0 = unspecified
    gpus: int = 0
    timeout: float = 0  # seconds; 0 = none
    retries: int = 0
    image: str = ""
    env: tuple[str, ...] = ()
    # Environment variables the recipe needs but that never enter a key or a
    # stored result (tokens, passwords): the planner passes them to the recipe.
    secrets: tuple[str, ...] = ()
    local: bool = False
    # @notebook PATH NAME=VALUE...: the notebook that makes the target's
    # report, then its parameters as NAME=VALUE words.
    notebook: tuple[str, ...] = ()
    # @python MODULE:FUNCTION NAME=VALUE...: the function that makes the target.
    function: tuple[str, ...] = ()


class Target(tuple):
    """A rule expanded: one target of the graph. Immutable, with named
    fields. A tuple, not a dataclass: the graph cache loads ten thousand of
    them in C (tuple.__new__ as the pickle's constructor), with no Python
    call each, which was most of an incremental build's graph load."""

    __slots__ = ()

    def __new__(cls, name: str, outputs: tuple[str, ...], inputs: tuple[str, ...], recipe: str | None, params: tuple[tuple[str, str], ...],
                attrs: Attrs, phony: bool, location: Location, variables: tuple[tuple[str, str], ...] = ()):
        return tuple.__new__(cls, (name, outputs, inputs, recipe, params, attrs, phony, variables, location.file, location.line, location.column))

    name: str = property(operator.itemgetter(0))
    outputs: tuple[str, ...] = property(operator.itemgetter(1))  # workspace-relative; directories end with "/"
    inputs: tuple[str, ...] = property(operator.itemgetter(2))  # files, directories, or other targets' outputs / phony names
    recipe: str | None = property(operator.itemgetter(3))
    params: tuple[tuple[str, str], ...] = property(operator.itemgetter(4))
    attrs: Attrs = property(operator.itemgetter(5))
    phony: bool = property(operator.itemgetter(6))
    # The Batchfile variables the rule uses, for `bb why` ("lr: 0.1 -> 0.2").
    # Not part of the key: their effect already is, through the recipe and paths.
    variables: tuple[tuple[str, str], ...] = property(operator.itemgetter(7))

    @property
    def location(self) -> Location:
        return Location(self[8], self[9], self[10])

    def __reduce__(self):
        return tuple.__new__, (Target, tuple(self))

    def __repr__(self) -> str:
        return f"Target({self.name!r}, outputs={self.outputs!r}, inputs={self.inputs!r}, recipe={self.recipe!r}, phony={self.phony!r}, at {self.location})"


def _maker(producer: dict[str, str], dirs: set[str], path: str) -> str | None:
    hit = producer.get(path)
    while hit is None and "/" in path:
        path = path.rsplit("/", 1)[0]
        if path in dirs:
            return producer[path]
    return hit


@dataclass
class Graph:
    """The expanded Batchfile: every target, what it needs, and who makes each path."""

    targets: dict[str, Target]
    deps: dict[str, tuple[str, ...]]  # target -> targets it needs
    producer: dict[str, str]  # output path (no trailing slash) -> target
    default: str | None
    settings: Settings
    dirs: set[str] = field(default_factory=set)  # directory outputs, no trailing slash
    watched: dict[str, list] = field(default_factory=dict)  # folder -> the probes of its listing that shaped the graph (lang.probes)


    def producer_of(self, path: str) -> str | None:
        """The target making `path`, directly or as part of a directory output."""
        return _maker(self.producer, self.dirs, path)

    def is_source(self, path: str) -> bool:
        """An input no target makes: a file or folder the user provides."""
        return path not in self.targets and self.producer_of(path.rstrip("/")) is None

    def is_alias(self, name: str) -> bool:
        return name in self.aliases

    @property
    def aliases(self) -> set[str]:
        """The phony targets without a recipe (remembered: the graph never changes once built)."""
        found = self.__dict__.get("_aliases")
        if found is None:
            found = self.__dict__["_aliases"] = {n for n in self.phony if self.targets[n].recipe is None}
        return found

    @property
    def phony(self) -> set[str]:
        """The phony targets, aliases among them (remembered)."""
        found = self.__dict__.get("_phony")
        if found is None:
            found = self.__dict__["_phony"] = {n for n, t in self.targets.items() if t.phony}
        return found

    def behind_aliases(self, names) -> list[str]:
        """The targets `names` stand for, looking through aliases."""
        names = list(names)
        if self.aliases.isdisjoint(names):
            return list(dict.fromkeys(names))  # the common case, thousands of names at once
        out, stack, seen = [], names, set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if self.is_alias(name):
                stack.extend(self.deps[name])
            else:
                out.append(name)
        return out

    def closure(self, roots) -> list[str]:
        """Targets needed for `roots`, dependencies before dependents.
        Remembered per roots (a build asks several times; the graph never
        changes once built); callers get their own copy."""
        memo = self.__dict__.setdefault("_closures", {})
        roots = tuple(roots)
        if roots not in memo:
            memo[roots] = _postorder(self, roots)
        return list(memo[roots])

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_aliases", None)  # (remade when asked for; the closures computed so far are kept)
        state.pop("_phony", None)
        return state


# ---- interpolation ---------------------------------------------------------
#
# A reference is $(NAME), a field $(m.k) or $(PARAMS.train.lr), a field of
# every record of a list $(MODELS.name), one with a default $(m.depth:-3),
# or one whose name holds other references, expanded first: $(C_$(m)).
# The common case, $(NAME) with NAME in scope, is one dict lookup inside one
# regex substitution; everything else takes the slower paths below, only
# when a text needs them.


def _flat(value) -> str:
    if value.__class__ is str:
        return value
    if value.__class__ is tuple and all(v.__class__ is str for v in value):
        return " ".join(value)
    return render(value)


class _Nested(Exception):
    """A '$(' that starts no plain reference: the text takes flatten_refs."""


_MISSING = object()


def expand(text: str, scope: dict, where: Location | None, *, recipe: bool = False, what: str = "", limits: Limits | None = None) -> str:
    """Replace $(name), $@, $<, $^, $* and $$ in `text`; anything else after a
    '$' ($HOME, ${HOME}, $1) is left for the shell, but every '$(' is bb's:
    one that names no variable is an error. The result may not exceed
    MAX_VALUE characters (`what` names the text in the error)."""
    if "$" not in text:
        return text
    out = _fill(text, scope)
    if out is not None:
        if limits is not None:
            limits.bytes_left -= len(out) + 50
            if limits.bytes_left < 0:
                limits.spend(0, where)
        return out
    size = len(text)

    def sub(m):
        nonlocal size
        token = m.group(1)
        if token == "$":
            return "$"
        name = m.group(2) or token
        try:
            value = scope[name]
        except KeyError:
            if token == "(":
                raise _Nested from None
            if token[0] != "(":
                raise _unknown(name, token, text, scope, where, recipe) from None
            value = resolve(name, scope, where, text, recipe)
        if value.__class__ is not str:
            value = _join(value, name, text, where)
        size += len(value)
        if size > MAX_VALUE:
            raise _too_long(what or f"'{_short(text)}'", len(value), where, name if token[0] == "(" else "")
        return value

    try:
        out = REF.sub(sub, text)
    except _Nested:
        flat = flatten_refs(text, scope, where, recipe=recipe)
        size = len(flat)
        out = REF.sub(sub, flat)  # errors quote `text`, as written
    if limits is not None:
        limits.bytes_left -= len(out) + 50  # limits.spend, inlined: this is the hot path
        if limits.bytes_left < 0:
            limits.spend(0, where)
    return out


# text -> its pieces: literal text, then the scope names its plain
# references read ($(name), $@...), in turn; None for a text with a nested
# reference. Texts are the Batchfile's own words, parsed once for the
# thousands of bindings of a loop.
_PIECES: dict[str, tuple | None] = {}


def _fill(text: str, scope: dict) -> str | None:
    """`expand` where every reference is a variable whose value is a string,
    and the result is not too long; None where expand must look closer."""
    pieces = _PIECES.get(text, _MISSING)
    if pieces is _MISSING:
        if len(_PIECES) > 100_000:
            _PIECES.clear()
        pieces = _PIECES[text] = _pieces(text)
    if pieces is None:
        return None
    out = [pieces[0]]
    size = len(text)
    for i in range(1, len(pieces), 2):
        value = scope.get(pieces[i])
        if value.__class__ is not str:
            return None
        size += len(value)
        out.append(value)
        out.append(pieces[i + 1])
    return "".join(out) if size <= MAX_VALUE else None


def _pieces(text: str) -> tuple | None:
    pieces, start = [], 0
    for m in REF.finditer(text):
        token = m.group(1)
        if token == "(":
            return None
        literal = text[start : m.start()]
        start = m.end()
        if token == "$":
            if pieces:
                pieces[-1] += literal + "$"
            else:
                pieces.append(literal + "$")
            continue
        if not pieces:
            pieces.append("")
        pieces[-1] += literal
        pieces.append(m.group(2) or token)
        pieces.append("")
    if not pieces:
        pieces.append("")
    pieces[-1] += text[start:]
    return tuple(pieces)


def _join(value, name: str, text: str, where) -> str:
    """A list as words; a record, or a list holding records, is an error."""
    if value.__class__ is not Record:
        try:
            return " ".join(value)
        except TypeError:
            pass
        record = next(v for v in value if v.__class__ is Record)
        fields = ", ".join(record)
        raise BatchfileError(
            f"'$({show(name)})' in '{_short(text)}' is a list of records, not of words.",
            where=where,
            hint=f"Name a field of its records, such as $({show(name)}.{next(iter(record), 'name')})" + (f" (fields: {show(fields)})." if fields else "."),
        )
    fields = ", ".join(value)
    raise BatchfileError(
        f"'$({show(name)})' in '{_short(text)}' is a record, {show(render(value))}, not a word.",
        where=where,
        hint=f"Name one of its fields, such as $({show(name)}.{next(iter(value), 'name')})" + (f" (fields: {show(fields)})." if fields else "."),
    )


def _unknown(name: str, token: str, text: str, scope: dict, where, recipe: bool) -> BatchfileError:
    if token.startswith("("):
        hint = did_you_mean(name, [k for k in scope if NAME.fullmatch(k)])
        if recipe and f"$({name})" in text:
            hint += f" For the shell's command substitution write $$({name})."
        return BatchfileError(f"unknown variable '{show(name)}' in '{_short(text)}'.", where=where, hint=hint.strip())
    return BatchfileError(f"'${name}' has no value here.", where=where, hint="$@, $< and $^ only mean something in a rule.")


def resolve(name: str, scope: dict, where, text: str, recipe: bool = False):
    """The value of a reference that is not a variable in scope: a field
    ($(m.k), $(PARAMS.train.lr)), the field of every record of a list
    ($(MODELS.name)), or one with a default ($(m.depth:-3): used when the
    variable or field does not exist or is empty)."""
    base, sep, default = name.partition(":-")
    if not sep:
        return _walk(name, scope, where, text, recipe, None)
    value = _walk(base, scope, where, text, recipe, default)
    return default if value is _MISSING or value == "" else value


def _walk(name: str, scope: dict, where, text: str, recipe: bool, default):
    value = scope.get(name, _MISSING)
    if value is not _MISSING:
        return value
    head, dot, rest = name.partition(".")
    if head not in scope or not dot:
        if default is not None:
            return _MISSING
        return _raise(_unknown(head if NAME.fullmatch(head) else name, "(" + name + ")", text, scope, where, recipe))
    value, path = scope[head], head
    for part in rest.split("."):
        if not part:
            raise BatchfileError(f"'$({show(name)})' in '{_short(text)}' is not a name: a dot is followed by no field.", where=where)
        if value.__class__ is Record:
            if part in value:
                value = value[part]
            elif default is not None:
                return _MISSING
            else:
                raise _no_field(path, value, part, where, text, origin=scope.get(head + "#", ""))
        elif value.__class__ is tuple:
            value = _project(value, path, part, where, text, default)
        else:
            raise BatchfileError(
                f"'{show(path)}' is '{_short(value)}', a word, not a record: it has no field '{show(part)}' (in '{_short(text)}').",
                where=where,
                hint="Fields belong to records: MODELS = [{name: knn, k: 5}], or data read with load().",
            )
        path += "." + part
    return value


def _raise(err):
    raise err


def _project(items: tuple, path: str, part: str, where, text: str, default):
    """$(MODELS.name): the field of every record of a list, as a list."""
    out = []
    for i, item in enumerate(items, 1):
        if item.__class__ is not Record:
            raise BatchfileError(
                f"'{show(path)}.{show(part)}': item {i} of {show(path)} is '{_short(_flat(item))}', not a record (in '{_short(text)}').",
                where=where,
                hint="A field of a list means that field of each of its records; every item must be a record.",
            )
        value = item.get(part, _MISSING)
        if value is _MISSING or (value == "" and default is not None):
            if default is None:
                raise _no_field(f"{path}[{i}]", item, part, where, text, item_of=path)
            value = default
        elif value.__class__ is tuple:
            raise BatchfileError(
                f"'{show(path)}.{show(part)}' in '{_short(text)}' would be a list of lists: the field holds a list in record {i}.",
                where=where,
                hint="Loop over the records (@for m in LIST) and use $(m.field) in each.",
            )
        out.append(value)
    return tuple(out)


def _no_field(path: str, record: Record, part: str, where, text: str, item_of: str = "", origin: str = "") -> BatchfileError:
    """A missing field: the record is named by its place (record 2 of
    MODELS; m, item 2 of MODELS) and shown."""
    what = f"record {path.rsplit('[', 1)[1][:-1]} of {show(item_of)}" if item_of else f"the record {show(path)}"
    if origin:
        what += f" ({origin}{path[len(path.split('.')[0]):] and ', field ' + show(path.split('.', 1)[1])})"
    fields = ", ".join(record) or "none"
    return BatchfileError(
        f"{what}, {show(render(record))}, has no field '{show(part)}' (in '{_short(text)}').",
        where=where,
        hint=f"Give every record a '{show(part)}', or a default in the reference: $({show(path.split('[')[0])}.{show(part)}:-VALUE). Its fields: {show(fields)}.",
    )


_SCAN = re.compile(r"\$\(|\$.?|\)|[\s(]|[^$()\s]+", re.S)
_NAMEABLE = re.compile(r"[^()\s$]*")


def flatten_refs(text: str, scope: dict, where, *, recipe: bool = False) -> str:
    """Expand the references inside references' names, inner first
    ($(C_$(m)) -> $(C_knn)), leaving flat references for expand; a '$('
    that starts no reference (a space or '(' in its name, no closing ')')
    is an error: bb never leaves one for the shell to run."""
    out: list[str] = []
    opened: list[tuple[int, int]] = []  # (index in out, position in text) of each open "$("
    for m in _SCAN.finditer(text):
        tok = m.group()
        if tok == "$(":
            opened.append((len(out), m.start()))
            out.append(tok)
        elif not opened:
            out.append(tok)
        elif tok == ")":
            start, pos = opened.pop()
            name = "".join(out[start + 1 :])
            if not name:
                raise _not_a_reference(text, pos, where, recipe)
            del out[start:]
            if opened:
                out.append(_name_part(name, text[pos : m.end()], scope, where, text, recipe))
                continue
            ref = text[pos : m.end()]
            head = name.split(".", 1)[0]
            if ref != f"$({name})" and name not in scope and head not in scope and ":-" not in name:
                raise BatchfileError(
                    f"unknown variable '{show(head)}': '{show(ref)}' names it, in '{_short(text)}'.",
                    where=where,
                    hint=did_you_mean(head, [k for k in scope if NAME.fullmatch(k)]),
                )
            out.append("$(" + name + ")")
        elif tok[0] == "$" and len(tok) == 2 and tok[1] in "@<^*":
            value = scope.get(tok[1], _MISSING)
            if value is _MISSING:
                raise _unknown(tok[1], tok[1], text, scope, where, recipe)
            out.append(_name_part(value, tok, scope, where, text, recipe, known=True))
        elif tok[0] == "$" or not _NAMEABLE.fullmatch(tok):
            raise _not_a_reference(text, opened[-1][1], where, recipe)
        else:
            out.append(tok)
    if opened:
        raise _not_a_reference(text, opened[-1][1], where, recipe)
    return "".join(out)


def _name_part(name, ref: str, scope, where, text, recipe, known=False) -> str:
    """The value of an inner reference, which becomes part of a name."""
    if known:
        value = name
    else:
        try:
            value = scope[name]
        except KeyError:
            value = resolve(name, scope, where, text, recipe)
    if value.__class__ is not str:
        kind = "a record" if value.__class__ is Record else "a list"
        raise BatchfileError(
            f"'{show(ref)}' in '{_short(text)}' is {kind}, so it cannot be part of a variable's name.",
            where=where,
            hint="Inside $(...) a reference must give one word: $(C_$(m)) with m = knn reads $(C_knn).",
        )
    if not _NAMEABLE.fullmatch(value):
        raise BatchfileError(
            f"'{show(ref)}' in '{_short(text)}' gives '{_short(value)}', which cannot be part of a variable's name (it holds a space, '$' or a parenthesis).",
            where=where,
        )
    return value


def _not_a_reference(text: str, pos: int, where, recipe: bool) -> BatchfileError:
    end = text.find(")", pos)
    piece = text[pos : end + 1] if 0 <= end < pos + 60 else text[pos : pos + 40] + ("..." if len(text) > pos + 40 else "")
    if recipe:
        hint = (
            "bb expands every $(...) in a recipe itself, so it is never the shell's command substitution:"
            " write $$(command) for that, $$((...)) for arithmetic, and $(NAME) for a variable."
        )
    else:
        hint = "A reference is $(NAME), $(m.field) or $(A_$(B)); write $$ for a literal '$'."
    return BatchfileError(f"'{show(piece)}' is not a variable reference (a name holds no spaces or parentheses, and ends with ')').", where=where, hint=hint)


def _value_of(scope: dict, name: str):
    """The value a reference would give, or None (for list detection; errors
    are left to expand)."""
    value = scope.get(name)
    if value is None and ("." in name or ":-" in name):
        try:
            value = resolve(name, scope, None, name)
        except BatchfileError:
            return None
    return value


def _is_list(scope: dict, name: str) -> bool:
    return isinstance(_value_of(scope, name), tuple)


def _has_list(text: str, scope: dict, where) -> bool:
    """Does a recipe name a list (once its nested references are resolved)?"""
    for m in REF.finditer(text):
        name = m.group(2)
        if name is None:
            if m.group(1) == "(":
                flat = flatten_refs(text, scope, where, recipe=True)
                return any(m2.group(2) and _is_list(scope, m2.group(2)) for m2 in REF.finditer(flat))
        elif isinstance(scope.get(name), tuple) or (name not in scope and _is_list(scope, name)):
            return True
    return False


def expand_recipe(text: str, scope: dict, where: Location | None, *, what: str = "", limits: Limits | None = None) -> str:
    """Expand a recipe word by word; a word holding a list variable becomes one
    word per item, as in rule headers (out/$(SETS).csv -> out/a.csv out/b.csv)."""
    if _fill(text, scope) is not None or not _has_list(text, scope, where):  # every value a string: no list
        out = expand(text, scope, where, recipe=True, what=what, limits=limits)  # no list inside: one pass
    else:
        size = 0

        def word(m):
            nonlocal size
            w = m.group(0)
            if "$" not in w:
                return w
            if _has_list(w, scope, where):
                w = " ".join(expand_words(w, scope, where, recipe=True, limits=limits))
            else:
                w = expand(w, scope, where, recipe=True, what=what, limits=limits)
            size += len(w)
            if size > MAX_VALUE:
                raise _too_long(what or "the recipe", size, where)
            return w

        out = re.sub(r"\S+", word, text)
    if len(out) > MAX_VALUE:
        raise _too_long(what or "the recipe", len(out), where)
    return out


def expand_words(word: str, scope: dict, where: Location | None, recipe: bool = False, limits: Limits | None = None) -> list[str]:
    """Expand one header word; a list variable inside a word multiplies it
    (data/$(SETS).csv -> data/a.csv data/b.csv)."""
    if "$" not in word:
        return [word]
    if _fill(word, scope) is not None:  # every value a string: no list
        return expand(word, scope, where, recipe=recipe, limits=limits).split()
    lists = []
    for m in REF.finditer(word):
        name = m.group(2)
        if name is None:
            if m.group(1) == "(":  # a nested reference: which lists does the word name once it is resolved?
                flat = flatten_refs(word, scope, where, recipe=recipe)
                lists = [m2.group(2) for m2 in REF.finditer(flat) if m2.group(2) and _is_list(scope, m2.group(2))]
                break
        elif isinstance(scope.get(name), tuple) or (name not in scope and _is_list(scope, name)):
            lists.append(name)
    if not lists:
        return expand(word, scope, where, recipe=recipe, limits=limits).split()
    names = list(dict.fromkeys(lists))
    values = {n: _value_of(scope, n) for n in names}
    count = math.prod(len(values[n]) for n in names)
    cap = limits.rule_targets if limits is not None else MAX_RULE_TARGETS
    if count > cap:
        sizes = " x ".join(f"{n}: {len(values[n]):,}" for n in names)
        raise BatchfileError(
            f"'{_short(word)}' expands to {count:,} words ({sizes}), over the limit of {cap:,}.",
            where=where,
            hint="Check which lists the word combines. " + (limits or Limits()).hint(count),
        )
    for n in names:
        if any(v.__class__ is not str for v in values[n]):
            _join(values[n], n, word, where)  # raises: a list of records is not words
    out = []
    for combo in itertools.product(*(values[n] for n in names)):
        local = dict(scope)
        local.update(zip(names, combo))
        out.extend(expand(word, local, where, recipe=recipe, limits=limits).split())
    return out


def _expand_value(value, scope: dict, where, what: str, limits):
    """Expand the references in a value written in the Batchfile: a string,
    or each string inside a list or record."""
    if value.__class__ is str:
        return expand(value, scope, where, what=what, limits=limits)
    if value.__class__ is Record:
        return Record((k, _expand_value(v, scope, where, what, limits)) for k, v in value.items())
    return tuple(_expand_value(v, scope, where, what, limits) for v in value)


def _size(value) -> int:
    """About the bytes a value holds, for the expansion budget."""
    if value.__class__ is str:
        return len(value) + 50
    if value.__class__ is Record:
        return sum(len(k) + _size(v) for k, v in value.items()) + 50
    return sum(_size(v) for v in value) + 50


def evaluate_variables(model: Batchfile, overrides: dict, limits: Limits | None = None) -> dict:
    """The variables' values, in order; command-line values win. An override
    NAME.field=value sets one field of a record (PARAMS.train.lr=0.2), after
    each assignment of NAME."""
    for k, v in overrides.items():
        check_override(k, v)
    fields = {k: v for k, v in overrides.items() if "." in k}
    scope: dict = {k: v for k, v in overrides.items() if "." not in k}
    heads = {k.split(".", 1)[0] for k in fields}
    for name in heads & scope.keys():
        scope[name] = _set_fields(name, scope[name], fields)
    for a in model.assignments:
        if a.name in overrides:
            continue
        what = f"variable '{a.name}'"
        value = a.value
        if a.loaded:  # data read with load(): taken as it is
            if limits is not None:
                limits.spend(_size(value), a.location)
        elif isinstance(value, tuple):
            value = tuple(_expand_value(v, scope, a.location, what, limits) for v in value)
        else:
            value = expand(value, scope, a.location, what=what, limits=limits)
        if a.op == "?=" and a.name in scope:
            continue
        if a.op == "+=" and a.name in scope:
            old = scope[a.name]
            if old.__class__ is Record or value.__class__ is Record:
                raise BatchfileError(
                    f"'{a.name} +=' cannot add to a record, or a record to a value.",
                    where=a.location,
                    hint="+= appends words or list items; a list of records grows with += [{name: x, k: 1}].",
                )
            if isinstance(old, tuple) or isinstance(value, tuple):
                old_t = old if isinstance(old, tuple) else tuple(old.split())
                value = old_t + (value if isinstance(value, tuple) else tuple(value.split()))
                size = 8 * len(value)
            else:
                value = f"{old} {value}".strip()
                size = len(value)
                if size > MAX_VALUE:
                    raise _too_long(what, size, a.location)
            if limits is not None:
                limits.spend(size, a.location)  # each += copies the value: bounded in all
        if a.name in heads:
            value = _set_fields(a.name, value, fields, a.location)
        scope[a.name] = value
    missing = sorted(heads - scope.keys())
    if missing:
        name = next(k for k in fields if k.split(".", 1)[0] == missing[0])
        raise UsageError(
            f"the command line sets '{name}', but the Batchfile has no variable '{missing[0]}'.",
            hint=did_you_mean(missing[0], [k for k in scope if NAME.fullmatch(k)]) or "NAME.field=VALUE sets a field of a record variable.",
        )
    return scope


def _set_fields(name: str, value, fields: dict, where=None):
    """`value` with the command line's NAME.a.b=VALUE fields set (copies,
    never changing a record the parse cache holds)."""
    for key, new in fields.items():
        head, _, path = key.partition(".")
        if head != name:
            continue
        parts = path.split(".")

        def put(record, i, done):
            if record.__class__ is not Record:
                kind = "a list" if isinstance(record, tuple) else f"'{_short(record)}'"
                raise UsageError(
                    f"the command line sets '{key}', but {done} is {kind}, not a record.",
                    hint="NAME.field=VALUE sets a field of a record (a variable given with {...} or load()).",
                )
            part = parts[i]
            if part not in record:
                raise UsageError(
                    f"the command line sets '{key}', but {done} has no field '{part}'.",
                    hint=did_you_mean(part, list(record)) or f"Its fields: {', '.join(record) or 'none'}.",
                )
            copy = Record(record)
            copy[part] = new if i == len(parts) - 1 else put(record[part], i + 1, f"{done}.{part}")
            return copy

        value = put(value, 0, name)
    return value


# ---- attributes --------------------------------------------------------------



def _one(attr: Attribute, args) -> str:
    if len(args) != 1 or isinstance(args[0], tuple):
        raise BatchfileError(f"@{attr.name} takes one value.", where=attr.location)
    return args[0]


def _int(attr, args, low=0):
    text = _one(attr, args)
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < low:
        raise BatchfileError(f"@{attr.name} takes a whole number of at least {low}, not '{_short(text)}'.", where=attr.location)
    return int(text)


def _ascii_number(text: str) -> bool:
    # units' regexes accept any Unicode digit; a size or duration is written in 0-9
    return text.isascii() and len(text) <= 40


def _memory(attr, args):
    text = _one(attr, args)
    try:
        value = units.size(text) if _ascii_number(text) else None
    except (ValueError, OverflowError):  # too many digits for a float
        value = None
    if value is None or value >= 1 << 62:
        raise BatchfileError(f"@memory takes a size such as 512M or 8G, not '{_short(text)}'.", where=attr.location)
    return value


def _timeout(attr, args):
    text = _one(attr, args)
    try:
        value = units.duration(text, "smhd", bare=True) if _ascii_number(text) else None
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value):
        raise BatchfileError(f"@timeout takes a duration such as 90s, 30m or 2h, not '{_short(text)}'.", where=attr.location)
    return value


def _names(attr, args):
    names = []
    for arg in args:
        names.extend(arg if isinstance(arg, tuple) else arg.split())
    for n in names:
        if not NAME.fullmatch(n):
            raise BatchfileError(f"@{attr.name}: '{_short(n)}' is not an environment variable name.", where=attr.location)
    return tuple(names)


def _flag(attr, args):
    if args:
        raise BatchfileError(f"@{attr.name} takes no value.", where=attr.location)
    return True


ATTRIBUTES = {
    "cpus": lambda a, v: ("cpus", _int(a, v, 1)),
    "memory": lambda a, v: ("memory", _memory(a, v)),
    "gpus": lambda a, v: ("gpus", _int(a, v, 0)),
    "timeout": lambda a, v: ("timeout", _timeout(a, v)),
    "retries": lambda a, v: ("retries", _int(a, v, 0)),
    "image": lambda a, v: ("image", _one(a, v)),
    "env": lambda a, v: ("env", _names(a, v)),
    "secret": lambda a, v: ("secrets", _names(a, v)),
    "local": lambda a, v: ("local", _flag(a, v)),
    "notebook": lambda a, v: ("notebook", _notebook(a, v)),
    "python": lambda a, v: ("function", _function(a, v)),
    "phony": lambda a, v: ("phony", _flag(a, v)),
    "default": lambda a, v: ("default", _flag(a, v)),
}


def _notebook(attr, args) -> tuple[str, ...]:
    words = [w for a in args for w in (a if isinstance(a, tuple) else a.split())]
    if not words:
        raise BatchfileError("@notebook names a notebook: @notebook notebooks/report.py [NAME=VALUE ...].", where=attr.location)
    for word in words[1:]:
        name, eq, _ = word.partition("=")
        if not eq or not NAME.fullmatch(name):
            raise BatchfileError(
                f"@notebook: '{_short(word)}' is not a parameter.",
                where=attr.location,
                hint="Parameters follow the notebook's path as NAME=VALUE words, such as model=$(m) k=5.",
            )
    return tuple(words)


def _function(attr, args) -> tuple[str, ...]:
    words = _notebook(attr, args)  # the same shape: what to run, then NAME=VALUE words
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", words[0]):
        raise BatchfileError(
            f"@python: '{_short(words[0])}' is not MODULE:FUNCTION.",
            where=attr.location,
            hint="Name the function by its module, such as @python src.train:fit (or train:fit for src/train.py).",
        )
    return words


def function_file(module: str, probes: Probes) -> str | None:
    """The project file of a module named by @python (in the Batchfile's
    folder or its src/ folder)."""
    rel = module.replace(".", "/")
    for base in ("", "src/"):
        for candidate in (f"{base}{rel}.py", f"{base}{rel}/__init__.py"):
            if probes.is_file(candidate):
                return candidate
    return None


def _function_recipe(target_name: str, function: tuple[str, ...], inputs: list[str], outputs: tuple[str, ...], rule: Rule) -> str:
    """The command line that runs a @python target (buildsys.recipes.function)."""
    if rule.recipe is not None:
        raise BatchfileError(f"'{_short(target_name)}' has both @python and recipe lines.", where=rule.location, hint="A @python rule calls the function: remove its recipe lines.")
    words = ["python3", "-m", "buildsys.recipes.function", function[0]]
    for path in inputs:
        words += ["--in", shell_word(path)]
    for path in outputs:
        words += ["--out", shell_word(path)]
    for param in function[1:]:
        words += ["-p", shell_word(param)]
    return " ".join(words)


def _notebook_recipe(target_name: str, notebook: tuple[str, ...], outputs: tuple[str, ...], rule: Rule) -> str:
    """The command line that runs a @notebook target (buildsys.recipes.notebook)."""
    if rule.recipe is not None:
        raise BatchfileError(f"'{_short(target_name)}' has both @notebook and recipe lines.", where=rule.location, hint="A @notebook rule runs the notebook: remove its recipe lines.")
    html = [o for o in outputs if o.endswith(".html")]
    if not html:
        raise BatchfileError(
            f"the @notebook rule of '{_short(target_name)}' declares no .html output for its report.",
            where=rule.location,
            hint="Name the report first among the outputs, such as reports/$(m).html (an .ipynb output keeps the executed notebook).",
        )
    ipynb = [o for o in outputs if o.endswith(".ipynb")]
    words = ["python3", "-m", "buildsys.recipes.notebook", shell_word(notebook[0]), "--html", shell_word(html[0])]
    if ipynb:
        words += ["--ipynb", shell_word(ipynb[0])]
    for param in notebook[1:]:
        words += ["-p", shell_word(param)]
    return " ".join(words)


def _attributes(rule: Rule, scope: dict, settings: Settings, limits: Limits | None = None) -> tuple[Attrs, bool, bool]:
    values: dict = {}
    where: dict = {}
    for attr in rule.attributes:
        if attr.name not in ATTRIBUTES:
            raise BatchfileError(
                f"unknown attribute '@{attr.name}'.",
                where=attr.location,
                hint=did_you_mean("@" + attr.name, ["@" + a for a in ATTRIBUTES]) or "Known attributes: @" + ", @".join(ATTRIBUTES) + ", @for.",
            )
        args = tuple(
            tuple(expand(x, scope, attr.location, limits=limits) for x in a) if isinstance(a, tuple) else expand(a, scope, attr.location, limits=limits)
            for a in attr.args
        )
        key, value = ATTRIBUTES[attr.name](attr, args)
        values[key] = value
        where[key] = attr.location
    # A rule without a recipe makes nothing: it is an alias, as in Make
    # (unless a notebook makes it).
    phony = values.pop("phony", False) or (rule.recipe is None and "notebook" not in values and "function" not in values)
    default = values.pop("default", False)
    # The settings' env and secrets apply to every target.
    if settings.env:
        values["env"] = tuple(dict.fromkeys(settings.env + values.get("env", ())))
    if settings.secrets:
        values["secrets"] = tuple(dict.fromkeys(settings.secrets + values.get("secrets", ())))
    if "env" in values and "secrets" in values:
        both = [n for n in values["secrets"] if n in values["env"]]
        if both:
            here = where.get("secrets") or where.get("env") or rule.location
            raise BatchfileError(
                f"'{both[0]}' is both an @env variable and a @secret.",
                where=here,
                hint="An @env variable's value enters the key and is recorded; a secret's never is."
                " Name it in one of them (in the rule or in the settings' env/secrets).",
            )
    return Attrs(**values), phony, default


# ---- building the graph ------------------------------------------------------


def _loop_items(loop: Loop, scope: dict, limits: Limits):
    """What one loop variable runs over: literal items, a range, or a list
    variable (a string variable's words)."""
    over = loop.over
    if isinstance(over, tuple):
        return over
    if m := RANGE.fullmatch(over):
        return range(int(m.group(1)), int(m.group(2)) + 1)
    name = over[2:-1] if over.startswith("$(") and over.endswith(")") else over
    if name not in scope and re.fullmatch(r"-?[0-9]+\.\.-?[0-9]+", over):
        raise BatchfileError(
            f"@for {loop.var} in {_short(over)}: a range's bounds have at most 18 digits.",
            where=loop.location,
            hint=f"A loop makes at most {limits.rule_targets:,} targets ({LIMIT_ENV} raises that).",
        )
    if name in scope:
        value = scope[name]
    elif ("." in name or ":-" in name) and name.split(".", 1)[0].split(":-", 1)[0] in scope:
        value = resolve(name, scope, loop.location, over)
    else:
        raise BatchfileError(
            f"@for {loop.var} in {_short(over)}: unknown variable '{_short(name)}'.",
            where=loop.location,
            hint=did_you_mean(name, scope) or "Loop over a list variable, [a, b, c], or a range such as 1..10.",
        )
    if value.__class__ is Record:
        raise BatchfileError(
            f"@for {loop.var} in {_short(over)}: {_short(name)} is a record, {_short(render(value))}, not a list.",
            where=loop.location,
            hint="A loop runs over a list; to give each item its own values, make a list of records: [{name: a, k: 1}, {name: b, k: 2}].",
        )
    return value if isinstance(value, tuple) else tuple(value.split())


def _flatten_record(var: str, record: Record, out: list) -> None:
    """(m.k, value) for every field, nested records' fields too (m.opt.lr)."""
    for key, value in record.items():
        name = f"{var}.{key}"
        out.append((name, value))
        if value.__class__ is Record:
            _flatten_record(name, value, out)


class _Uses:
    """Which fields of its record loop variables a rule's recipe and paths
    name: only those enter its targets' keys as parameters (m.k = 5), so a
    field that a rule never reads does not rebuild its targets."""

    def __init__(self, rule: Rule):
        # @notebook and @python arguments become the recipe: they count as read
        made = [w for a in rule.attributes if a.name in ("notebook", "python") for arg in a.args for w in (arg if isinstance(arg, tuple) else (arg,))]
        text = " ".join((rule.recipe or "",) + rule.outputs + rule.inputs + tuple(made))
        self.names = set()
        self.dynamic = set()  # variables whose field is named by another reference: $(m.$(F))
        for m in REF.finditer(text):
            name = m.group(2)
            if name is not None:
                self.names.add(name.split(":-", 1)[0])
            elif m.group(1) == "(":
                head = re.match(r"[A-Za-z_][A-Za-z0-9_]*\.", text[m.end() :])
                if head:
                    self.dynamic.add(head.group(0)[:-1])

        self.wanted: dict[str, bool] = {}  # field (m.k) -> does the rule read it

    def want(self, key: str) -> bool:
        hit = self.wanted.get(key)
        if hit is None:
            var = key.split(".", 1)[0]
            hit = self.wanted[key] = var in self.dynamic or key in self.names or any(
                n.startswith(key + ".") or key.startswith(n + ".") for n in self.names if n.startswith(var + ".")
            )
        return hit

    def params(self, pairs: list) -> tuple:
        """The parameters of one record: its fields the rule reads, by name."""
        wanted, out = self.wanted, []
        for k, v in pairs:
            hit = wanted.get(k)
            if hit is None:
                hit = self.want(k)
            if hit and v.__class__ is not Record:
                out.append((k, v if v.__class__ is str else render(v)))
        if len(out) > 1:
            out.sort()
        return tuple(out)


def _bindings(rule: Rule, scope: dict, limits: Limits) -> list:
    """(scope entries, params) of each instance of `rule`: the loop
    variables' values, and what of them enters the targets' keys (for a
    record, the fields the rule uses, as m.k). Their number is checked
    against the limits before anything is expanded."""
    if not rule.loops:
        return [((), ())]
    axes = []  # (loop or zip, size, [items per variable])
    for loop in rule.loops:
        if isinstance(loop, Zip):
            columns = [_loop_items(one, scope, limits) for one in loop.loops]
            sizes = [len(c) for c in columns]
            if len(set(sizes)) > 1:
                told = ", ".join(f"{_short(one.over if isinstance(one.over, str) else render(one.over))}: {n:,}" for one, n in zip(loop.loops, sizes))
                raise BatchfileError(
                    f"@for {', '.join(one.var for one in loop.loops)} in zip(...): the lists differ in length ({told}).",
                    where=loop.location,
                    hint="zip() pairs the items of lists of the same length; for every combination, write @for a in A, b in B.",
                )
            axes.append((loop, sizes[0], columns))
        else:
            items = _loop_items(loop, scope, limits)
            axes.append((loop, len(items), [items]))
    count = math.prod(size for _, size, _ in axes)
    over_rule = count > limits.rule_targets
    if over_rule or limits.made + count > limits.targets:
        sizes = " x ".join(f"{_loop_vars(loop)}: {size:,}" for loop, size, _ in axes)
        first = rule.loops[0].location
        if over_rule:
            message = f"@for makes {count:,} targets ({sizes}), over the limit of {limits.rule_targets:,} for one rule."
        else:
            message = f"@for makes {count:,} targets ({sizes}), which brings the Batchfile over its limit of {limits.targets:,} targets."
        raise BatchfileError(message, where=first, hint="Check the loops' ranges and lists. " + limits.hint(max(count, limits.made + count)))
    limits.made += count
    lists = []  # per axis: [(scope entries, params)] per item
    uses = None
    for loop, size, columns in axes:
        per_var = []
        for one, items in zip(loop.loops if isinstance(loop, Zip) else (loop,), columns):
            if isinstance(items, range):
                items = [str(i) for i in items]
            elif isinstance(one.over, tuple):
                items = [_expand_value(x, scope, one.location, f"@for {one.var}", limits) for x in items]
            entries = []
            for index, item in enumerate(items, 1):
                if item.__class__ is str:
                    pair = ((one.var, item),)
                    entries.append((pair, pair))
                    continue
                if item.__class__ is not Record:
                    raise BatchfileError(
                        f"@for {one.var}: an item of {_short(_flat(one.over))} is a list, {_short(render(item))}; a loop's items are words or records.",
                        where=one.location,
                    )
                if uses is None:
                    uses = _Uses(rule)
                pairs = [(one.var, item)]
                _flatten_record(one.var, item, pairs)
                origin = f"item {index} of {_short(one.over) if isinstance(one.over, str) else 'the @for list'}"
                # "m#" (not a variable name): where the record came from, for a missing field's error
                entries.append((tuple(pairs) + ((one.var + "#", origin),), uses.params(pairs[1:])))
            per_var.append(entries)
        if len(per_var) == 1:
            lists.append(per_var[0])
        else:
            lists.append([(sum((e[0] for e in row), ()), sum((e[1] for e in row), ())) for row in zip(*per_var)])
    if len(lists) == 1:
        return lists[0]
    out = []
    for combo in itertools.product(*lists):
        binds = tuple(itertools.chain.from_iterable(b for b, _ in combo))
        params = tuple(itertools.chain.from_iterable(p for _, p in combo))
        out.append((binds, params))
    return out


def _loop_vars(loop) -> str:
    return ", ".join(one.var for one in loop.loops) if isinstance(loop, Zip) else loop.var


def _normpath(path: str) -> str:
    # Most paths are normal already (out/t1.txt): normpath only where a
    # component could be empty, '.' or '..' (it costs as much as the rest
    # of a target's expansion).
    if path and path[0] not in "/." and "//" not in path and "/." not in path and path[-1] != "/":
        return path
    return os.path.normpath(path).replace(os.sep, "/")


def _normalize_output(path: str, where: Location) -> str:
    is_dir = path.endswith("/")
    norm = _normpath(path)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise BatchfileError(
            f"output '{path}' is outside the workspace.",
            where=where,
            hint="Outputs are paths relative to the Batchfile's folder; read outside data as inputs instead.",
        )
    return norm + "/" if is_dir else norm


def _normalize_input(path: str) -> str:
    is_dir = path.endswith("/")
    norm = _normpath(path)
    return norm + "/" if is_dir and norm != "/" else norm


@dataclass
class _Pending:
    """A rule instance whose inputs and recipe still need globbing/expansion."""

    rule: Rule
    outputs: tuple[str, ...]
    inputs: list[str]
    scope: dict
    params: tuple
    attrs: Attrs
    phony: bool


class _PatternRule:
    def __init__(self, rule: Rule, scope: dict, params: tuple, attrs: Attrs, phony: bool, limits: Limits | None = None):
        self.rule, self.scope, self.params, self.attrs, self.phony = rule, scope, params, attrs, phony
        self.outputs = [w for o in rule.outputs for w in expand_words(o, scope, rule.location, limits=limits)]
        self.inputs = [w for i in rule.inputs for w in expand_words(i, scope, rule.location, limits=limits)]
        for o in self.outputs:
            if "%" not in o:  # a list variable expanded to an item without '%'
                raise BatchfileError(f"pattern rule output '{_short(o)}' has no '%'.", where=rule.location, hint="In a pattern rule every output holds '%'.")
        self.regexes = [re.compile(re.escape(o).replace("%", "(.+)", 1) + r"\Z", re.S) for o in self.outputs]

    def match(self, path: str) -> str | None:
        for rx in self.regexes:
            m = rx.match(path)
            if m:
                return m.group(1)
        return None


@one_line
def build_graph(model: Batchfile, overrides: dict[str, str] | None = None, root: str = ".", wanted=()) -> Graph:
    """`wanted`: paths asked for on the command line, which pattern rules may make."""
    limits = Limits.from_env()
    scope = evaluate_variables(model, overrides or {}, limits)
    settings = resolve_settings(model.settings, lambda text, where: expand(text, scope, where, limits=limits))
    pending: list[_Pending] = []
    patterns: list[_PatternRule] = []
    producer: dict[str, str] = {}
    origin: dict[str, Location] = {}
    # Every folder that holds an output (and the folders above it) -> that
    # output: an output at one of them would contain another output.
    holds: dict[str, str] = {}
    names: set[str] = set()  # phony names: not paths, so nothing nests in them
    folders: set[str] = set()  # directory outputs, for messages
    default = None

    def claim(outputs, where, phony=False):
        name = outputs[0].rstrip("/")
        for out in outputs:
            key = out.rstrip("/")
            if key in producer:
                other = origin[key]
                raise BatchfileError(
                    f"'{key}' is made by two targets: here and at {other}.",
                    where=where,
                    hint="Give each output exactly one rule (a loop variable missing from an output path does this too).",
                )
            producer[key] = name
            origin[key] = where
            if phony:
                names.add(key)
                continue
            if out[-1] == "/":
                folders.add(key)
            inner = holds.get(key)
            if inner is not None:
                raise _nested(inner, out, where, origin[inner], new_is_inner=False)
            # The folders above the output; stop at one already recorded (its
            # own parents were recorded and checked with it): O(1) for siblings.
            cut = key.rfind("/")
            while cut > 0:
                folder = key[:cut]
                if folder in producer and folder not in names:
                    raise _nested(out, folder + "/" if folder in folders else folder, where, origin[folder], new_is_inner=True)
                if folder in holds:
                    break
                holds[folder] = key
                cut = key.rfind("/", 0, cut)

    shared_attrs: dict[Attrs, Attrs] = {}
    # A rule without @ lines has the settings' attributes, and is an alias if
    # it has no recipe: two possible values, each worked out once.
    bare: dict[bool, tuple] = {}
    for rule in model.rules:
        is_pattern = any("%" in o for o in rule.outputs)
        if is_pattern and not all("%" in o for o in rule.outputs):
            raise BatchfileError(
                "in a pattern rule every output holds '%'.",
                where=rule.location,
                hint="Give the outputs without '%' a rule of their own.",
            )
        # Attributes without a variable are the same for every binding:
        # worked out once, not once per target of a 100,000-way @for.
        has_recipe = rule.recipe is not None
        if not rule.attributes and has_recipe in bare:
            fixed = bare[has_recipe]
        else:
            fixed = None if any("$" in repr(attr.args) for attr in rule.attributes) else _attributes(rule, scope, settings, limits)
            if fixed is not None:
                fixed = (shared_attrs.setdefault(fixed[0], fixed[0]), *fixed[1:])
                if not rule.attributes:
                    bare[has_recipe] = fixed
        for binds, params in _bindings(rule, scope, limits):
            local = dict(scope)
            local.update(binds)
            if fixed is None:
                attrs, phony, is_default = _attributes(rule, local, settings, limits)
                attrs = shared_attrs.setdefault(attrs, attrs)  # one object per distinct value: a smaller graph cache
            else:
                attrs, phony, is_default = fixed
            if is_pattern:
                patterns.append(_PatternRule(rule, local, params, attrs, phony, limits))
                continue
            outputs = [w for o in rule.outputs for w in expand_words(o, local, rule.location, limits=limits)]
            if not outputs:
                raise BatchfileError("a rule must name at least one output or target.", where=rule.location)
            outputs = tuple(outputs if phony else (_normalize_output(o, rule.location) for o in outputs))
            if phony and len(outputs) != 1:
                raise BatchfileError("a @phony target has exactly one name.", where=rule.location)
            claim(outputs, rule.location, phony)
            inputs = [w for i in rule.inputs for w in expand_words(i, local, rule.location, limits=limits)]
            limits.bytes_left -= 8 * (len(inputs) + len(outputs))
            if limits.bytes_left < 0:
                limits.spend(0, rule.location)
            pending.append(_Pending(rule, outputs, inputs, local, params, attrs, phony))
            if is_default and default is None:
                default = outputs[0].rstrip("/")
    if default is None and pending:
        default = pending[0].outputs[0].rstrip("/")

    made_dirs = {o.rstrip("/") for p in pending for o in p.outputs if o.endswith("/")}
    # What the expansion asks of the disk, kept with the graph: the graph
    # cache and the no-op stamp ask again where a folder changed.
    probes = Probes(root)
    exists = probes.exists

    def made_by(path: str) -> str | None:
        return _maker(producer, made_dirs, path)

    # Pattern rules are instantiated for paths that need a maker: a work list,
    # so chains of pattern rules (a.c -> a.o -> a) never recurse.
    work = [i for p in pending for i in p.inputs if not _is_glob(i)]
    work.extend(wanted)
    seen_paths = set()
    per_pattern: dict[int, int] = {}
    while work and patterns:
        path = _normalize_input(work.pop())
        if path in seen_paths or made_by(path) is not None:
            continue
        seen_paths.add(path)
        for pat in patterns:
            stem = pat.match(path)
            if stem is None:
                continue
            ins = [i.replace("%", stem) for i in pat.inputs]
            if not all(exists(i) or made_by(_normalize_input(i)) is not None or any(p.match(_normalize_input(i)) is not None for p in patterns) for i in ins if not _is_glob(i)):
                continue
            outs = tuple(_normalize_output(o.replace("%", stem, 1), pat.rule.location) for o in pat.outputs)
            made = per_pattern[id(pat.rule)] = per_pattern.get(id(pat.rule), 0) + 1
            limits.made += 1
            if made > limits.rule_targets or limits.made > limits.targets:
                raise BatchfileError(
                    f"the pattern rule makes over {min(limits.rule_targets, limits.targets):,} targets"
                    f" (the last one for '{_short(path)}'), over the limit.",
                    where=pat.rule.location,
                    hint="Check which paths it matches (a pattern such as % matches anything). " + limits.hint(2 * limits.made),
                )
            limits.spend(8 * (len(ins) + len(outs)) + sum(map(len, ins)) + sum(map(len, outs)), pat.rule.location)
            local = dict(pat.scope)
            local["*"] = stem
            inst = _Pending(pat.rule, outs, ins, local, pat.params + (("*", stem),), pat.attrs, pat.phony)
            claim(outs, pat.rule.location, pat.phony)
            for o in outs:
                if o.endswith("/"):
                    made_dirs.add(o.rstrip("/"))
            pending.append(inst)
            work.extend(i for i in ins if not _is_glob(i))
            break

    # Globs match files on disk and outputs that targets will make.
    declared = sorted(producer)
    usage: dict = {}
    targets: dict[str, Target] = {}
    deps: dict[str, tuple[str, ...]] = {}
    needers: dict[str, list[Target]] = {}
    for p in pending:
        inputs: list[str] = []
        for word in p.inputs:
            if _is_glob(word):
                found = probes.glob(word, declared)
                if not found:
                    raise BatchfileError(
                        f"input pattern '{word}' of '{p.outputs[0]}' matches no file and no target's output.",
                        where=p.rule.location,
                        hint="Check the pattern, or create the files it should match.",
                    )
                for f in found:
                    if not f.isascii() and not _utf8(f):
                        raise BatchfileError(
                            f"input pattern '{_short(word)}' of '{_short(p.outputs[0])}' matches '{_short(f.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace'))}',"
                            " a file name that is not UTF-8 text.",
                            where=p.rule.location,
                            hint="Rename the file (names enter recipes and keys as text), or narrow the pattern.",
                        )
                inputs.extend(found)
            else:
                inputs.append(_normalize_input(word))
        if p.attrs.notebook:
            inputs.append(_normalize_input(p.attrs.notebook[0]))  # the notebook is an input
        given = list(dict.fromkeys(inputs))  # what a @python function is given (not `declared`: the globs' outputs list)
        if p.attrs.function:
            module = p.attrs.function[0].partition(":")[0]
            found = function_file(module, probes)
            if found is None:
                raise BatchfileError(
                    f"@python: no module '{_short(module)}' in the project (looked for {module.replace('.', '/')}.py here and in src/).",
                    where=p.rule.location,
                )
            inputs.append(found)  # its module is an input; what it imports is tracked (keys.imports)
        inputs = list(dict.fromkeys(inputs))
        name = p.outputs[0].rstrip("/")
        recipe = None
        if p.attrs.notebook:
            recipe = _notebook_recipe(name, p.attrs.notebook, p.outputs, p.rule)
        elif p.attrs.function:
            recipe = _function_recipe(name, p.attrs.function, given, p.outputs, p.rule)
        elif p.rule.recipe is not None:
            # The automatic variables hold paths, some from globs: any file
            # name at all. They reach the shell as quoted words where a name
            # needs it ('a b.csv'); plain names (data/a.csv) stay as they are.
            quoted_in = tuple(map(shell_word, inputs)) if _UNSAFE("".join(inputs)) else tuple(inputs)
            quoted_out = tuple(map(shell_word, p.outputs)) if _UNSAFE("".join(p.outputs)) else p.outputs
            local = dict(p.scope)
            local.update({"@": quoted_out[0], "<": quoted_in[0] if quoted_in else "", "^": " ".join(quoted_in), "in": quoted_in, "out": quoted_out})
            local["*"] = shell_word(local.get("*", ""))
            recipe = expand_recipe(p.rule.recipe, local, Location(p.rule.location.file, p.rule.recipe_line), what=f"the recipe of '{_short(name)}'", limits=limits)
        target = Target(name, p.outputs, tuple(inputs), recipe, tuple(p.params), p.attrs, p.phony, p.rule.location, _used_variables(p.rule, scope, usage, p.scope))
        targets[name] = target
        dep_names = []
        for i in inputs:
            maker = made_by(i.rstrip("/"))
            if maker == name:
                raise BatchfileError(
                    f"'{name}' lists its own output '{i}' as an input.",
                    where=p.rule.location,
                    hint="A recipe that updates a file in place needs the old version under another name.",
                )
            if maker is not None:
                dep_names.append(maker)
            elif maker is None and not exists(i):
                needers.setdefault(i, []).append(target)
        deps[name] = tuple(dict.fromkeys(dep_names))

    if needers:
        lines = []
        for path, who in list(needers.items())[:10]:
            names = ", ".join(f"'{t.name}' ({t.location})" for t in who[:3]) + (" and more" if len(who) > 3 else "")
            guess = did_you_mean(path, declared + _neighbours(path, root))
            lines.append(f"  '{path}' needed by {names}" + (f". {guess}" if guess else ""))
        raise BatchfileError(
            f"{len(needers)} input(s) do not exist and no target makes them.",
            hint="Create them, fix the paths, or add rules that make them.",
            detail="\n".join(lines),
        )
    graph = Graph(targets, deps, producer, default, settings, made_dirs, probes.by_folder)
    _postorder(graph, graph.targets)  # raises on a cycle
    return graph


_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII).search


def shell_word(text: str) -> str:
    """`text` as one shell word: shlex.quote, except that "" stays empty
    (a rule without inputs has an empty $<, not '')."""
    if not text or _UNSAFE(text) is None:
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _nested(inner: str, outer: str, here: Location, there: Location, *, new_is_inner: bool) -> BatchfileError:
    """The output claimed `here` nests with one claimed `there` (maybe the same rule)."""
    if new_is_inner:
        what = f"output '{_short(inner)}' lies inside output '{_short(outer)}'"
    else:
        what = f"output '{_short(outer)}' would hold output '{_short(inner)}'"
    other = "of the same rule" if here == there else f"made by the rule at {there}"
    return BatchfileError(
        f"{what}, {other}.",
        where=here,
        hint="A path is either a file or a folder, and a folder output owns everything inside it:"
        " give one of them another path, or declare only the folder (with a trailing '/').",
    )


def _used_variables(rule: Rule, scope: dict, memo: dict, local: dict | None = None) -> tuple:
    """The Batchfile variables (and fields of record variables) a rule's
    recipe and paths name, with their values, for `bb why`. Names that a
    nested reference builds ($(C_$(m)) -> C_knn) depend on the instance."""
    key = id(rule)  # hashing a frozen rule hashes all its fields: slow on big graphs
    entry = memo.get(key)
    if entry is None:
        text = " ".join((rule.recipe or "",) + rule.outputs + rule.inputs)
        loop_vars = {one.var for loop in rule.loops for one in (loop.loops if isinstance(loop, Zip) else (loop,))}
        names, nested = [], False
        for m in REF.finditer(text):
            if m.group(2) is not None:
                names.append(m.group(2))
            elif m.group(1) == "(":
                nested = True
        entry = memo[key] = (_global_values(names, scope, loop_vars), nested, text, loop_vars)
    found, nested, text, loop_vars = entry
    if not nested or local is None:
        return found
    try:
        flat = flatten_refs(text, local, None)
    except BatchfileError:
        return found
    known = {n for n, _ in found}
    more = [m.group(2) for m in REF.finditer(flat) if m.group(2) is not None and m.group(2) not in known]
    return found + _global_values(more, scope, loop_vars)


def _global_values(names: list, scope: dict, loop_vars: set) -> tuple:
    out = []
    for name in dict.fromkeys(names):
        head = re.split(r"\.|:-", name, maxsplit=1)[0]
        if head in loop_vars or head not in scope:
            continue
        if name in scope:
            out.append((name, _flat(scope[name])))
        else:
            try:
                out.append((name, _flat(resolve(name, scope, None, name))))
            except BatchfileError:
                pass
    return tuple(out)


def _neighbours(path: str, root: str) -> list[str]:
    """Files beside a missing path, for "did you mean"."""
    folder = os.path.dirname(path)
    try:
        return [os.path.join(folder, n) if folder else n for n in os.listdir(os.path.join(root, folder) if folder else root)]
    except OSError:
        return []


def _utf8(name: str) -> bool:
    """False for a file name read from disk whose bytes are not UTF-8 (Python
    keeps them as lone surrogates, which no key or recipe can encode)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _is_glob(word: str) -> bool:
    return "*" in word or "?" in word


def _postorder(graph: Graph, roots) -> list[str]:
    """Depth-first, iteratively (deep chains never hit a recursion limit);
    a cycle is reported with its path."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(graph.deps[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            for dep in it:
                s = state.get(dep)
                if s == 1:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(dep) :] + [dep]
                    raise BatchfileError(
                        "dependency cycle: " + " -> ".join(cycle) + ".",
                        where=graph.targets[dep].location,
                        hint="A target cannot need its own output, directly or through others.",
                    )
                if s is None:
                    state[dep] = 1
                    stack.append((dep, iter(graph.deps[dep])))
                    break
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order


@one_line
def select(graph: Graph, names: list[str]) -> list[str]:
    """Resolve command-line target names: a target, an output path, or a glob."""
    if not names:
        if graph.default is None:
            raise BatchfileError("the Batchfile declares no targets.", hint="Add a rule such as 'out.txt: in.txt'.")
        return [graph.default]
    chosen = []
    for name in names:
        norm = _normalize_input(name).rstrip("/")
        maker = graph.producer_of(norm) if norm not in graph.targets else norm
        if maker is not None:
            chosen.append(maker)
            continue
        if _is_glob(name):
            hits = [t for t in graph.targets if fnmatch.fnmatch(t, name)]
            if hits:
                chosen.extend(hits)
                continue
        raise BatchfileError(
            f"no target named '{name}'.",
            hint=did_you_mean(name, graph.targets) or "Run 'bb list' to see the targets.",
        )
    return list(dict.fromkeys(chosen))
