"""The expanded graph, cached under the workspace's state folder, so that a
build after a small edit of an input neither parses nor expands a large
Batchfile again.

An entry is named by what the command asks for (the Batchfile's path, the
working folder that locations are shown from, the overrides, the targets
named, BB_MAX_TARGETS, and the code that expands graphs) and holds the stat
signature of what build_graph read: the Batchfile, its includes and loaded
parameter files, and every folder whose listing it asked about (globs,
pattern rules, inputs no rule makes, a @python module's file). It is used
only if those files are unchanged, and every folder is unchanged or its
probes (lang.probes) still answer as they did; anything else, an unreadable
or foreign entry included, is a miss.
"""
from __future__ import annotations

import os

from buildsys import __version__

_VERSION = "graph-2"
_HERE = os.path.dirname(os.path.abspath(__file__))
# A graph is only as current as the code that expanded it (an editable
# install changes under its caches).
_CODE = ("graph.py", "parse.py", "probes.py", "model.py", "settings.py", "values.py", "batchfile.lark")
# The signature of a folder that changed as it was read: it equals no real
# one, so its probes are asked again every time.
RACY = "racy"


def signature(path: str):
    """A path's stat signature (git's rule), or None if it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def folder_signatures(root: str, graph, started: float) -> dict:
    """folder -> its signature, for the folders the graph watches; RACY for
    those changed since `started` (when the Batchfile began to be read):
    the graph may hold answers from before that change."""
    from buildsys.digest import is_racy

    out = {}
    for folder in graph.watched:
        sig = signature(os.path.join(root, folder))
        out[folder] = RACY if sig is not None and is_racy(sig[1], started) else sig
    return out


def folders_hold(root: str, graph, signed: dict) -> bool:
    """Is every watched folder as signed, or do its probes still answer as
    they did?"""
    from buildsys.lang.probes import first_change

    for folder, sig in signed.items():
        if signature(os.path.join(root, folder)) != sig and first_change(graph.watched.get(folder, ()), root) is not None:
            return False
    return True


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


def load(state_dir: str, ident: list, root: str):
    """(graph, sources, folders) if the cached graph is current, else None."""
    import pickle

    try:
        with open(_entry(state_dir, ident), "rb") as f:
            stored, sources, folders, graph = pickle.load(f)
        if stored != ident or not isinstance(sources, dict) or not isinstance(folders, dict):
            return None
        for path, sig in sources.items():
            if signature(path) != sig:
                return None
        if not folders_hold(root, graph, folders):
            return None
        return graph, sources, folders
    except Exception:  # missing, truncated, foreign or from another version: a miss
        return None


def save(state_dir: str, ident: list, graph, sources: dict, folders: dict, started: float) -> None:
    """`sources`: the Batchfile, its includes and parameter files (absolute
    path -> signature, taken after expansion); `folders`: from
    folder_signatures. Nothing is saved if one of the sources changed since
    `started` (it may have changed after it was read)."""
    import pickle

    from buildsys.digest import is_racy
    from buildsys.files import write_cache_entry

    if any(sig is not None and is_racy(sig[1], started) for sig in sources.values()):
        return
    try:
        write_cache_entry(_entry(state_dir, ident), pickle.dumps((ident, sources, folders, graph), protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, pickle.PicklingError, TypeError, AttributeError, RecursionError):
        pass
