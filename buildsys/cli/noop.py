"""The fast no-op check: is the last successful build of these targets still
current? Answered from stat() calls alone, as make does, before the
Batchfile is even parsed.

After a successful build, a stamp records the stat of everything that could
change the answer: the Batchfile and its includes, every source input (and
every file and folder inside input folders), the folders whose listing
shaped the graph (globs, pattern rules), the requested outputs in the
workspace, and the declared environment variables. If all are unchanged,
every key is unchanged, so there is nothing to do. Any doubt means the full
path runs; the stamp only ever skips work the full path would also skip.
"""
from __future__ import annotations

import json
import os
import time

from buildsys import __version__

def _env_digest(name: str) -> str | None:
    """Declared variables are compared by digest: their values (tokens,
    passwords) never sit in the stamp in clear."""
    from blake3 import blake3

    value = os.environ.get(name)
    return None if value is None else blake3(value.encode()).hexdigest()


def _sig(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def stamp_path(state_dir: str, identity: list) -> str:
    from blake3 import blake3  # not .digest: the no-op path skips its imports

    name = blake3(json.dumps([__version__] + identity).encode()).hexdigest()[:32]
    return os.path.join(state_dir, "noop", name)


def check(path: str) -> list | None:
    """The stamp's report ([target, key] pairs) if everything is unchanged."""
    try:
        with open(path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        for group in ("sources", "files", "dirs", "outputs"):
            for p, sig in stamp[group].items():
                if _sig(p) != sig:
                    return None
        for name, value in stamp["env"].items():
            if _env_digest(name) != value:
                return None
        return stamp["report"]
    except (KeyError, TypeError, AttributeError):
        return None


def _walk(top: str, files: dict, dirs: dict, sig) -> None:
    dirs[top] = sig(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            dirs[full] = sig(full)
        for f in filenames:
            full = os.path.join(dirpath, f)
            files[full] = sig(full)


def write(path: str, ctx, roots: list[str], reports: dict, seen: dict, environment=(), code=()) -> None:
    """`seen`: path -> stat signature as the build saw it when it read the
    file (a later stat could hide an edit made during the build)."""
    from buildsys.digest import is_racy

    graph, root = ctx.graph, ctx.root
    started = time.time()
    files: dict = {}
    dirs: dict = {}
    outputs: dict = {}
    env: dict = {}

    def full(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(root, p)

    def sig(p: str):
        return seen[p] if p in seen else _sig(p)

    order = graph.closure(roots)
    if any(graph.targets[n].phony and graph.targets[n].recipe is not None for n in order):
        return  # a @phony recipe runs every time: never skip it
    for name in order:
        target = graph.targets[name]
        for n in target.attrs.env:
            env[n] = _env_digest(n)
        for inp in target.inputs:
            if not graph.is_source(inp):
                continue
            p = full(inp.rstrip("/"))
            if os.path.isdir(p):
                _walk(p, files, dirs, sig)
            else:
                files[p] = sig(p)
        # every output of the graph must still be in the workspace, unchanged
        for out in target.outputs if not target.phony else ():
            p = full(out.rstrip("/"))
            if out.endswith("/"):
                _walk(p, outputs, outputs, sig)
            else:
                outputs[p] = sig(p)
    if graph.settings.requirements:
        files[full(graph.settings.requirements)] = sig(full(graph.settings.requirements))
    for p in environment:  # what says the recipes' Python packages are unchanged
        files[p] = sig(p)
    code_files, code_dirs = code or ([], [])
    for p in code_files:  # modules the recipes import without declaring them (or that would shadow them)
        files[full(p)] = sig(full(p))
    for p in code_dirs:
        dirs[full(p)] = sig(full(p))
    for folder in graph.watched:
        dirs[full(folder)] = sig(full(folder))
    sources = {os.path.abspath(s): sig(os.path.abspath(s)) for s in ctx.sources}
    sigs = [s for group in (files, dirs, outputs, sources) for s in group.values()]
    if any(s is not None and is_racy(s[1], started) for s in sigs):
        return  # something changed just now; let the next run take the full path
    stamp = {
        "sources": sources,
        "files": files,
        "dirs": dirs,
        "outputs": outputs,
        "env": env,
        "report": [[r.name, r.key] for r in reports.values()],
    }
    from buildsys.files import write_atomic

    try:
        write_atomic(path, json.dumps(stamp, separators=(",", ":")).encode())
    except OSError:
        pass
