"""What expanding a Batchfile asked of the disk, and whether the answers
still hold.

Besides the Batchfile and its includes, an expansion reads the disk three
ways: does a path exist (an input no rule makes, a pattern rule's
candidate), is a @python module's file there, and what does a glob match.
Each question with its answer is a probe, filed under the folders whose
listing decides it. The expansion is a function of the Batchfile and these
answers, so a folder whose stat changed (bb wrote an output into it, a
notes file appeared beside the sources) calls for a new expansion only if
one of its probes now answers differently. Probes are plain lists, so the
no-op stamp keeps them as JSON and the graph cache as a pickle.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re

_MAGIC = re.compile(r"[*?[]")


class Probes:
    """The questions one expansion asks, each answered from the disk once.
    `by_folder`: folder (relative to the root, as the Batchfile names it)
    -> the probes its listing answers."""

    def __init__(self, root: str):
        self.root = root
        self.by_folder: dict[str, list] = {}
        self._exists: dict[str, bool] = {}

    def _file(self, folders, probe: list) -> None:
        for folder in folders:
            self.by_folder.setdefault(folder, []).append(probe)

    def exists(self, path: str) -> bool:
        hit = self._exists.get(path)
        if hit is None:
            hit = self._exists[path] = os.path.lexists(_full(self.root, path))
            self._file((_folder(path),), ["exists", path, hit])
        return hit

    def is_file(self, path: str) -> bool:
        hit = os.path.isfile(_full(self.root, path))
        self._file((_folder(path),), ["file", path, hit])
        return hit

    def glob(self, pattern: str, declared: list[str]) -> list[str]:
        """Files on disk and outputs in `declared` that the pattern matches."""
        levels, disk = _on_disk(pattern, self.root)
        made = fnmatch.filter(declared, pattern)
        # Outputs come and go on disk as they are built: what decides the
        # answer is the files that are not outputs, and which outputs match.
        self._file(levels, ["glob", pattern, sorted(disk.union(made)), sorted(disk.difference(made)), levels])
        return sorted(disk.union(made))


def first_change(probes, root: str) -> str | None:
    """The first probe that answers differently now, in words; None if
    every one answers as it did. Raises TypeError or ValueError on a probe
    that is not one (a damaged stamp)."""
    for probe in probes:
        kind = probe[0]
        if kind in ("exists", "file"):
            _, path, answer = probe
            now = (os.path.lexists if kind == "exists" else os.path.isfile)(_full(root, path))
            if now is not answer:
                return f"'{path}' {'appeared' if now else 'is gone'}"
        elif kind == "glob":
            _, pattern, found, outside, levels = probe
            now, disk = _on_disk(pattern, root)
            # The same folders, every file that was not an output still
            # there, and nothing new but outputs that matched before.
            if now != levels or not disk.issuperset(outside) or not disk.issubset(found):
                return f"what '{pattern}' matches changed"
        else:
            raise ValueError(f"not a probe: {kind!r}")
    return None


def _full(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def _folder(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "."


def _on_disk(pattern: str, root: str) -> tuple[list[str], set[str]]:
    """The folders whose listing decides what the pattern matches, and the
    files it matches on disk."""
    full = _full(root, pattern)
    static = os.path.dirname(re.split(r"[*?]", pattern, maxsplit=1)[0]) or "."
    folder, name = os.path.split(pattern)
    if not _MAGIC.search(folder) and folder == (os.path.normpath(folder) if folder else ""):
        # Wildcards in the name only (out/t*.txt), the common case: one
        # listing, as glob.glob reads it (hidden names only for a pattern
        # that starts with a dot), without a stat and a relpath per match.
        try:
            with os.scandir(os.path.join(root, folder) if folder else root) as it:
                entries = {e.name: e for e in it if name.startswith(".") or not e.name.startswith(".")}
        except OSError:
            return [static], set()
        prefix = f"{folder}/" if folder else ""
        return [static], {prefix + n for n in fnmatch.filter(entries, name) if not entries[n].is_dir()}
    levels = {static}
    if "**" in pattern:
        reach = [os.path.join(static, "**")]
    else:
        # Every level a wildcard folder (d*/x/*.csv) reaches: d1/ gaining an
        # x/ changes d1's listing, not the top folder's.
        parts = (os.path.dirname(pattern) or ".").split(os.sep)
        depth = 0 if static == "." else len(static.split(os.sep))
        reach = [os.sep.join(parts[:i]) for i in range(max(depth, 1), len(parts) + 1)]
    for level in reach:
        for folder in glob.glob(os.path.join(root, level), recursive=True):
            if os.path.isdir(folder):
                levels.add(os.path.relpath(folder, root))
    disk = {
        (p if os.path.isabs(pattern) else os.path.relpath(p, root)).replace(os.sep, "/")
        for p in glob.glob(full, recursive=True)
        if not os.path.isdir(p)
    }
    return sorted(levels), disk
