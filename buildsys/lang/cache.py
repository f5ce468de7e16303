"""The expanded graph, cached under the workspace's state folder, so that a
build after a small edit of an input neither parses nor expands a large
Batchfile again.

An entry is named by what the command asks for (the Batchfile's path, the
working folder that locations are shown from, the overrides, the targets
named, BB_MAX_TARGETS, and the code that expands graphs) and holds the stat
signature of everything build_graph read from outside: the Batchfile, its
includes and loaded parameter files, and every folder whose listing decided
a glob, a pattern rule or a @python module's file (Graph.watched). It is
used only if every one of those is unchanged (a missing path still missing);
anything else, an unreadable or foreign entry included, is a miss.
"""
from __future__ import annotations

import os

from buildsys import __version__

_VERSION = "graph-1"
_HERE = os.path.dirname(os.path.abspath(__file__))
# A graph is only as current as the code that expanded it (an editable
# install changes under its caches).
_CODE = ("graph.py", "parse.py", "model.py", "settings.py", "values.py", "batchfile.lark")


def signature(path: str):
    """A path's stat signature (git's rule), or None if it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def listing(folder: str) -> str | None:
    """A digest of a folder's entry names and which are folders: what globs,
    pattern rules and existence checks see of it. A file replaced by bb's
    write-and-rename changes the folder's mtime, not this."""
    from blake3 import blake3

    try:
        with os.scandir(folder) as it:
            names = sorted(e.name + "/" if e.is_dir() else e.name for e in it)
    except OSError:
        return None
    return blake3("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest()


def listings(folders, started: float) -> dict:
    """folder -> listing, for the folders unchanged since `started` (when
    the Batchfile began to be read): their listing now is the one read."""
    from buildsys.digest import is_racy

    out = {}
    for folder in folders:
        digest = listing(folder)
        sig = signature(folder)  # after the listing: a change between them makes it racy
        if digest is not None and sig is not None and not is_racy(sig[1], started):
            out[folder] = digest
    return out


def current(path: str, sig, known: dict) -> bool:
    """Is a path as it was signed (or, for a folder, listed)?"""
    if signature(path) == sig:
        return True
    digest = known.get(path)
    return digest is not None and listing(path) == digest


def identity(batchfile: str, overrides: dict, wanted) -> list:
    from buildsys.lang.graph import LIMIT_ENV

    return [
        _VERSION, __version__, [signature(os.path.join(_HERE, f)) for f in _CODE],
        os.path.abspath(batchfile), batchfile, os.getcwd(), repr(sorted(overrides.items())), list(wanted),
        os.environ.get(LIMIT_ENV),
    ]


def _entry(state_dir: str, ident: list) -> str:
    from blake3 import blake3

    return os.path.join(state_dir, "graph", blake3(repr(ident).encode()).hexdigest()[:32])


def load(state_dir: str, ident: list):
    """(graph, sources, read, listings) if the cached graph is current, else None."""
    import pickle

    try:
        with open(_entry(state_dir, ident), "rb") as f:
            stored, read, known, graph, sources = pickle.load(f)
        if stored != ident or not isinstance(read, dict) or not isinstance(known, dict):
            return None
        for path, sig in read.items():
            if not current(path, sig, known):
                return None
        return graph, sources, read, known
    except Exception:  # missing, truncated, foreign or from another version: a miss
        return None


def save(state_dir: str, ident: list, graph, sources, read: dict, known: dict, started: float) -> None:
    """`read`: absolute path -> signature, taken after expansion; `known`:
    folder -> listing; `started`: when the Batchfile began to be read.
    Nothing is saved if a file or folder changed since then (it may have
    changed after it was read)."""
    import pickle

    from buildsys.digest import is_racy
    from buildsys.files import write_atomic

    if any(sig is not None and is_racy(sig[1], started) for sig in read.values()):
        return
    try:
        write_atomic(_entry(state_dir, ident), pickle.dumps((ident, read, known, graph, tuple(sources)), protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, pickle.PicklingError, TypeError, AttributeError, RecursionError):
        pass
