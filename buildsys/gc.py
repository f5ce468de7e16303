"""Garbage collection of the local store: drop old action results by age or
to fit a size, then every blob no remaining result names."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from .errors import BBError
from .store import ActionResult, LocalStore

# Blobs younger than this are never collected: a build in flight writes its
# blobs before its action result.
GRACE_SECONDS = 3600

_SIZE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text.strip().lower())
    if not m:
        raise BBError(f"'{text}' is not a size.", hint="Write it like 500M, 10G or 1T.")
    return int(float(m.group(1)) * _SIZE[m.group(2)])


def parse_age(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if not m:
        raise BBError(f"'{text}' is not an age.", hint="Write it like 12h, 30d or 4w.")
    return float(m.group(1)) * _AGE[m.group(2)]


@dataclass
class GcReport:
    results_removed: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    results_kept: int = 0
    bytes_kept: int = 0


def _referenced(store: LocalStore, result: ActionResult) -> set[str]:
    names = {result.log} if result.log else set()
    for out in result.outputs:
        names.add(out.digest)
        if out.path.endswith("/"):
            try:
                for _rel, digest, _size, _x in json.loads(store.read_bytes(out.digest)):
                    names.add(digest)
            except (OSError, ValueError):
                pass
    return names


def collect(store: LocalStore, *, max_size: int | None, max_age: float | None, keep: set[str], dry_run=False) -> GcReport:
    now = time.time()
    report = GcReport()
    blob_sizes = {digest: st.st_size for digest, _, st in store.blobs()}
    entries = []  # (mtime, key, path, referenced blobs)
    for key, path, st in store.results():
        try:
            result = store.get_result(key)
        except Exception:
            result = None
        refs = _referenced(store, result) if result else set()
        entries.append((st.st_mtime, key, path, refs))
    entries.sort(reverse=True)  # newest first
    kept, dropped = [], []
    for entry in entries:
        mtime, key = entry[0], entry[1]
        if key not in keep and max_age is not None and now - mtime > max_age:
            dropped.append(entry)
        else:
            kept.append(entry)
    if max_size is not None:
        # Keep the newest results (and the protected ones) while they fit.
        budget, survivors, counted = max_size, [], set()
        for entry in sorted(kept, key=lambda e: (e[1] not in keep, -e[0])):
            new = entry[3] - counted
            size = sum(blob_sizes.get(d, 0) for d in new)
            if entry[1] in keep or size <= budget:
                budget -= size
                counted |= new
                survivors.append(entry)
            else:
                dropped.append(entry)
        kept = survivors
    live = set().union(*(e[3] for e in kept)) if kept else set()
    for _, _, path, _ in dropped:
        report.results_removed += 1
        if not dry_run:
            store.remove(path)
    for digest, path, st in list(store.blobs()):
        if digest in live or now - st.st_mtime < GRACE_SECONDS:
            continue
        report.blobs_removed += 1
        report.bytes_freed += st.st_size
        if not dry_run:
            store.remove(path)
    report.results_kept = len(kept)
    report.bytes_kept = sum(blob_sizes.get(d, 0) for d in live)
    return report
