"""Incremental builds: when the no-op stamp differs from the workspace only
in some source files and outputs, only the targets that read a changed file
or made a changed output, and what depends on them (the cone), are planned.
Every other target of the request is current: its key is the one the stamp
recorded, and its result the one the workspace index holds for that key.

Anything doubtful returns None and the build plans every target, as it
would without a stamp: this path only skips work the full path skips too.
"""
from __future__ import annotations

import os

from buildsys.run.report import CACHED, TargetReport


def cone(graph, order: list[str], root: str, files: list[str], outputs: list[str], watch: set[str]) -> set[str] | None:
    """The targets of `order` (dependencies first) to plan again, or None
    when a change is not one a single target's inputs or outputs explain."""
    if any(p in watch for p in files):
        return None  # a requirements file, the Python environment, an imported module: any key
    # Each changed file, and the folders holding it: an input names one of them.
    wanted: dict[str, list[str]] = {}
    for changed in files:
        p, rel = changed, os.path.relpath(changed, root)
        while rel not in ("", os.sep):
            wanted.setdefault(rel, []).append(changed)
            wanted.setdefault(p, []).append(changed)
            p, rel = os.path.dirname(p), os.path.dirname(rel)
    seeds, explained = set(), set()
    named = set(wanted) | {p + "/" for p in wanted}  # as inputs name them, a folder perhaps with its slash
    targets = graph.targets
    for name in order:
        inputs = targets[name].inputs
        if named.isdisjoint(inputs):  # (in C: most targets read no changed file)
            continue
        for inp in inputs:
            hit = wanted.get(inp.rstrip("/"))
            if hit is not None:
                seeds.add(name)
                explained.update(hit)
    if len(explained) < len(set(files)):
        return None
    for p in outputs:
        maker = graph.producer_of(os.path.relpath(p, root))
        if maker is None:
            return None
        seeds.add(maker)
    found = set()
    deps = graph.deps
    for name in order:
        if name in seeds or not found.isdisjoint(deps[name]):
            found.add(name)
    return found if seeds <= found else None


# A target in the cone reading at least this many current targets (a join)
# takes their outputs' digests from its own earlier action, one store read,
# rather than reading each one's result from the index.
CARRY_FROM = 16


def seed(sched, order: list[str], changed: set[str], keys: dict) -> bool:
    """Report every target of `order` outside `changed` as cached, as the
    scheduler reports its own cache hits, with its outputs present (the
    stamp proved them unchanged), and give the planner what the targets in
    `changed` read of them: their results, or for a target reading many,
    the entries of its earlier action (the others' are needed by nothing).
    False, and nothing given, if any of them is not exactly what the stamp
    says."""
    planner, reports = sched.planner, sched.reports
    graph, workspace = planner.graph, planner.workspace
    targets, aliases = graph.targets, graph.aliases  # an alias has no key: the scheduler answers it from its targets
    wanted = {name: keys.get(name) for name in order if name not in changed and name not in aliases}
    if not graph.phony.isdisjoint(wanted):
        return False  # a phony recipe always runs
    # What each target was last built as, by any build of this workspace
    # (compared as dict views: one pass in C over thousands of targets).
    if not wanted.items() <= workspace.last.items():
        return False
    found = dict.fromkeys(wanted)
    carried: dict = {}
    read: set = set()
    for name in changed:
        deps = set(graph.behind_aliases(graph.deps[name])) - changed
        if len(deps) < CARRY_FROM or not _carry(planner, targets[name], keys.get(name), found, carried):
            read |= deps
    results = workspace.last_results({name: keys[name] for name in read if name in found})
    for name in read & found.keys():
        result = results.get(name)
        if result is None or not planner.declares(graph.targets[name], result):
            return False  # (its blobs need not be in the store: its outputs are in place)
        found[name] = result
    planner.results.update((name, result) for name, result in found.items() if result is not None)
    reports.update({name: TargetReport(name, CACHED, keys[name]) for name in found})
    planner.carried.update(carried)
    sched.present.update(found)
    return True


def _carry(planner, target, key, current: dict, carried: dict) -> bool:
    """Put in `carried` the entries, from the target's earlier action (the
    one the stamp's key names, verified against it), of its inputs made by
    `current` targets; False, and nothing put, if there is no such action
    or it lacks one of them. Those targets' outputs are as the stamp signed
    them, so as that action read them."""
    from buildsys.keys.action import verified_inputs
    from buildsys.store.api import CorruptEntry

    try:
        earlier = planner.store.get_result(key) if key else None
    except CorruptEntry:
        return False
    entries = verified_inputs(earlier.action, key) if earlier is not None else None
    if entries is None:
        return False
    graph, found = planner.graph, {}
    producer, producer_of = graph.producer, graph.producer_of
    for path in planner.declared_paths(target):
        bare = path.rstrip("/")
        if (producer.get(bare) or producer_of(bare)) in current:
            entry = entries.get(bare)
            if entry is None:
                return False
            found[path] = entry
    carried.update(found)
    return True
