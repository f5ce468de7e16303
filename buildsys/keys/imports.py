"""The project-local Python code a recipe runs: the scripts its shell text
starts, and the modules they import, transitively.

A helper module imported by a training script changes the result as surely
as the script does, yet nobody declares it (ploomber #111, redun #99). The
planner adds these files to the action's inputs, so that editing a helper
rebuilds what uses it (and `bb why` says "input changed: src/helper.py"),
and so that a sandbox or a remote worker receives them.

What counts as local: a module file (or a package's __init__.py) under the
project's root, found by name in one of these folders, as Python's sys.path
would find it:
- the folder of each script the recipe runs (sys.path[0] for a script; for
  `python -c` and `python -m`, the recipe's working folder);
- the project's root, and its `src/` folder when there is one (a src layout,
  an editable install, PYTHONPATH=. or =src);
- folders the recipe puts on PYTHONPATH, and folders the code itself adds to
  sys.path with a literal or `__file__`-based path (sys.path.insert/append/
  extend, site.addsitedir).
Every match in every one of these folders counts, not only the first one
Python would take: a wrong guess only adds an input, a missed one silently
ignores an edit. So a local `json.py` beside a script that does `import json`
is local (it shadows the standard library there, as it would in Python).
Nothing outside the root is ever returned, so the standard library and
site-packages never are, and keys do not depend on what is installed here.

Found statically with `ast`: `import a.b`, `from a import b` (b as a module
when such a file exists), relative imports (from the importing file's
folder), `importlib.import_module` / `__import__` / `runpy.run_module` with a
literal name (or a literal prefix such as f"plugins.{name}": then every
module of that package), `runpy.run_path` and
`importlib.util.spec_from_file_location` with a literal path. Imports inside
functions, `try` and `if TYPE_CHECKING` count too. A file that does not parse
with this Python (a syntax error, or syntax newer than the one bb runs on) is
scanned line by line with regular expressions instead. Not seen: names
computed without a literal prefix, `exec(open(...).read())`, compiled
extension modules (.so), and data files the code reads (declare those).

Cost: a file's import statements are parsed once per process while its stat
signature (size, mtime_ns, inode, ctime_ns) is unchanged, and remembered
across runs in a small JSON file in bb's state folder, so a second run reads
no source. An ImportCache is also one planning run's memo of name lookups and
closures (like the planner's own per-run source digests): 10,000 targets
running the same script cost one closure.
"""
from __future__ import annotations

import ast
import json
import os
import posixpath
import re
import stat as statmod
import time
from collections import deque
from dataclasses import dataclass, field

from buildsys.digest import is_racy

CACHE_FILE = "imports-cache.json"
CACHE_VERSION = 1
MAX_CACHE_ENTRIES = 20_000  # files remembered across runs (those used in a run are always kept)
MAX_PACKAGE_LISTING = 2_000  # entries read from a package folder for a dynamic import prefix
MAX_PARSE = 64 << 20  # bytes of one source file read; a larger file is scanned in its first 64 MiB

# -- reading one file's imports --------------------------------------------------

# A record (JSON-able, so it can be kept across runs):
#   ["i", level, "a.b", ["c", "d"]]  import a.b / from a.b import c, d / from . import c (level 1, "")
#   ["p", level, "a.b"]              every module of package a.b (import_module(f"a.b.{x}"))
#   ["r", anchor, "rel/path.py"]     a file run or loaded by path
#   ["s", anchor, "rel/dir"]         a folder put on sys.path
# anchor: "f" relative to the file's folder, "c" to the working folder, "a" absolute.

_DYNAMIC = (b"import_module", b"__import__", b"run_module", b"run_path", b"sys.path", b"addsitedir", b"spec_from_file_location")

_RX_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)
_RX_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)[ \t]*([\w.]*)[ \t]+import[ \t]*(\([^)]*\)|[^\n#;]*)", re.M)
_RX_DYN = re.compile(r"""(?:import_module|__import__|run_module)\(\s*['"]([\w.]+)['"]""")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _dotted(name) -> bool:
    return type(name) is str and _DOTTED.fullmatch(name) is not None


def _regex_records(data: bytes) -> list:
    """Imports found line by line: for files `ast` cannot read (a syntax
    error, syntax newer than this Python, nesting too deep for the parser)."""
    text = data.decode("utf-8", "replace")
    out = []
    for m in _RX_IMPORT.finditer(text):
        for part in m.group(1).split(","):
            words = part.split()
            if words and _dotted(words[0]):
                out.append(["i", 0, words[0], []])
    for m in _RX_FROM.finditer(text):
        level, module = len(m.group(1)), m.group(2)
        if module and not _dotted(module) or not level and not module:
            continue
        names = []
        for part in m.group(3).strip("()").replace("\n", " ").split(","):
            words = part.split()
            if words and _IDENT.fullmatch(words[0]):
                names.append(words[0])
        out.append(["i", level, module, names])
    for m in _RX_DYN.finditer(text):
        out.append(_dynamic_name(m.group(1), None))
    return out


def _dynamic_name(name: str, package) -> list:
    """import_module(name, package): a record for a literal name."""
    level = len(name) - len(name.lstrip("."))
    rest = name[level:]
    if level and type(package) is str and _dotted(package):
        # relative to a named package: absolute after all
        parts = package.split(".")
        if level - 1 < len(parts):
            base = ".".join(parts[: len(parts) - (level - 1)])
            return ["i", 0, base + ("." + rest if rest else ""), []]
    if level and rest and "." in rest:
        head, _, last = rest.rpartition(".")
        return ["i", level, head, [last]]
    if level:
        return ["i", level, "", [rest]] if rest else ["i", level, "", []]
    return ["i", 0, rest, []]


def _literal_prefix(node) -> str | None:
    """The constant start of a string built at run time: f"a.{x}", "a." + x,
    "a.%s" % x, "a.{}".format(x)."""
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) and isinstance(node.values[0].value, str):
        return node.values[0].value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
        return node.left.value.split("%")[0] if isinstance(node.op, ast.Mod) else node.left.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return node.func.value.value.split("{")[0]
    return None


def _func_name(node) -> str:
    """'importlib.import_module' for importlib.import_module(...), 'import_module' for a bare name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _path_value(node):
    """A path expression evaluated where possible: (anchor, relpath), anchor
    "f" (the file's folder), "c" (the working folder) or "a" (absolute);
    None when it depends on anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        v = node.value
        return ("a", v) if v.startswith("/") else ("c", v or ".")
    if isinstance(node, ast.Name) and node.id == "__file__":
        return ("f", "__file__")
    if isinstance(node, ast.Call):
        name = _func_name(node.func)
        last = name.rsplit(".", 1)[-1]
        args = node.args
        if last == "dirname" and len(args) == 1:
            return _parent(_path_value(args[0]), 1)
        if last in ("abspath", "realpath", "normpath", "str", "fspath", "Path", "PurePath", "PosixPath") and len(args) == 1:
            return _path_value(args[0])
        if last in ("getcwd", "cwd") and not args:
            return ("c", ".")
        if last == "join" and name.endswith("path.join") and args:
            return _join([_path_value(a) for a in args])
        if last in ("resolve", "absolute") and isinstance(node.func, ast.Attribute) and not args:
            return _path_value(node.func.value)
        if last == "joinpath" and isinstance(node.func, ast.Attribute):
            return _join([_path_value(node.func.value)] + [_path_value(a) for a in args])
        return None
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        return _parent(_path_value(node.value), 1)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
        index = node.slice
        if isinstance(index, ast.Constant) and type(index.value) is int and 0 <= index.value < 32:
            return _parent(_path_value(node.value.value), index.value + 1)
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _join([_path_value(node.left), _path_value(node.right)])
    return None


def _parent(value, n: int):
    """n levels up, lexically (as os.path.dirname and Path.parent do): the
    file itself is the component "__file__" under its folder ("f")."""
    if value is None:
        return None
    anchor, rel = value
    for _ in range(n):
        rel = posixpath.join(rel, "..")
    return (anchor, posixpath.normpath(rel))


def _join(values):
    if not values or any(v is None for v in values):
        return None
    anchor, rel = values[0]
    for a, r in values[1:]:
        if a == "a":
            anchor, rel = a, r
        elif a == "c":
            rel = posixpath.join(rel, r)
        else:
            return None  # __file__ in the middle of a join: not a path we can follow
    return (anchor, rel)


# The statement lists inside each compound statement.
_BODIES = {
    ast.FunctionDef: ("body",),
    ast.AsyncFunctionDef: ("body",),
    ast.ClassDef: ("body",),
    ast.If: ("body", "orelse"),
    ast.For: ("body", "orelse"),
    ast.AsyncFor: ("body", "orelse"),
    ast.While: ("body", "orelse"),
    ast.With: ("body",),
    ast.AsyncWith: ("body",),
    ast.Try: ("body", "handlers", "orelse", "finalbody"),
    ast.ExceptHandler: ("body",),
    ast.Match: ("cases",),
    ast.match_case: ("body",),
}
if hasattr(ast, "TryStar"):
    _BODIES[ast.TryStar] = ("body", "handlers", "orelse", "finalbody")


def _ast_records(tree: ast.AST, dynamic: bool) -> list:
    out = []
    # Import statements can only be statements: walk statement bodies (much
    # fewer nodes than the whole tree); iterative, so any nesting depth works.
    stack = list(getattr(tree, "body", ()))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _dotted(alias.name):
                    out.append(["i", 0, alias.name, []])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module and not _dotted(module) or not node.level and not module:
                continue
            names = [a.name for a in node.names if a.name != "*" and _IDENT.fullmatch(a.name)]
            out.append(["i", node.level or 0, module, names])
        else:
            for attr in _BODIES.get(type(node), ()):
                stack.extend(getattr(node, attr))
    if not dynamic:
        return out
    for node in ast.walk(tree):  # ast.walk is iterative too
        if not isinstance(node, ast.Call):
            continue
        name = _func_name(node.func)
        last = name.rsplit(".", 1)[-1]
        args = node.args
        if last in ("import_module", "__import__", "run_module") and args:
            first = args[0]
            package = None
            if last == "import_module":
                pk = args[1] if len(args) > 1 else next((k.value for k in node.keywords if k.arg == "package"), None)
                if isinstance(pk, ast.Constant):
                    package = pk.value
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                if _dotted(first.value.lstrip(".")):
                    out.append(_dynamic_name(first.value, package))
                continue
            prefix = _literal_prefix(first)
            if prefix and prefix.endswith(".") and _dotted(prefix.strip(".")):
                level = len(prefix) - len(prefix.lstrip("."))
                out.append(["p", level, prefix.strip(".")])
        elif last == "run_path" and args or last == "spec_from_file_location" and len(args) > 1:
            value = _path_value(args[0] if last == "run_path" else args[1])
            if value is not None:
                out.append(["r", value[0], value[1]])
        elif name == "sys.path.insert" and len(args) == 2 or name == "sys.path.append" and len(args) == 1 or last == "addsitedir" and args:
            value = _path_value(args[-1] if name == "sys.path.insert" else args[0])
            if value is not None:
                out.append(["s", value[0], value[1]])
        elif name == "sys.path.extend" and len(args) == 1 and isinstance(args[0], (ast.List, ast.Tuple)):
            for element in args[0].elts:
                value = _path_value(element)
                if value is not None:
                    out.append(["s", value[0], value[1]])
    return out


def read_records(data: bytes, filename: str = "<recipe>") -> list:
    """The import records of one Python source (bytes, so that a coding
    declaration is honoured); never raises."""
    dynamic = any(word in data for word in _DYNAMIC)
    if b"import" not in data and not dynamic:
        return []
    try:
        tree = ast.parse(data, filename)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return _regex_records(data)
    try:
        return _ast_records(tree, dynamic)
    except RecursionError:  # an expression nested deeper than the interpreter allows
        return _regex_records(data)


def _valid_record(r) -> bool:
    """A record read back from the cache file has the shape bb writes (its
    names become paths: only identifiers pass)."""
    if type(r) is not list or not r:
        return False
    kind = r[0]
    if kind == "i":
        return (
            len(r) == 4
            and type(r[1]) is int
            and 0 <= r[1] < 64
            and (r[2] == "" or _dotted(r[2]))
            and type(r[3]) is list
            and all(type(n) is str and _IDENT.fullmatch(n) for n in r[3])
        )
    if kind == "p":
        return len(r) == 3 and type(r[1]) is int and 0 <= r[1] < 64 and (r[2] == "" or _dotted(r[2]))
    if kind in ("r", "s"):
        return len(r) == 3 and r[1] in ("f", "c", "a") and type(r[2]) is str and "\0" not in r[2]
    return False


def _signature(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _racy(mtime_ns: int) -> bool:
    # git's racy-clean rule, as the stat cache applies it
    return is_racy(mtime_ns, time.time())


# path -> (stat signature, records): every file parsed in this process,
# trusted while its stat is unchanged.
_PARSED: dict[str, tuple[list, list]] = {}
_MAX_PARSED = 200_000


# -- the per-run cache ---------------------------------------------------------------


class ImportCache:
    """One planning run's memo (name lookups, closures, recipe scans) and the
    persistent file of parsed imports (`<state_dir>/imports-cache.json`).

    Lookups and closures are not checked again within the run: like the
    planner's source digests, they are a snapshot of the project as the run
    found it. Parsed imports are checked against each file's stat, in the
    process and across runs.

    After a run, `missing` holds the project-relative paths that were looked
    up and absent (a module appearing there could change a closure) and
    `listed` the package folders whose listing was read: what a no-op stamp
    must watch besides the files found."""

    def __init__(self, state_dir: str | None = None):
        self.path = os.path.join(state_dir, CACHE_FILE) if state_dir else None
        self._stored: dict | None = None  # path -> [size, mtime, ino, ctime, records], as loaded
        self._used: dict[str, list] = {}  # what this run parsed or confirmed
        self.dirty = False
        self.parsed = 0  # files read and parsed in this cache's lifetime
        self.missing: set[str] = set()
        self.listed: set[str] = set()
        self._root = ""
        self._root_arg = None
        self._calls: dict[tuple, list[str]] = {}
        self._kind: dict[str, int] = {}  # rel path -> 0 missing, 1 file, 2 folder
        self._find: dict[tuple, tuple] = {}
        self._closures: dict[tuple, list[str]] = {}
        self._scans: dict[str, RecipeScan] = {}

    # -- the file system, remembered for the run ------------------------------

    def _bind(self, root: str) -> None:
        if root == self._root_arg:  # (an absolute path: the planner's root)
            return
        self._root_arg = root if os.path.isabs(root) else None
        root = os.path.abspath(root)
        if root != self._root:  # another project: nothing learned applies
            self._root = root
            self.missing.clear()
            self.listed.clear()
            self._kind.clear()
            self._find.clear()
            self._closures.clear()
            self._scans.clear()
            self._calls.clear()

    def kind(self, rel: str) -> int:
        k = self._kind.get(rel)
        if k is None:
            try:
                st = os.stat(os.path.join(self._root, rel) if rel else self._root)
                k = 2 if statmod.S_ISDIR(st.st_mode) else 1 if statmod.S_ISREG(st.st_mode) else 0
            except (OSError, ValueError):
                k = 0
            self._kind[rel] = k
        return k

    # -- parsed imports ------------------------------------------------------------

    def _load(self) -> dict:
        if self._stored is None:
            self._stored = {}
            if self.path:
                try:
                    with open(self.path, "rb") as f:
                        data = json.load(f)
                    if type(data) is dict and data.get("v") == CACHE_VERSION and type(data.get("files")) is dict:
                        self._stored = data["files"]
                except (OSError, ValueError):
                    pass
        return self._stored

    def records(self, rel: str) -> list:
        """The import records of a project file (relative path)."""
        full = os.path.join(self._root, rel)
        try:
            st = os.stat(full)
        except (OSError, ValueError):
            return []
        sig = _signature(st)
        memo = _PARSED.get(full)
        if memo is not None and memo[0] == sig:
            records = memo[1]
        else:
            stored = self._load().get(full)
            if type(stored) is list and len(stored) == 5 and stored[:4] == sig and type(stored[4]) is list and all(_valid_record(r) for r in stored[4]):
                records = stored[4]
            else:
                try:
                    with open(full, "rb") as f:
                        data = f.read(MAX_PARSE)
                except OSError:
                    return []
                records = read_records(data, rel)
                self.parsed += 1
            if _racy(st.st_mtime_ns):
                return records  # it may change again within the same mtime tick: remember nothing
            if len(_PARSED) >= _MAX_PARSED:
                _PARSED.clear()
            _PARSED[full] = (sig, records)
        if self.path and full not in self._used:
            entry = sig + [records]
            self._used[full] = entry
            if self._load().get(full) != entry:
                self.dirty = True
        return records

    def save(self) -> None:
        """Write the parsed imports of this run (and of earlier ones, up to a
        bound) for the next run; a cache, so a failure costs only speed."""
        if not (self.path and self.dirty):
            return
        from buildsys.files import write_atomic

        files = dict(self._used)
        if len(files) < MAX_CACHE_ENTRIES:
            for path, entry in self._load().items():
                if path not in files:
                    files[path] = entry
                    if len(files) >= MAX_CACHE_ENTRIES:
                        break
        try:
            write_atomic(self.path, json.dumps({"v": CACHE_VERSION, "files": files}, separators=(",", ":")).encode())
            self.dirty = False
        except OSError:
            pass

    # -- finding modules --------------------------------------------------------------

    def has_src(self) -> bool:
        return self.kind("src") == 2

    def find(self, dirs: tuple[str, ...], name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Module `name` in each of `dirs` (project-relative folders, "" the
        root): the files that define it (module.py, package/__init__.py) and
        the folders it spans as a package (its __path__; a namespace
        package's every portion). Every match counts, not only the first."""
        key = (dirs, name)
        hit = self._find.get(key)
        if hit is not None:
            return hit
        files: list[str] = []
        path: list[str] = []
        for d in dirs:
            base = f"{d}/{name}" if d else name
            k = self.kind(base)
            if k == 2:
                init = base + "/__init__.py"
                if self.kind(init) == 1:
                    files.append(init)
                else:
                    self.missing.add(init)
                path.append(base)
            else:
                if k == 0:
                    self.missing.add(base)
            module = base + ".py"
            if self.kind(module) == 1:
                files.append(module)
            else:
                self.missing.add(module)
        hit = (tuple(files), tuple(path))
        self._find[key] = hit
        return hit

    def walk(self, dirs: tuple[str, ...], dotted: str) -> tuple[list[str], tuple[str, ...]]:
        """Module `dotted` searched in `dirs`: its files with the packages'
        __init__.py on the way, and the folders it spans as a package."""
        out: list[str] = []
        for part in dotted.split(".") if dotted else ():
            if not dirs:
                return out, ()
            files, dirs = self.find(dirs, part)
            out.extend(files)
            if not files and not dirs:
                return out, ()
        return out, dirs

    def resolve(self, dirs: tuple[str, ...], dotted: str, names=()) -> list[str]:
        """The files of module `dotted` (see walk) and of its submodules
        `names` (from x import names) where such modules exist."""
        out, dirs = self.walk(dirs, dotted)
        for name in names:
            if dirs:
                out.extend(self.find(dirs, name)[0])
        return out

    def package_modules(self, dirs: tuple[str, ...]) -> list[str]:
        """Every module directly in a package's folders (for a dynamic import
        by prefix), bounded."""
        out = []
        for d in dirs:
            self.listed.add(d)
            try:
                with os.scandir(os.path.join(self._root, d)) as it:
                    for n, entry in enumerate(it):
                        if n >= MAX_PACKAGE_LISTING:
                            break
                        name = entry.name
                        if name.endswith(".py") and _IDENT.fullmatch(name[:-3]) and entry.is_file():
                            out.append(f"{d}/{name}" if d else name)
                        elif _IDENT.fullmatch(name) and entry.is_dir() and self.kind(f"{d}/{name}/__init__.py" if d else f"{name}/__init__.py") == 1:
                            out.append(f"{d}/{name}/__init__.py" if d else f"{name}/__init__.py")
            except OSError:
                pass
        return out

    # -- closures ------------------------------------------------------------------------

    def closure(self, entries: list[str], search: tuple[str, ...]) -> list[str]:
        key = (tuple(entries), search)
        hit = self._closures.get(key)
        if hit is None:
            hit = self._closures[key] = _closure(self, entries, search)
        return hit


def _inside(rel: str) -> str | None:
    """A normalized project-relative path, or None if it leaves the project."""
    rel = posixpath.normpath(rel)
    if rel == ".":
        return ""
    if rel == ".." or rel.startswith("../") or rel.startswith("/"):
        return None
    return rel


def _anchored(cache: ImportCache, anchor: str, rel: str, file_dir: str, cwd: str) -> str | None:
    if anchor == "a":
        root = cache._root
        if not (rel == root or rel.startswith(root.rstrip("/") + "/")):
            return None
        return _inside(os.path.relpath(rel, root).replace(os.sep, "/"))
    base = file_dir if anchor == "f" else cwd
    return _inside(posixpath.join(base, rel) if base else rel)


def _package_dir(file_dir: str, level: int) -> str | None:
    """The folder a relative import of `level` dots starts from."""
    d = file_dir
    for _ in range(level - 1):
        if not d:
            return None  # above the project
        d = posixpath.dirname(d)
    return d


def _targets(cache: ImportCache, record: list, file_dir: str, search: tuple[str, ...], cwd: str) -> tuple[list[str], str | None]:
    """The files one import record names, and a folder it puts on sys.path."""
    kind = record[0]
    if kind == "i":
        _, level, module, names = record
        if level == 0:
            return cache.resolve(search, module, names), None
        base = _package_dir(file_dir, level)
        if base is None:
            return [], None
        out = []
        if cache.kind(f"{base}/__init__.py" if base else "__init__.py") == 1:
            out.append(f"{base}/__init__.py" if base else "__init__.py")
        out.extend(cache.resolve((base,), module, names))
        return out, None
    if kind == "p":
        _, level, module = record
        if level:
            base = _package_dir(file_dir, level)
            if base is None:
                return [], None
            out, dirs = cache.walk((base,), module)
        else:
            out, dirs = cache.walk(search, module)
        return out + cache.package_modules(dirs), None
    if kind == "r":
        rel = _anchored(cache, record[1], record[2], file_dir, cwd)
        if rel and rel.endswith(".py") and cache.kind(rel) == 1:
            return [rel], None
        return [], None
    if kind == "s":
        rel = _anchored(cache, record[1], record[2], file_dir, cwd)
        return [], rel if rel is not None and cache.kind(rel) == 2 else None
    return [], None


def _closure(cache: ImportCache, entries: list[str], search: tuple[str, ...]) -> list[str]:
    """Breadth-first over the import graph (no recursion, cycles end at the
    visited set). A folder some file puts on sys.path widens the search for
    every file, so the walk starts again with it (at most once per folder)."""
    while True:
        visited = set(entries)
        queue = deque(entries)
        added: list[str] = []
        while queue:
            rel = queue.popleft()
            file_dir = posixpath.dirname(rel)
            for record in cache.records(rel):
                files, folder = _targets(cache, record, file_dir, search, "")
                for f in files:
                    if f not in visited:
                        visited.add(f)
                        queue.append(f)
                if folder is not None and folder not in search and folder not in added:
                    added.append(folder)
        if not added:
            return sorted(visited - set(entries))
        search = search + tuple(added)


def search_path(entries: list[str], cache: ImportCache, extra=()) -> tuple[str, ...]:
    """Where absolute imports are looked for: each entry's folder (sys.path[0]),
    the root, src/, and the extra folders (PYTHONPATH)."""
    dirs = dict.fromkeys(posixpath.dirname(e) for e in entries)
    dirs[""] = None
    if cache.has_src():
        dirs["src"] = None
    for d in extra:
        rel = _inside(d.replace(os.sep, "/")) if not os.path.isabs(d) else _anchored(cache, "a", d, "", "")
        if rel is not None and cache.kind(rel) == 2:
            dirs[rel] = None
    return tuple(dirs)


def _entry(cache: ImportCache, path: str) -> str | None:
    p = path.replace(os.sep, "/")
    rel = _anchored(cache, "a", p, "", "") if os.path.isabs(path) else _inside(p)
    return rel if rel and cache.kind(rel) == 1 else None


def local_imports(paths: list[str], root: str, cache: ImportCache | None = None, *, path=()) -> list[str]:
    """The project-local modules these Python files import, transitively:
    sorted project-relative paths of the module files and of each package's
    __init__.py on the way. The given files themselves are left out (the
    caller has them), as are paths that do not name a file in the project.
    `path`: more project folders on sys.path (the recipe's PYTHONPATH).
    Never raises for a file it cannot read or parse. With `cache` (one per
    planning run), lookups and closures are shared between calls."""
    cache = cache if cache is not None else ImportCache()
    cache._bind(root)
    call = (tuple(paths), tuple(path))
    hit = cache._calls.get(call)
    if hit is None:
        entries = sorted({e for e in (_entry(cache, p) for p in paths) if e is not None})
        hit = cache._calls[call] = cache.closure(entries, search_path(entries, cache, path)) if entries else []
    return list(hit)


# -- what a recipe runs ---------------------------------------------------------------------


@dataclass
class RecipeScan:
    """The project's Python files a recipe runs, and the folders it puts on PYTHONPATH."""

    scripts: list[str] = field(default_factory=list)  # project-relative Python files the recipe runs
    path: list[str] = field(default_factory=list)  # project-relative folders it puts on PYTHONPATH


_PYTHON = re.compile(r"(?:python|pypy)(?:\d+(?:\.\d+)*)?(?:-dbg)?|pythonw")
# Tools that run the .py files among their arguments.
_LAUNCHERS = frozenset(
    "torchrun deepspeed accelerate uv coverage streamlit ipython kernprof scalene mprof jupytext papermill pdm hatch rye horovodrun".split()
)
# Words after which the command word comes later (env X=1 nice -n 5 ./tool.py).
_WRAPPERS = frozenset("exec time nohup command builtin env nice timeout stdbuf xargs sudo srun then do else elif if while until ! { chrt ionice taskset numactl".split())
_ASSIGN = re.compile(r"[A-Za-z_]\w*=")
_OPERATOR_CHARS = frozenset(";|&()<>")
_REDIRECTIONS = frozenset(("<", ">", ">>", "<>", ">|", "&>", ">&", "<&", "&>>"))
_SIMPLE_TOKENS = re.compile(r"[^\s;&|()<>]+|[;&|()<>]+")
# One line of plain words (no quote, $, operator, glob...), its command word
# no path, no assignment, no redirection and no shell: it runs no project
# file, whatever its arguments name (a wrapper, `env ./x`, is checked apart).
_RUNS_NO_PYTHON = re.compile(r"[ \t\n]*(?!(?:sh|bash|dash|zsh)[ \t])[-A-Za-z0-9_.,:+@%]+(?:[ \t]+[-A-Za-z0-9_./,:+=@%<>]+)*[ \t\n]*")
_SHEBANG = re.compile(rb"#![^\n]*\b(?:python[\d.]*|pypy[\d.]*|uv run)\b")
MAX_NESTED = 64  # `sh -c '...'` strings scanned in one recipe
MAX_QUOTED_LINES = 500  # lines one quoted word may span


_TOKEN = re.compile(r"""(?P<w>(?:[^\s'"\\;&|()<>]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")+)|(?P<o>[;&|()<>]+)|(?P<q>\S)""", re.S)
_UNQUOTE = re.compile(r"""'([^']*)'|"((?:[^"\\]|\\.)*)"|\\(.)""", re.S)
_DQ_ESCAPE = re.compile(r"""\\([\\"$`\n])""")


def _unquote(m) -> str:
    if m.group(1) is not None:
        return m.group(1)
    if m.group(2) is not None:
        return _DQ_ESCAPE.sub(r"\1", m.group(2))
    return "" if m.group(3) == "\n" else m.group(3)


def _tokens(text: str) -> list[str] | None:
    """Shell words (quotes removed) and operators, comments dropped; None
    while a quote is still open."""
    if not any(c in text for c in "'\"\\#"):
        return _SIMPLE_TOKENS.findall(text)  # the common case
    out = []
    pos = 0
    while True:
        m = _TOKEN.search(text, pos)
        if m is None:
            return out
        pos = m.end()
        word = m.group("w")
        if word is not None:
            if word[0] == "#":  # a comment, to the end of its line
                pos = text.find("\n", m.start())
                if pos < 0:
                    return out
                continue
            out.append(_UNQUOTE.sub(_unquote, word) if any(c in word for c in "'\"\\") else word)
        elif m.group("o") is not None:
            out.append(m.group("o"))
        elif m.group("q") in ("'", '"'):
            return None  # a quote not closed on this line


def _commands(tokens: list[str]):
    """Split a line's tokens into simple commands: (words, stdin), stdin
    ("<<", delimiter) for a heredoc, ("<<<", text) for a here-string, or None."""
    words: list[str] = []
    stdin = None
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t and t[0] in _OPERATOR_CHARS:
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if t == "<<<" and nxt is not None:
                stdin = ("<<<", nxt)
                i += 2
                continue
            if t.startswith("<<") and nxt is not None:
                stdin = ("<<", nxt.lstrip("-") if t == "<<" else nxt)
                i += 2
                continue
            if t in _REDIRECTIONS and nxt is not None:
                i += 2  # a redirection and its file
                continue
            if words or stdin:
                yield words, stdin
            words, stdin = [], None
        else:
            words.append(t)
        i += 1
    if words or stdin:
        yield words, stdin


class _Scanner:
    def __init__(self, cache: ImportCache):
        self.cache = cache
        self.scripts: dict[str, None] = {}
        self.path: dict[str, None] = {}
        self.nested: list[tuple[str, str]] = []

    def here(self, cwd: str, word: str, want: int = 1) -> str | None:
        """A word naming a project file (want=1) or folder (2), from the
        working folder or else from the root."""
        if not word or "$" in word or "\0" in word or word.startswith("~"):
            return None
        if os.path.isabs(word):
            candidates = [_anchored(self.cache, "a", os.path.normpath(word), "", "")]
        else:
            candidates = [_inside(posixpath.join(base, word) if base else word) for base in dict.fromkeys((cwd, ""))]
        for rel in candidates:
            if rel is not None and self.cache.kind(rel) == want:
                return rel
        return None

    def add_file(self, cwd: str, word: str) -> None:
        rel = self.here(cwd, word)
        if rel is not None:
            self.scripts[rel] = None
            return
        folder = self.here(cwd, word, 2)  # `python folder/` runs folder/__main__.py
        if folder is not None:
            main = f"{folder}/__main__.py" if folder else "__main__.py"
            if self.cache.kind(main) == 1:
                self.scripts[main] = None

    def search(self, cwd: str) -> tuple[str, ...]:
        # -m and -c: sys.path[0] is the working folder
        return search_path([], self.cache, [cwd] + list(self.path))

    def add_module(self, cwd: str, module: str) -> bool:
        """`python -m a.b`: a/__init__.py and a/b.py (or a/b/__init__.py and
        a/b/__main__.py); True when the module is in the project."""
        if not _dotted(module):
            return False
        dirs = self.search(cwd)
        found: list[str] = []
        parts = module.split(".")
        for n, part in enumerate(parts):
            files, dirs = self.cache.find(dirs, part)
            found.extend(files)
            if not dirs and (n < len(parts) - 1 or not files):
                return False
        for d in dirs:  # a package run with -m runs its __main__
            main = f"{d}/__main__.py"
            if self.cache.kind(main) == 1:
                found.append(main)
        for f in found:
            self.scripts[f] = None
        if found and cwd:
            self.path[cwd] = None  # its sys.path[0]: the working folder
        return bool(found)

    def add_code(self, cwd: str, code: str) -> None:
        """`python -c CODE`, a heredoc, a here-string: the project modules
        the code imports are what runs."""
        search = self.search(cwd)
        for record in read_records(code.encode("utf-8", "surrogateescape")):
            files, folder = _targets(self.cache, record, cwd, search, cwd)
            for f in files:
                self.scripts[f] = None
                if cwd:
                    self.path[cwd] = None  # its sys.path[0]: the working folder
            if folder is not None:
                self.path[folder] = None

    def shebang(self, rel: str) -> bool:
        try:
            with open(os.path.join(self.cache._root, rel), "rb") as f:
                head = f.read(256)
        except OSError:
            return False
        return _SHEBANG.match(head.split(b"\n", 1)[0]) is not None

    def assignment(self, word: str, cwd: str) -> None:
        name, _, value = word.partition("=")
        if name == "PYTHONPATH":
            for part in value.split(":"):
                rel = self.here(cwd, part, 2)
                if rel is not None:
                    self.path[rel] = None

    def command(self, words: list[str], cwd: str, stdin) -> str:
        """Scan one simple command; returns the working folder after it."""
        i = 0
        while i < len(words) and _ASSIGN.match(words[i]):
            self.assignment(words[i], cwd)
            i += 1
        if i >= len(words):
            return cwd
        first = words[i]
        if first in ("cd", "pushd"):
            if len(words) - i != 2:
                return cwd if len(words) - i > 2 else ""  # `cd` alone goes home: resolve from the root
            folder = words[i + 1]
            if "$" in folder or folder.startswith("~") or folder == "-":
                return ""
            rel = _anchored(self.cache, "a", os.path.normpath(folder), "", "") if os.path.isabs(folder) else _inside(posixpath.join(cwd, folder) if cwd else folder)
            return rel if rel is not None else ""
        if first == "export":
            for w in words[i + 1 :]:
                if _ASSIGN.match(w):
                    self.assignment(w, cwd)
            return cwd
        # `sh -c '...'`, `bash -lc "..."`: the string is a script too
        if posixpath.basename(first) in ("sh", "bash", "dash", "zsh") and len(self.nested) < MAX_NESTED:
            for j in range(i + 1, len(words) - 1):
                w = words[j]
                if w.startswith("-") and not w.startswith("--") and "c" in w[1:]:
                    self.nested.append((words[j + 1], cwd))
                    break
        # the command word (after a wrapper, the words that may be one): a
        # project file with a python shebang
        candidates = [first] + ([w for w in words[i + 1 :] if "/" in w and not w.startswith("-")] if first in _WRAPPERS else [])
        for w in candidates:
            if "/" in w and not _PYTHON.fullmatch(posixpath.basename(w)):
                rel = self.here(cwd, w)
                if rel is not None and self.shebang(rel):
                    self.scripts[rel] = None
        # an interpreter anywhere in the command (env, nice, srun, conda run,
        # poetry run... before it), or a launcher: each needs a word naming
        # python, pypy or a .py file, or a PYTHONPATH (most recipes have none)
        if not any("py" in w or "PYTHONPATH=" in w for w in words[i:]):
            return cwd
        for j in range(i, len(words)):
            w = words[j]
            if w.startswith("PYTHONPATH="):
                self.assignment(w, cwd)
                continue
            name = posixpath.basename(w)
            if _PYTHON.fullmatch(name):
                self.python(words[j + 1 :], cwd, stdin)
                break
            if name in _LAUNCHERS:
                for rest in words[j + 1 :]:
                    if rest.endswith(".py"):
                        self.add_file(cwd, rest)
        return cwd

    def python(self, args: list[str], cwd: str, stdin) -> None:
        """The arguments of a Python interpreter: its options, then -c CODE,
        -m MODULE, a script, or the code on stdin."""
        j = 0
        while j < len(args):
            t = args[j]
            if t == "--":
                j += 1
                break
            if t == "-":
                break
            if t.startswith("--"):
                j += 2 if t == "--check-hash-based-pycs" else 1
                continue
            if t.startswith("-") and len(t) > 1:
                taken = 0
                for k in range(1, len(t)):
                    c = t[k]
                    if c in "cmWX":
                        arg = t[k + 1 :]
                        if not arg and j + 1 < len(args):
                            arg, taken = args[j + 1], 1
                        if c == "c":
                            self.add_code(cwd, arg)
                            return
                        if c == "m":
                            if not self.add_module(cwd, arg):
                                # a runner module (torch.distributed.run, coverage,
                                # cProfile, pdb...): the .py files it is given
                                for rest in args[j + 1 + taken :]:
                                    if rest.endswith(".py"):
                                        self.add_file(cwd, rest)
                            return
                        break  # -W arg, -X opt
                j += 1 + taken
                continue
            break
        if j < len(args) and args[j] != "-":
            self.add_file(cwd, args[j])
        elif stdin is not None:
            self.add_code(cwd, stdin[1])

    def scan(self, recipe: str, cwd: str = "") -> None:
        lines = recipe.replace("\\\r\n", "").replace("\\\n", "").splitlines()
        i = 0
        while i < len(lines):
            text = lines[i]
            i += 1
            tokens = _tokens(text)
            extra = 0
            while tokens is None and i + extra < len(lines) and extra < MAX_QUOTED_LINES:
                # a quote still open: the word goes on over the next lines
                text += "\n" + lines[i + extra]
                extra += 1
                tokens = _tokens(text)
            if tokens is None:
                tokens = _SIMPLE_TOKENS.findall(lines[i - 1])
            else:
                i += extra
            for words, stdin in _commands(tokens):
                if stdin is not None and stdin[0] == "<<":
                    delimiter, body = stdin[1], []
                    while i < len(lines) and lines[i].lstrip("\t") != delimiter:
                        body.append(lines[i])
                        i += 1
                    i += 1
                    stdin = ("<<", "\n".join(body))
                cwd = self.command(words, cwd, stdin)


def _first_word(recipe: str) -> str:
    return recipe.split(None, 1)[0] if recipe.strip() else ""


def scan_recipe(recipe: str, root: str, cache: ImportCache | None = None) -> RecipeScan:
    """The Python files a shell recipe runs (see scripts_in_recipe) and the
    project folders it puts on PYTHONPATH."""
    cache = cache if cache is not None else ImportCache()
    cache._bind(root)
    hit = cache._scans.get(recipe)
    if hit is not None:
        return hit
    scanner = _Scanner(cache)
    if _RUNS_NO_PYTHON.fullmatch(recipe) and "py" not in recipe and _first_word(recipe) not in _WRAPPERS:
        pass  # one plain command whose command word is no path: a fan-out's thousands of recipes
    elif "py" in recipe or "/" in recipe or "sh" in recipe:  # else it cannot run a project's Python file
        scanner.scan(recipe)
        n = 0
        while n < len(scanner.nested):  # `sh -c '...'` strings, iteratively
            text, cwd = scanner.nested[n]
            scanner.scan(text, cwd)
            n += 1
    result = RecipeScan(sorted(scanner.scripts), sorted(scanner.path))
    cache._scans[recipe] = result
    return result


def scripts_in_recipe(recipe: str, root: str, cache: ImportCache | None = None) -> list[str]:
    """Project-relative paths of the Python files a shell recipe runs:
    `python x.py`, `python3 -u src/train.py args`, `python -m pkg.mod`
    (pkg/__init__.py and pkg/mod.py, or pkg/mod/__init__.py and
    pkg/mod/__main__.py, found from the working folder, the root or src/),
    `./tool.py` (an existing file whose first line is a python shebang), the
    .py files given to launchers (torchrun, accelerate launch, deepspeed,
    coverage run, uv run, jupytext, papermill...) or to a runner module that
    is not in the project (`python -m torch.distributed.run train.py`), and
    for `python -c CODE`, a heredoc or a here-string, the project modules
    the code imports. Follows `cd DIR`, scans `sh -c '...'` strings, ignores
    what does not exist in the project. Conservative: a wrong guess only
    adds an input."""
    return scan_recipe(recipe, root, cache).scripts
