"""The fast no-op check: is the last successful build of these targets still
current? Answered from stat() calls alone, as make does, before the
Batchfile is even parsed.

After a successful build, a stamp records the stat of everything that could
change the answer: the Batchfile and its includes, every source input (and
every file and folder inside input folders), the folders the expansion
asked about with its questions and their answers (lang.probes: a folder
that changed is a change only where an answer did), the requested outputs
in the workspace, and the declared environment variables. If all are
unchanged, every key is unchanged, so there is nothing to do. Any doubt
means the full path runs; the stamp only ever skips work the full path
would also skip.
"""
from __future__ import annotations

import json
import os
import stat
import time

from buildsys import __version__
from buildsys.lang.cache import signature as _sig

def _env_digest(name: str) -> str | None:
    """Declared variables are compared by digest: their values (tokens,
    passwords) never sit in the stamp in clear."""
    from blake3 import blake3

    value = os.environ.get(name)
    return None if value is None else blake3(value.encode()).hexdigest()




def stamp_path(state_dir: str, identity: list) -> str:
    from blake3 import blake3  # not .digest: the no-op path skips its imports

    name = blake3(json.dumps([__version__] + identity).encode()).hexdigest()[:32]
    return os.path.join(state_dir, "noop", name)


def read(path: str) -> dict | None:
    # marshal, not JSON: a 10,000-target stamp (a few MB) loads in a third
    # of the time and is written in a sixth. It is bb's own file in .bb/,
    # trusted as the graph cache's pickle is; anything unreadable is no stamp.
    import marshal

    try:
        with open(path, "rb") as f:
            stamp = marshal.loads(f.read())  # not marshal.load(f): it reads the file a field at a time
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return stamp if type(stamp) is dict else None


def changes(stamp: dict, settled: dict | None = None, why: list | None = None) -> tuple[list[str], list[str]] | None:
    """The source files and the outputs that differ from the stamp (both
    empty: nothing to do); None if anything else does (the Batchfile, an
    include, a watched folder, a declared variable), or the stamp is not
    what bb writes. Only then may a build be incremental. `settled` gets
    the files signed as racy that proved unchanged, with their stat now;
    `why`, the reason for a None, in words."""
    def stale(reason: str):
        if why is not None:
            why.append(reason)
        return None

    try:
        for p, sig in stamp["sources"].items():
            if _sig(p) != sig:
                return stale(f"'{p}' changed")
        probes, root = stamp["probes"], stamp["root"]
        for p, sig in stamp["dirs"].items():
            if _sig(p) != sig:
                if p not in probes:
                    return stale(f"the input folder '{p}' changed")
                change = _answers_change(p, probes, root, settled)
                if change:
                    return stale(f"{change} (in '{p}')")
        for name, value in stamp["env"].items():
            if _env_digest(name) != value:
                return stale(f"the declared variable {name} changed")
        files = _changed(stamp["files"], settled)
        outputs = _changed(stamp["outputs"], settled)
        report, watch = stamp["report"], stamp["watch"]
        if not (type(report) is dict and all(type(name) is str for name in report)):
            return stale("the last build's stamp is damaged")
        if not (type(watch) is list and all(type(p) is str for p in watch)):
            return stale("the last build's stamp is damaged")
        return files, outputs
    except (KeyError, TypeError, AttributeError, ValueError):
        return stale("the last build's stamp is damaged")


def _changed(group: dict, settled: dict | None) -> list[str]:
    """The files of `group` that differ from their signature (_differs),
    with the common case, a stat exactly as signed, answered here: a stamp
    holds thousands of files."""
    found = []
    for path, signed in group.items():
        try:
            st = os.stat(path)
            if (
                type(signed) is list and len(signed) in (4, 6) and signed[0] == st.st_size and signed[1] == st.st_mtime_ns
                and signed[2] == st.st_ino and signed[3] == st.st_ctime_ns
            ):
                continue
        except OSError:
            pass
        if _differs(path, signed, settled):
            found.append(path)
    return found


def _differs(path: str, signed, settled: dict | None) -> bool:
    """Does the file differ from its signature in the stamp? A source's
    signature carries its digest and executable bit where bb knew them: one
    whose stat changed but whose bytes and bit did not (touched, checked out
    again, saved unchanged) is unchanged, as keys see it. A file written
    just before the stamp (racy: a later edit could keep its stat) is
    signed ["racy", digest, executable] and always compared by its bytes,
    as git does."""
    if type(signed) is list and len(signed) == 6:
        now, executable = _stat(path)
        if now == signed[:4]:
            return False
        digest, was_executable = signed[4], signed[5]
    elif type(signed) is list and len(signed) == 3 and signed[0] == "racy":
        now, executable = _stat(path)
        digest, was_executable = signed[1], signed[2]
    else:
        return _sig(path) != signed
    from buildsys.digest import hash_file, is_racy

    try:
        same = now is not None and executable is was_executable and hash_file(path) == digest
    except (OSError, ValueError):
        return True
    if not same or _stat(path) != (now, executable):
        return True  # changed, or changing as it was read
    if settled is not None and not is_racy(now[1], time.time()):
        settled[path] = now + [digest, executable]
    return False


def _stat(path: str) -> tuple[list | None, bool]:
    """A file's signature and executable bit (which a chmod changes without
    touching its bytes, and which keys cover)."""
    try:
        st = os.stat(path)
    except OSError:
        return None, False
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns], bool(st.st_mode & stat.S_IXUSR)


def settle(path: str, stamp: dict, settled: dict) -> None:
    """After a no-op: racy files found unchanged, and watched folders whose
    probes still hold, are signed by their stat again, so that the next
    check neither reads nor probes them."""
    for group in (stamp["files"], stamp["outputs"], stamp["dirs"]):
        for p in settled.keys() & group.keys():
            group[p] = settled[p]
    _save(path, stamp)


def _answers_change(folder: str, probes: dict, root: str, settled: dict | None) -> str | None:
    """A folder the graph watches changed (bb wrote an output into it, a
    file appeared beside the sources): which question the expansion asked
    of it gets another answer now, in words; None if none does."""
    from buildsys.digest import is_racy
    from buildsys.lang.probes import first_change

    now = _sig(folder)
    change = first_change(probes[folder], root)
    if change is None and _sig(folder) != now:
        change = "it was changing as bb looked"
    if change is None and settled is not None and now is not None and not is_racy(now[1], time.time()):
        settled[folder] = now
    return change


def discard(path: str) -> None:
    """Before a build: a build that fails or is cut short leaves no stamp,
    so the next one takes the full path."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _walk(top: str, files: dict, dirs: dict, sig) -> None:
    dirs[top] = sig(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            dirs[full] = sig(full)
        for f in filenames:
            full = os.path.join(dirpath, f)
            files[full] = sig(full)


def _signer(seen: dict):
    def sig(p: str):
        return seen[p] if p in seen else _sig(p)

    return sig


def _watch(ctx, sig, environment, code, files: dict, dirs: dict, watch: set) -> None:
    """What decides keys besides the targets' declared inputs; an edit there
    may change any key, so it is never built incrementally (`watch`)."""
    full = ctx.full
    named = []
    if ctx.graph.settings.requirements:
        named.append(full(ctx.graph.settings.requirements))
    named.extend(environment)  # what says the recipes' Python packages are unchanged
    code_files, code_dirs = code or ([], [])
    named.extend(full(p) for p in code_files)  # modules the recipes import without declaring them (or that would shadow them)
    for p in named:
        files[p] = sig(p)
        watch.add(p)
    for p in code_dirs:
        dirs[full(p)] = sig(full(p))


def _outputs(ctx, target, sig, outputs: dict) -> None:
    for out in target.outputs if not target.phony else ():
        p = ctx.full(out.rstrip("/"))
        if out.endswith("/"):
            _walk(p, outputs, outputs, sig)
        else:
            outputs[p] = sig(p)


def _save(path: str, stamp: dict) -> None:
    import marshal

    from buildsys.files import write_cache_entry

    try:
        write_cache_entry(path, marshal.dumps(stamp, 4))
    except OSError:
        pass


def write(path: str, ctx, roots: list[str], reports: dict, seen: dict, environment=(), code=()) -> None:
    """`seen`: path -> stat signature as the build saw it when it read the
    file (a later stat could hide an edit made during the build)."""
    from buildsys.digest import is_racy

    graph = ctx.graph
    started = time.time()
    files: dict = {}
    dirs: dict = {}
    outputs: dict = {}
    env: dict = {}
    watch: set = set()
    sig = _signer(seen)
    full = ctx.full

    order = graph.closure(roots)
    if any(graph.targets[n].phony and graph.targets[n].recipe is not None for n in order):
        return  # a @phony recipe runs every time: never skip it
    for name in order:
        target = graph.targets[name]
        for n in target.attrs.env:
            env[n] = _env_digest(n)
        for inp in target.inputs:
            p = full(inp.rstrip("/"))
            if p in files or p in dirs or not graph.is_source(inp):
                continue  # (a source many targets read, src.txt of a fan-out, is signed once)
            if os.path.isdir(p):
                _walk(p, files, dirs, sig)
            else:
                files[p] = sig(p)
        # every output of the graph must still be in the workspace, unchanged
        _outputs(ctx, target, sig, outputs)
    _watch(ctx, sig, environment, code, files, dirs, watch)
    # The Batchfile is judged as of when it was read: an edit just after that
    # could leave its stat as it was, however long the build then took.
    if any(s is not None and is_racy(s[1], started) for s in dirs.values()) or any(s is not None and is_racy(s[1], ctx.read_at) for s in ctx.sources.values()):
        return  # an input folder or the Batchfile changed just now; let the next run take the full path
    # The graph's folders as they were when it was made (a racy one is
    # probed again next time): their probes say whether a change matters.
    probes = {}
    for folder, s in ctx.folders.items():
        p = os.path.abspath(full(folder))
        dirs[p] = s
        probes[p] = graph.watched[folder]
    _sign(started, ctx.workspace.stats.seen, files, outputs)
    _save(path, {
        "sources": ctx.sources,
        "files": files,
        "dirs": dirs,
        "outputs": outputs,
        "env": env,
        "watch": sorted(watch),
        "root": ctx.root,
        "probes": probes,
        "report": {r.name: r.key for r in reports.values()},
    })


# Stands for the signature of a file changed just now whose bytes bb did
# not read: it differs from any real one, so the next build looks at that
# file again (incrementally). One whose digest bb knows is signed
# ["racy", digest, executable] instead, and the next check compares its bytes.
RACY = ["racy"]


def _sign(started: float, digested: dict, files: dict, outputs: dict) -> None:
    """A file modified within a timestamp tick of now could change again
    without its stat changing (git's racy-clean rule): its signature is not
    trusted, and it is compared by its bytes next time. Only for source
    files and outputs, which the next build re-reads one by one; the stamp
    stays good for everything else. A source's signature also carries its
    digest, so that a touch that leaves its bytes as they were changes
    nothing. `digested`: path -> (signature, digest) of the files the build
    read or wrote (StatCache.seen)."""
    from buildsys.digest import is_racy

    for group in (files, outputs):
        for p, s in group.items():
            if type(s) is not list or len(s) != 4:
                continue  # missing, or signed already
            known = digested.get(p)
            digest, executable = (known[1], known[2]) if known is not None and known[0] == s else ("", False)
            if is_racy(s[1], started):
                group[p] = ["racy", digest, executable] if digest else RACY
            elif digest and group is files:
                group[p] = s + [digest, executable]


def update(path: str, stamp: dict, ctx, cone, changed: list[str], reports: dict, seen: dict, environment=(), code=()) -> None:
    """After an incremental build: the stamp it started from, with what that
    build read and wrote signed anew (the changed files, the outputs of the
    targets in `cone`, the code it found) and the new keys. Everything else
    was unchanged when the build began; if it changed since, it differs
    from the stamp, and the next build sees that."""
    from buildsys.digest import is_racy

    started = time.time()
    sig = _signer(seen)
    files, dirs, outputs = dict(stamp["files"]), dict(stamp["dirs"]), dict(stamp["outputs"])
    watch = set(stamp["watch"])
    new_files = {p: sig(p) for p in changed}
    new_dirs: dict = {}
    _watch(ctx, sig, environment, code, new_files, new_dirs, watch)
    # A folder output is signed whole again: files it no longer holds go.
    folders = tuple(ctx.full(o.rstrip("/")) + "/" for name in cone for o in ctx.graph.targets[name].outputs if o.endswith("/"))
    if folders:
        outputs = {p: s for p, s in outputs.items() if not p.startswith(folders)}
    new_outputs: dict = {}
    for name in cone:
        _outputs(ctx, ctx.graph.targets[name], sig, new_outputs)
    if any(s is not None and is_racy(s[1], started) for s in new_dirs.values()):
        return
    # Only what this build signed anew: the rest was signed by an earlier stamp.
    _sign(started, ctx.workspace.stats.seen, new_files, new_outputs)
    for group, new in ((files, new_files), (dirs, new_dirs), (outputs, new_outputs)):
        group.update(new)
    # Watched folders this build changed (it wrote outputs into them) whose
    # probes still hold: signed again, so that the next check only stats them.
    signed: dict = {}
    for p, old in stamp["dirs"].items():
        if _sig(p) != old and p in stamp["probes"]:
            _answers_change(p, stamp["probes"], stamp["root"], signed)
    dirs.update(signed)
    _save(path, {**stamp, "files": files, "dirs": dirs, "outputs": outputs, "watch": sorted(watch), "report": {r.name: r.key for r in reports.values()}})
