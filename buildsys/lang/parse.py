"""Batchfile text -> model objects, with Lark (LALR, contextual lexer).

A parsed Batchfile is cached under the workspace's state folder, keyed by the
bytes of every file it read, so a no-op build never imports Lark.
"""
from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

from buildsys.errors import BatchfileError, Location
from buildsys.lang.model import Assignment, Attribute, Batchfile, Loop, Rule, Setting

# A link to grammar/batchfile.lark, so the grammar ships inside the package.
GRAMMAR = Path(__file__).parent / "batchfile.lark"

# What the parser expects, in words a user knows.
TOKEN_WORDS = {
    "WORD": "a path or name",
    "ARG": "an attribute value",
    "STRING": "a quoted string",
    "RAW": "a value",
    "RECIPE_LINE": "an indented recipe line",
    "SETTING_NAME": "an indented 'name = value' setting",
    "_NL": "the end of the line",
    "COLON": "':'",
    "ASSIGN_OP": "'='",
    "EQUAL": "'='",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "AT": "'@'",
    "IN": "'in'",
    "FOR": "'for'",
    "INCLUDE": "'include'",
    "SETTINGS": "'settings'",
    "$END": "the end of the file",
}

_parser = None


def _lark():
    global _parser
    if _parser is None:
        from lark import Lark

        _parser = Lark(GRAMMAR.read_text(), parser="lalr", lexer="contextual", cache=True)
    return _parser


def _unquote(token: str) -> str:
    body = token[1:-1]
    return body.encode("utf-8").decode("unicode_escape") if "\\" in body else body


class _ToModel:
    """Walks Lark's tree into model objects (a Transformer, written out so
    each node type reads as one method)."""

    def __init__(self, path: str, lines: list[str]):
        self.path = path
        self.lines = lines

    def loc(self, token) -> Location:
        return Location(self.path, token.line, token.column)

    def value(self, node):
        kind = node.data
        if kind == "list":
            return tuple(self.value(child) for child in node.children if child is not None)
        if kind == "string":
            return _unquote(str(node.children[0]))
        if kind in ("raw", "word"):
            return str(node.children[0]).strip()
        if kind == "empty":
            return ""
        raise AssertionError(kind)

    def statements(self, tree):
        for node in tree.children:
            yield getattr(self, node.data)(node)

    def assignment(self, node):
        name, op, value = node.children
        if not name.isidentifier():
            raise BatchfileError(
                f"'{name}' is not a valid variable name.",
                where=self.loc(name),
                hint="Variable names are letters, digits and '_' and start with a letter.",
            )
        return Assignment(str(name), str(op), self.value(value), self.loc(name))

    def include(self, node):
        token = node.children[0]
        name = _unquote(token) if token.type == "STRING" else str(token)
        return ("include", name, self.loc(token))

    def settings(self, node):
        out = []
        for setting in node.children:
            name, value = setting.children
            out.append(Setting(name.strip(), self.value(value), Location(self.path, name.line, len(name) - len(name.lstrip()) + 1)))
        return ("settings", out)

    def rule(self, node):
        attributes, loops = [], []
        header = recipe = None
        for child in node.children:
            if child.data == "for_loop":
                for loop in child.children:
                    var, over = loop.children
                    items = self.value(over) if hasattr(over, "data") else str(over)
                    loops.append(Loop(str(var), items, self.loc(var)))
            elif child.data == "attribute":
                name, *args = child.children
                attributes.append(Attribute(str(name), tuple(self.value(a) for a in args), self.loc(name)))
            elif child.data == "header":
                header = child
            elif child.data == "recipe":
                recipe = child
        outputs, inputs = (tuple(str(w) for w in part.children) for part in header.children)
        text, first_line = self.recipe_text(recipe) if recipe is not None else (None, 0)
        first = header.children[0].children[0]
        return Rule(outputs, inputs, text, tuple(attributes), tuple(loops), self.loc(first), first_line)

    def recipe_text(self, recipe):
        # Rebuild from the source lines so blank lines and comment lines inside
        # a recipe (a heredoc, say) reach the shell as written.
        first, last = recipe.children[0].line, recipe.children[-1].line
        body = [line for line in self.lines[first - 1 : last] if not line.strip() or line[0] in " \t"]
        return textwrap.dedent("\n".join(line.rstrip() for line in body)), first


def _syntax_error(err, path: str, text: str) -> BatchfileError:
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

    line, column = getattr(err, "line", 0), getattr(err, "column", 0)
    source = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
    caret = f"    {source}\n    {' ' * (max(column, 1) - 1)}^"
    expected = sorted({TOKEN_WORDS.get(t, t.lower()) for t in getattr(err, "expected", None) or getattr(err, "allowed", None) or ()})
    if isinstance(err, UnexpectedToken):
        kind = err.token.type
        found = "end of file" if kind == "$END" else "end of line" if kind == "_NL" else f"'{err.token}'"
    elif isinstance(err, UnexpectedCharacters):
        found = f"'{err.char}'"
    else:
        found = "input"
    message = f"syntax error: unexpected {found}."
    hint = ("Expected " + ", ".join(expected) + ".") if expected else ""
    if source[:1] in (" ", "\t") and "':'" in expected:
        # an indented line read as a top-level statement: it follows no rule or settings block
        hint += (
            " This line is indented but follows no rule header: recipe lines go under an"
            " 'outputs: inputs' line, settings under 'settings:'; other lines start at column 1."
        )
    return BatchfileError(message, where=Location(path, line, column), hint=hint, detail=caret)


def parse_text(text: str, path: str) -> tuple[list, list[tuple[str, Location]]]:
    """Parse one file into its statements, in order; includes are left as markers."""
    from lark.exceptions import UnexpectedInput

    if not text.endswith("\n"):
        text += "\n"
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, path, text) from None
    return list(_ToModel(path, text.splitlines()).statements(tree))


def parse_file(path: str | os.PathLike) -> Batchfile:
    """Parse a Batchfile and everything it includes (paths relative to the including file)."""
    root = Path(path)
    assignments, rules, settings, sources = [], [], [], []
    seen: set[Path] = set()

    def read(file: Path, where):
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise BatchfileError(
                f"cannot read '{file}': no such file.",
                where=where,
                hint="Check the path (includes are relative to the including file), or pass -f FILE.",
            ) from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
            raise BatchfileError(f"cannot read '{file}': {err}.", where=where) from None
        sources.append(str(file))
        return parse_text(text, _display(file))

    # Includes are spliced in place: walk a stack of iterators, not recursion.
    pending = [iter(read(root, None))]
    files = [root]
    seen.add(root.resolve())
    while pending:
        try:
            item = next(pending[-1])
        except StopIteration:
            pending.pop()
            files.pop()
            continue
        if isinstance(item, Assignment):
            assignments.append(item)
        elif isinstance(item, Rule):
            rules.append(item)
        elif item[0] == "settings":
            settings.extend(item[1])
        else:
            _, name, where = item
            target = files[-1].parent / name
            if target.resolve() in seen:
                raise BatchfileError(f"'{name}' is included twice (or includes itself).", where=where)
            seen.add(target.resolve())
            pending.append(iter(read(target, where)))
            files.append(target)
    return Batchfile(str(root), tuple(assignments), tuple(rules), tuple(settings), tuple(sources))


def _display(file: Path) -> str:
    try:
        return os.path.relpath(file)
    except ValueError:
        return str(file)


def load(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Batchfile:
    """parse_file, through a cache keyed by the bytes of every file read."""
    if cache_dir is None:
        return parse_file(path)
    from buildsys.digest import hash_bytes

    main = Path(path)
    try:
        head = main.read_bytes()
    except OSError:
        return parse_file(path)
    key = hash_bytes(head + GRAMMAR.read_bytes() + str(main).encode())
    entry = Path(cache_dir) / "parse" / key
    try:
        with open(entry, "rb") as f:
            cached, digests = pickle.load(f)
        if all(hash_bytes(Path(p).read_bytes()) == d for p, d in digests):
            return cached
    except Exception:  # a missing, stale or unreadable cache entry is just a miss
        pass
    model = parse_file(path)
    try:
        digests = [(p, hash_bytes(Path(p).read_bytes())) for p in model.sources]
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump((model, digests), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, entry)
    except OSError:
        pass
    return model
