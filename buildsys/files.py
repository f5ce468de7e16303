"""bb's own files (state, caches, stamps): where they live, and that they
are written whole or not at all."""
from __future__ import annotations

import os
import threading


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file and a rename, so that neither a reader
    nor a crash ever sees half a file; on failure the temporary file is
    removed and the error raised."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# How many entries a cache folder of .bb keeps: enough for the Batchfile
# versions and command lines a user goes back and forth between.
CACHE_ENTRIES = 16


def write_cache_entry(path: str, data: bytes) -> None:
    """write_atomic into a cache folder (.bb/parse, .bb/graph, .bb/noop),
    then remove all but its CACHE_ENTRIES newest entries: every Batchfile
    edit and every new set of targets or overrides makes one (megabytes for
    a large graph), and nothing else would ever remove them."""
    write_atomic(path, data)
    entries = []
    try:
        with os.scandir(os.path.dirname(path) or ".") as listing:
            for entry in listing:
                if entry.name.endswith(".tmp"):
                    continue  # another bb's write in progress
                try:
                    entries.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path))
                except OSError:
                    pass  # removed meanwhile
    except OSError:
        return
    entries.sort()
    for _, old in entries[:-CACHE_ENTRIES]:
        if old != path:
            try:
                os.unlink(old)
            except OSError:
                pass


def user_cache_dir() -> str | None:
    """bb's cache for what holds across all of a user's projects (the Python
    interpreters it has probed): $XDG_CACHE_HOME/bb, else ~/.cache/bb; None
    without a home folder to put it in."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bb") if os.path.isabs(base) else None
