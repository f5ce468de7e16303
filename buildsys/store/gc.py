"""Garbage collection of a store, local or shared: drop action results by
age or to fit a size (the newest and the protected ones stay), then every
blob that no remaining result names."""
from __future__ import annotations

import time
from dataclasses import dataclass

from buildsys import units
from buildsys.errors import UsageError
from buildsys.store.api import ActionResult, CorruptEntry

# Blobs younger than this are never collected: a build in flight writes its
# blobs before its action result.
GRACE_SECONDS = 3600

def parse_size(text: str) -> int:
    value = units.size(text)
    if value is None:
        raise UsageError(f"'{text}' is not a size.", hint="Write it like 500M, 10G or 1T.")
    return value


def parse_age(text: str) -> float:
    value = units.duration(text, "smhdw", bare=False)
    if value is None:
        raise UsageError(f"'{text}' is not an age.", hint="Write it like 12h, 30d or 4w.")
    return value


@dataclass
class GcReport:
    results_removed: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    results_kept: int = 0
    bytes_kept: int = 0


class _Backend:
    """What collection needs of a store: listings, reads and deletions."""

    def results(self):  # -> iterable of (key, mtime)
        raise NotImplementedError

    def blobs(self):  # -> iterable of (digest, size, mtime)
        raise NotImplementedError

    def referenced(self, key: str) -> set[str]:
        raise NotImplementedError

    def delete_results(self, keys: list[str]) -> None:
        raise NotImplementedError

    def delete_blobs(self, digests: list[str]) -> None:
        raise NotImplementedError


def _names(result: ActionResult | None, manifest) -> set[str]:
    if result is None:
        return set()
    names = {result.log} if result.log else set()
    for out in result.outputs:
        names.add(out.digest)
        if out.path.endswith("/"):
            try:
                names.update(fd.digest for fd in manifest(out.digest).values() if fd.digest)
            except (OSError, ValueError, KeyError, CorruptEntry):
                pass
    return names


class LocalBackend(_Backend):
    def __init__(self, store):
        from buildsys.store.api import read_manifest

        self.store = store
        self.manifest = lambda d: read_manifest(store, d)

    def results(self):
        return self.store.results()

    def blobs(self):
        return self.store.blobs()

    def referenced(self, key):
        try:
            result = self.store.get_result(key)
        except Exception:
            result = None
        return _names(result, self.manifest)

    def delete_results(self, keys):
        self.store.remove_results(keys)

    def delete_blobs(self, digests):
        self.store.remove_blobs(digests)


class SharedBackend(_Backend):
    def __init__(self, tiered):
        from buildsys.store.api import read_manifest

        self.tiered = tiered
        self.remote = tiered.remote
        self.manifest = lambda d: read_manifest(tiered, d)

    def results(self):
        self.keys: set[str] = set()
        for key, _, mtime in self.remote.list("ac"):
            self.keys.add(key)
            yield key, mtime

    def blobs(self):
        return self.remote.list("cas")

    def referenced(self, key):
        try:
            result = self.remote.get_result(key)
        except Exception:
            result = None
        return _names(result, self.manifest)

    def delete_results(self, keys):
        # Names first, so none announces a result already gone; with them go
        # names whose results were not listed (one written meanwhile loses
        # its name only: its result is then found by GET).
        gone = set(keys)
        self.remote.delete("an", [n for n, _, _ in self.remote.list("an") if n.split(".", 1)[0] in gone or n.split(".", 1)[0] not in self.keys])
        self.remote.delete("ac", keys)

    def delete_blobs(self, digests):
        self.remote.delete("cas", digests)


def collect_from(backend: _Backend, *, max_size, max_age, keep: set[str], dry_run=False, pmap=map) -> GcReport:
    now = time.time()
    report = GcReport()
    blobs = {digest: (size, mtime) for digest, size, mtime in backend.blobs()}
    listed = sorted(backend.results(), key=lambda e: -e[1])  # newest first
    refs = dict(zip((k for k, _ in listed), pmap(backend.referenced, [k for k, _ in listed])))
    kept, dropped = [], []
    for key, mtime in listed:
        if key not in keep and max_age is not None and now - mtime > max_age:
            dropped.append(key)
        else:
            kept.append((key, mtime))
    if max_size is not None:
        budget, survivors, counted = max_size, [], set()
        for key, mtime in sorted(kept, key=lambda e: (e[0] not in keep, -e[1])):
            new = refs[key] - counted
            size = sum(blobs.get(d, (0, 0))[0] for d in new)
            if key in keep or size <= budget:
                budget -= size
                counted |= new
                survivors.append((key, mtime))
            else:
                dropped.append(key)
        kept = survivors
    live = set().union(*(refs[k] for k, _ in kept)) if kept else set()
    dead = [d for d, (size, mtime) in blobs.items() if d not in live and now - mtime >= GRACE_SECONDS]
    report.results_removed = len(dropped)
    report.blobs_removed = len(dead)
    report.bytes_freed = sum(blobs[d][0] for d in dead)
    report.results_kept = len(kept)
    report.bytes_kept = sum(blobs[d][0] for d in live if d in blobs)
    if not dry_run:
        backend.delete_results(dropped)  # results first: no result ever names a deleted blob
        backend.delete_blobs(dead)
    return report
