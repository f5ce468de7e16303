"""Batchfile text -> model objects, with Lark (LALR, contextual lexer).

A parsed Batchfile is cached under the workspace's state folder, keyed by the
bytes of every file it read, so a no-op build never imports Lark.
"""
from __future__ import annotations

import codecs
import errno
import os
import pickle
import re
import stat
import sys
import textwrap

from buildsys.errors import BatchfileError
from buildsys.files import write_cache_entry
from buildsys.lang.model import Assignment, Attribute, Batchfile, Location, Loop, Record, Rule, Setting, Zip, one_line, show

# A link to grammar/batchfile.lark, so the grammar ships inside the package.
GRAMMAR = os.path.join(os.path.dirname(__file__), "batchfile.lark")

# What the parser expects, in words a user knows.
TOKEN_WORDS = {
    "WORD": "a path or name",
    "ARG": "an attribute value",
    "STRING": "a quoted string",
    "RAW": "a value",
    "RECIPE_LINE": "an indented recipe line",
    "HEADER": "a path or name",  # (a whole rule header: where one may start, so may a word)
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
    "LOAD": "'load('",
    "ZIP": "'zip('",
    "ZIP_ARG": "a list's name or a range",
    "FIELD": "a field name",
    "VALUE": "a field's value",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "RPAR": "')'",
    "$END": "the end of the file",
}

# Limits that keep a hostile or mistaken file from reading or parsing forever.
MAX_FILE_BYTES = 16 << 20  # one Batchfile (each include counts on its own)
# One physical line. Lark's cost is per token (about 5 us), not per line: a
# 5 MB line of 2.5 million words takes 13 s, a 5 MB quoted string 0.2 s. A
# generated Batchfile may list 100,000 inputs on one line (bench/gen.py writes
# 1.5 MB lines), so the cap stops only lines no person or generator means.
MAX_LINE_CHARS = 4 << 20

# Pseudo-filesystems whose "regular files" are not text a user wrote
# (/proc/self/mem reads the process's memory, /sys files are device state).
_PSEUDO = ("/proc/", "/sys/")

# Bumped when parsing changes what it accepts, so that no cached parse of a
# file the new rules reject is reused.
_CACHE_VERSION = b"parse-3"

_parser = None


def _lark():
    global _parser
    if _parser is None:
        # Lark imports the third-party `regex` module wherever one is
        # installed (~10 ms of every parse's start) and needs it only for
        # Unicode categories in a grammar, which this one has none of: it is
        # kept out of Lark's sight, and importable again afterwards.
        hidden = "regex" not in sys.modules
        if hidden:
            sys.modules["regex"] = None
        try:
            from lark import Lark
        finally:
            if hidden:
                del sys.modules["regex"]
        _parser = Lark(_grammar().decode(), parser="lalr", lexer="contextual", cache=True)
    return _parser


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]*\}|[0-7]{1,3}|.)", re.S)
_SIMPLE = set("\\'\"abfnrtv")


def _unquote(token: str, where: Location | None = None) -> str:
    """A quoted string's text, with Python's escapes (\\n, \\t, \\x41, \\u00e9);
    an unknown escape such as \\d stays as written."""
    body = token[1:-1]
    if "\\" not in body:
        return body

    def sub(m):
        code = m.group(1)
        if code[0] in _SIMPLE or code[0] in "01234567" or len(code) > 1:
            try:
                out = codecs.decode("\\" + code, "unicode_escape")
            except (UnicodeDecodeError, ValueError, OverflowError):
                out = None
            if out == "\0":
                raise BatchfileError(
                    f"'{m.group(0)}' in a quoted string makes a NUL character, which no path, name or recipe may hold.",
                    where=where,
                    hint="Remove it; to pass a NUL to a program, let the recipe make it (printf '\\0').",
                )
            if out is not None and not ("\ud800" <= out <= "\udfff"):
                return out
        elif code not in "xuUN":
            return m.group(0)  # \d, \. ...: kept for the shell or a regex
        raise BatchfileError(
            f"bad escape '{m.group(0)}' in a quoted string.",
            where=where,
            hint="Write \\\\ for a backslash; \\xHH, \\uHHHH and \\N{NAME} must name a valid character (not a lone surrogate).",
        )

    return _ESCAPE.sub(sub, body)


class _Load:
    """`NAME = load("file")` until parse_file reads the file (relative to
    the Batchfile that names it)."""

    def __init__(self, name: str, location: Location):
        self.name, self.location = name, location

    def __eq__(self, other) -> bool:
        return isinstance(other, _Load) and (self.name, self.location) == (other.name, other.location)

    def __hash__(self) -> int:
        return hash((self.name, self.location))

    def __repr__(self) -> str:
        return f"_Load({self.name!r}, {self.location!r})"


class _ToModel:
    """Walks Lark's tree into model objects (a Transformer, written out so
    each node type reads as one method)."""

    def __init__(self, path: str, lines: list[str]):
        self.path = path
        self.lines = lines

    def loc(self, token) -> Location:
        return Location(self.path, token.line, token.column)

    def value(self, node, where: str = ""):
        """A value; `where` names a place that takes only strings and plain
        lists (a setting, an attribute), where a record or load() is an error."""
        kind = node.data
        if kind == "list":
            return tuple(self.value(child, where) for child in node.children if child is not None)
        if kind == "string":
            return _unquote(str(node.children[0]), self.loc(node.children[0]))
        if kind in ("raw", "word"):
            return str(node.children[0]).strip()
        if kind == "empty":
            return ""
        if kind == "record":
            return self.record(node, where)
        if kind == "load":
            opener, name = node.children
            if where:
                raise BatchfileError(f"{where} cannot be load()ed.", where=self.loc(opener), hint="load() gives a variable its value: PARAMS = load(\"params.yaml\").")
            return _Load(_unquote(str(name), self.loc(name)), self.loc(name))
        raise AssertionError(kind)

    def record(self, node, where: str = "") -> Record:
        brace = node.children[0]
        if where:
            raise BatchfileError(
                f"{where} takes words and lists, not a record ({{...}}).",
                where=self.loc(brace),
                hint="Records are for variables and @for loops: MODELS = [{name: knn, k: 5}].",
            )
        out = Record()
        for field in node.children[1:]:
            if field is None:
                continue
            key, value = field.children
            name = _unquote(str(key), self.loc(key)) if key.type == "STRING" else str(key)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
                raise BatchfileError(
                    f"'{show(name)}' is not a field name.",
                    where=self.loc(key),
                    hint="A field name is letters, digits, '_' and '-', and starts with a letter or '_'.",
                )
            if name in out:
                raise BatchfileError(f"the record gives the field '{name}' twice.", where=self.loc(key))
            out[name] = self.value(value)
        return out

    def statements(self, tree):
        for node in tree.children:
            yield getattr(self, node.data)(node)

    def assignment(self, node):
        name, op, value = node.children
        if not name.isidentifier():
            raise BatchfileError(
                f"'{show(name)}' is not a valid variable name.",
                where=self.loc(name),
                hint="Variable names are letters, digits and '_' and start with a letter.",
            )
        return Assignment(str(name), str(op), self.value(value), self.loc(name))

    def include(self, node):
        token = node.children[0]
        name = _unquote(token, self.loc(token)) if token.type == "STRING" else str(token)
        return ("include", name, self.loc(token))

    def settings(self, node):
        out = []
        for setting in node.children:
            name, value = setting.children
            out.append(Setting(name.strip(), self.value(value, f"setting '{name.strip()}'"), Location(self.path, name.line, len(name) - len(name.lstrip()) + 1)))
        return ("settings", out)

    def rule(self, node):
        attributes, loops = [], []
        header = recipe = None
        for child in node.children:
            if child.data == "for_loop":
                for loop in child.children:
                    if loop.data == "zip_loop":
                        loops.append(self.zip_loop(loop))
                        continue
                    var, over = loop.children
                    items = self.value(over) if hasattr(over, "data") else str(over)
                    loops.append(Loop(str(var), items, self.loc(var)))
            elif child.data == "attribute":
                name, *args = child.children
                attributes.append(Attribute(str(name), tuple(self.value(a, f"@{name}") for a in args), self.loc(name)))
            elif child.data == "header":
                header = child
            elif child.data == "recipe":
                recipe = child
        line = header.children[0]
        if hasattr(line, "data"):
            outputs, inputs = (tuple(str(w) for w in part.children) for part in header.children)
            first = line.children[0]
        else:  # one HEADER token: its words, as the lexer would have cut them
            outputs, inputs = _header_words(line)
            first = line
        text, first_line = self.recipe_text(recipe) if recipe is not None else (None, 0)
        return Rule(outputs, inputs, text, tuple(attributes), tuple(loops), self.loc(first), first_line)

    def zip_loop(self, node) -> Zip:
        names = [c for c in node.children if not hasattr(c, "data") and c.type == "WORD"]
        overs = [c for c in node.children if hasattr(c, "data")]
        opener = next(c for c in node.children if not hasattr(c, "data") and c.type == "ZIP")
        if len(names) != len(overs):
            raise BatchfileError(
                f"@for {', '.join(names)} in zip(...) names {len(names)} variables for {len(overs)} lists.",
                where=self.loc(opener),
                hint="zip() takes one list per variable: @for m, d in zip(MODELS, DATASETS).",
            )
        if len(set(map(str, names))) != len(names):
            raise BatchfileError("@for names the same variable twice.", where=self.loc(names[0]))
        loops = tuple(Loop(str(n), self.value(o) if o.data == "list" else str(o.children[0]), self.loc(n)) for n, o in zip(names, overs))
        return Zip(loops, self.loc(names[0]))

    def recipe_text(self, recipe):
        # Rebuild from the source lines so blank lines and comment lines inside
        # a recipe (a heredoc, say) reach the shell as written.
        first, last = recipe.children[0].line, recipe.children[-1].line
        body = [line for line in self.lines[first - 1 : last] if not line.strip() or line[0] in " \t"]
        return textwrap.dedent("\n".join(line.rstrip() for line in body)), first


_words = None


def _header_words(header: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A HEADER token's outputs and inputs, cut with the grammar's own WORD
    pattern (greedy, as the lexer matches it; a ':' inside $(...) stays in
    its word)."""
    global _words
    if _words is None:
        _words = re.compile(f"(?:{_lark().get_terminal('WORD').pattern.to_regexp()})|:")
    words = [m.group() for m in _words.finditer(header)]
    colon = words.index(":")
    return tuple(words[:colon]), tuple(words[colon + 1 :])


def _excerpt(source: str, column: int) -> str:
    """The source line and a caret under `column` (tabs kept, so the caret
    lines up); a long line is cut to a window around the column."""
    at = max(column, 1) - 1
    start = max(0, at - 80)
    piece = source[start : start + 160]
    lead = "..." if start else ""
    shown = lead + "".join(c if c.isprintable() or c == "\t" else "?" for c in piece) + ("..." if start + 160 < len(source) else "")
    pad = " " * len(lead) + "".join("\t" if c == "\t" else " " for c in piece[: at - start])
    return f"    {shown.rstrip()}\n    {pad}^"


def _syntax_error(err, path: str, text: str) -> BatchfileError:
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

    line, column = getattr(err, "line", 0), getattr(err, "column", 0)
    # Lark counts lines by "\n" alone (str.splitlines also breaks at \x0c, \u2028...)
    lines = text.split("\n")
    source = lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
    caret = _excerpt(source, column)
    expected = sorted({TOKEN_WORDS.get(t, t.lower()) for t in getattr(err, "expected", None) or getattr(err, "allowed", None) or ()})
    if isinstance(err, UnexpectedToken):
        kind = err.token.type
        # (a whole header line where no word may stand: the word-by-word
        # reading stops at its first word, and so does the message)
        token = _header_words(err.token)[0][0] if kind == "HEADER" else str(err.token)
        found = "end of file" if kind == "$END" else "end of line" if kind == "_NL" else f"'{show(token)}'"
    elif isinstance(err, UnexpectedCharacters):
        found = f"'{show(err.char)}'"
    else:
        found = "input"
    message = f"syntax error: unexpected {found}."
    hint = ("Expected " + ", ".join(expected) + ".") if expected else ""
    if re.match(r"[A-Za-z_][A-Za-z0-9_]*[ \t]*[+?]?=[ \t]*\{", source) and column > source.index("{"):
        hint += " A value that starts with '{' is a record, such as {name: knn, k: 5}; quote a string that starts with '{'."
    if source[:1] in (" ", "\t") and "':'" in expected:
        # an indented line read as a top-level statement: it follows no rule or settings block
        hint += (
            " This line is indented but follows no rule header: recipe lines go under an"
            " 'outputs: inputs' line, settings under 'settings:'; other lines start at column 1."
        )
    return BatchfileError(message, where=Location(path, line, column), hint=hint, detail=caret)


def _where(text: str, index: int, path: str) -> Location:
    """The line and column (1-based, in characters) of text[index]."""
    line_start = text.rfind("\n", 0, index) + 1
    return Location(path, text.count("\n", 0, index) + 1, index - line_start + 1)


def check_text(text: str, path: str) -> None:
    """Reject what no Batchfile holds before Lark sees it: a NUL character
    (a binary file, or a path that the OS would cut short) and lines so long
    that parsing them takes seconds."""
    nul = text.find("\0")
    if nul >= 0:
        raise BatchfileError(
            "the file holds a NUL character (byte 0); a Batchfile is text.",
            where=_where(text, nul, path),
            hint="Remove it; if this is not your Batchfile, check the path given to -f or include.",
        )
    if len(text) > MAX_LINE_CHARS:
        for number, line in enumerate(text.split("\n"), 1):
            if len(line) > MAX_LINE_CHARS:
                raise BatchfileError(
                    f"line {number} is {len(line):,} characters long, over the limit of {MAX_LINE_CHARS:,}.",
                    where=Location(path, number, MAX_LINE_CHARS + 1),
                    hint="Split it with a backslash at the end of a line, or keep long data in a file the recipe reads.",
                )


@one_line
def parse_text(text: str, path: str) -> list:
    """Parse one file into its statements, in order; includes are left as
    ("include", name, location) markers."""
    parser = _lark()  # (first: it imports Lark as it should be)
    from lark.exceptions import UnexpectedInput

    check_text(text, path)
    if not text.endswith("\n"):
        text += "\n"
    try:
        tree = parser.parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, path, text) from None
    return list(_ToModel(path, text.split("\n")).statements(tree))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_source(file: str | os.PathLike, where: Location | None = None) -> bytes:
    """The bytes of a Batchfile: a regular file of at most MAX_FILE_BYTES.
    Never blocks on a pipe or device, never reads without end."""
    name = os.fspath(file)

    def fail(why: str, hint: str = "") -> BatchfileError:
        return BatchfileError(f"cannot read '{show(name, 200)}': {why}.", where=where, hint=hint)

    regular_only = "A Batchfile (and every file it includes) must be a regular file."
    try:
        st = os.stat(name)  # before opening: opening a pipe or a device can block or act
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"it is {_kind(st.st_mode)}", regular_only)
        real = os.path.realpath(name)
        if real.startswith(_PSEUDO):
            raise fail(f"'{real}' is a file of the system's {real.split('/')[1]} pseudo-filesystem", regular_only)
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise fail("no such file", "Check the path (includes are relative to the including file), or pass -f FILE.") from None
    except ValueError:  # an embedded NUL in the path
        raise fail("the path holds a NUL character") from None
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    try:
        st = os.fstat(fd)  # what was opened, in case the path changed since
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"it is {_kind(st.st_mode)}", regular_only)
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise fail(
            f"it is larger than {MAX_FILE_BYTES >> 20} MiB",
            "A Batchfile that big is almost surely not one; split generated rules with include, or use @for loops and globs.",
        )
    return b"".join(chunks)


def decode_source(data: bytes, path: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); a bad byte is named by line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        good = data[: err.start].decode("utf-8-sig")
        raise BatchfileError(
            f"the file is not UTF-8 text (byte 0x{data[err.start]:02x}).",
            where=_where(good, len(good), path),
            hint="Save it as UTF-8; if this is not your Batchfile, check the path given to -f or include.",
        ) from None


def _grammar() -> bytes:
    with open(GRAMMAR, "rb") as f:
        return f.read()


def _norm(path: str | os.PathLike) -> str:
    """The path as pathlib would write it ('.' parts and repeated slashes
    dropped, '..' kept): pathlib itself costs a parse ~5 ms to import."""
    path = os.fspath(path)
    root = "//" if path[:2] == "//" and path[2:3] != "/" else "/" if path[:1] == "/" else ""
    return root + "/".join(part for part in path.split("/") if part and part != ".") or "."


def _parent(path: str) -> str:
    return os.path.dirname(path) or "."


@one_line
def parse_file(path: str | os.PathLike) -> Batchfile:
    """Parse a Batchfile and everything it includes (paths relative to the including file)."""
    root = _norm(path)
    assignments, rules, settings, sources = [], [], [], []
    seen: set[str] = set()

    def read(file: str, where):
        shown = _display(file)
        text = decode_source(read_source(file, where), shown)
        sources.append(file)
        return parse_text(text, shown)

    def identity(file: str, where) -> str:
        try:
            real = os.path.realpath(file)
        except ValueError as err:  # a NUL in the path
            raise BatchfileError(f"cannot read '{show(file, 200)}': {show(str(err), 200)}.", where=where) from None
        try:
            os.stat(real)  # (realpath does not say when it went round a symlink loop)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise BatchfileError(f"cannot read '{show(file, 200)}': a symlink loop from '{show(str(err.filename or real), 200)}'.", where=where, hint="Point the include at a file, not at a link that leads back to itself.") from None
        return real  # (any other error is read_source's to report)

    # Includes are spliced in place: walk a stack of iterators, not recursion.
    pending = [iter(read(root, None))]
    files = [root]
    seen.add(identity(root, None))
    while pending:
        try:
            item = next(pending[-1])
        except StopIteration:
            pending.pop()
            files.pop()
            continue
        if isinstance(item, Assignment):
            if isinstance(item.value, _Load):
                item = Assignment(item.name, item.op, load_params(_parent(files[-1]), item.value, sources), item.location, loaded=True)
            assignments.append(item)
        elif isinstance(item, Rule):
            rules.append(item)
        elif item[0] == "settings":
            settings.extend(item[1])
        else:
            _, name, where = item
            target = _norm(os.path.join(_parent(files[-1]), name))
            real = identity(target, where)
            if real in seen:
                raise BatchfileError(f"'{show(name, 200)}' is included twice (or includes itself).", where=where)
            seen.add(real)
            pending.append(iter(read(target, where)))
            files.append(target)
    return Batchfile(root, tuple(assignments), tuple(rules), tuple(settings), tuple(sources))


def load_params(folder: str, request: _Load, sources: list):
    """The data of `load("file")`: JSON and TOML with the standard library,
    YAML with PyYAML when it is installed. The file becomes one of the
    Batchfile's sources, so that an edit is seen by the parse cache and the
    no-op check."""
    from buildsys.lang.values import FORMATS, from_data, parse_data

    file = _norm(os.path.join(folder, request.name))
    kind = FORMATS.get(os.path.splitext(file)[1].lower())
    if kind is None:
        raise BatchfileError(
            f"load() reads .json, .toml, .yaml and .yml files, not '{show(request.name, 200)}'.",
            where=request.location,
            hint="Name the file with the extension of its format.",
        )
    shown = _display(file)
    text = decode_source(read_source(file, request.location), shown)
    sources.append(file)
    data = parse_data(text, kind, shown, request.location)
    return from_data(data, request.location, f"'{show(shown, 200)}'")


def _display(file: str) -> str:
    try:
        return os.path.relpath(file)
    except ValueError:
        return str(file)


def load(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Batchfile:
    """parse_file, through a cache keyed by the bytes of every file read."""
    if cache_dir is None:
        return parse_file(path)
    from buildsys.digest import hash_bytes

    main = _norm(path)
    try:
        head = read_source(main)
    except BatchfileError:
        return parse_file(path)  # reports it
    key = hash_bytes(head + _grammar() + _CACHE_VERSION + os.fsencode(main))
    entry = os.path.join(cache_dir, "parse", key)
    try:
        with open(entry, "rb") as f:
            cached, digests = pickle.load(f)
        if all(hash_bytes(read_source(p)) == d for p, d in digests):
            return cached
    except Exception:  # a missing, stale or unreadable cache entry is just a miss
        pass
    model = parse_file(path)
    try:
        digests = [(p, hash_bytes(read_source(p))) for p in model.sources]
        write_cache_entry(str(entry), pickle.dumps((model, digests), protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, BatchfileError):
        pass
    return model
