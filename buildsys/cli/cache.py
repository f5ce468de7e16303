"""`bb cache ...`: look after the local store and the shared one."""
from __future__ import annotations

import os
import sys
import time

from buildsys.errors import BBError, UsageError


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _plan(ctx, roots, store):
    """Keys and results of the targets `roots` need, looked up in `store` (no recipe runs)."""
    from buildsys.keys.plan import Planner
    from buildsys.run.schedule import Scheduler
    from buildsys.cli.ui import PlainUI

    planner = Planner(ctx.graph, store, ctx.workspace)
    sched = Scheduler(planner, None, PlainUI(quiet=True), jobs=1, keep_going=True, dry_run=True)
    reports = sched.build(roots)
    return planner, {n: r for n, r in reports.items() if not ctx.graph.is_alias(n)}


def _context(args):
    from buildsys.cli.main import _split_overrides, load_context
    from buildsys.lang.graph import select

    targets, args.overrides = _split_overrides(getattr(args, "targets", []))
    ctx = load_context(args, wanted=targets)
    return ctx, select(ctx.graph, targets)


def _shared(ctx):
    if getattr(ctx.store, "remote", None) is None:
        raise UsageError(
            "no shared cache is configured.",
            hint="Set 'cache = s3://bucket/prefix' in the settings block, $BB_CACHE, or pass --cache.",
        )
    return ctx.store


class _Progress:
    """A bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.bar = None
        self.last = time.time()
        if sys.stderr.isatty() and total:
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(what, total=total)

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif time.time() - self.last > 5:
            self.last = time.time()
            print(f"bb: {self.what}: {self.done}/{self.total}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def push(args) -> int:
    """Upload what the local store has for these targets."""
    ctx, roots = _context(args)
    tiered = _shared(ctx)
    if tiered.read_only:
        raise UsageError("the shared cache is read-only here (--cache-read-only, $BB_CACHE_READ_ONLY or cache_mode).")
    planner, reports = _plan(ctx, roots, tiered.local)
    results = [planner.results[n] for n in reports if n in planner.results]
    missing = [n for n, r in reports.items() if n not in planner.results and not ctx.graph.targets[n].phony]
    tiered.load_bundle(planner.bundle_name())
    shared = [r for r in results if tiered.bundled(r.key)]
    results = [r for r in results if not tiered.bundled(r.key)]  # the bundle says these are shared
    progress = _Progress(len(results), "uploading results")
    try:
        tiered.push(results, on_done=progress.step)
        tiered.share({n: planner.results[n] for n in reports if n in planner.results})  # the project's bundle, merged
    finally:
        progress.close()
        tiered.close()
    stats = tiered.stats()
    already = f"; {len(shared)} already shared" if shared else ""
    print(f"bb: pushed {len(results)} result(s) to {tiered.remote.url} ({_human(stats['bytes_up'])} sent, {stats['requests']} request(s){already})")
    if missing:
        print(f"bb: not in the local store, so not pushed: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""), file=sys.stderr)
    return 0


def pull(args) -> int:
    """Materialize targets from the shared cache without building anything."""
    from buildsys.run.materialize import materialize

    ctx, roots = _context(args)
    tiered = _shared(ctx)
    try:
        planner, reports = _plan(ctx, roots, tiered)
        wanted = ctx.graph.behind_aliases(roots)
        absent = [n for n in wanted if n not in planner.results and not ctx.graph.targets[n].phony]
        present = [n for n in wanted if n in planner.results]
        progress = _Progress(len(present), "downloading outputs")
        tiered.fetch_many(o.digest for n in present for o in planner.results[n].outputs)
        for name in present:
            materialize(tiered, ctx.workspace.stats, ctx.root, planner.results[name].outputs)
            ctx.workspace.record(name, planner.results[name])
            progress.step()
        progress.close()
        tiered.finish({n: planner.results[n] for n in present})
    finally:
        ctx.workspace.save()
        tiered.close()
    stats = tiered.stats()
    print(f"bb: pulled {len(present)} target(s) ({_human(stats['bytes_down'])} received, {stats['requests']} request(s))")
    if absent:
        raise BBError(
            f"not in the shared cache: {', '.join(absent[:10])}" + (" ..." if len(absent) > 10 else "") + ".",
            hint="Build them with 'bb build' (their inputs or recipes differ from anything shared).",
        )
    return 0


def ls(args) -> int:
    """Where each target's current result is: local store, shared cache, or nowhere."""
    ctx, roots = _context(args)
    tiered = getattr(ctx.store, "remote", None) is not None
    local_store = ctx.store.local if tiered else ctx.store
    planner, reports = _plan(ctx, roots, ctx.store)
    if tiered:
        ctx.store.prefetch([r.key for r in reports.values() if r.key], even_local=True)
    rows = []
    for name, r in reports.items():
        if r.key is None:
            rows.append((name, "-", "unknown until its inputs are built"))
            continue
        local = local_store.has_result(r.key)
        shared = tiered and ctx.store.shared_has(r.key)
        where = " + ".join(w for w, ok in (("local", local), ("shared", shared)) if ok) or "missing"
        rows.append((name, r.key[:16], where))
    if tiered:
        ctx.store.close()
    width = max((len(n) for n, _, _ in rows), default=6)
    for name, key, where in rows:
        print(f"{name:<{width}}  {key:<16}  {where}")
    return 0


def _stores(args):
    """The context, whether a shared cache is configured, and the local store."""
    from buildsys.cli.main import load_context

    args.overrides = {}
    ctx = load_context(args)
    tiered = getattr(ctx.store, "remote", None) is not None
    return ctx, tiered, (ctx.store.local if tiered else ctx.store)


def stats(args) -> int:
    ctx, tiered, local = _stores(args)
    results = sum(1 for _ in local.results())
    blobs = [size for _, size, _ in local.blobs()]
    print(f"local store  {local.root}: {results} result(s), {len(blobs)} blob(s), {_human(sum(blobs))}")
    if tiered:
        remote = ctx.store.remote
        r = list(remote.list("ac"))
        b = list(remote.list("cas"))
        print(f"shared cache {remote.url}: {len(r)} result(s), {len(b)} blob(s), {_human(sum(s for _, s, _ in b))}")
        ctx.store.close()
    return 0


def verify(args) -> int:
    """Re-hash every blob; report (and with --delete remove) the corrupt ones."""
    from buildsys.store.api import CorruptEntry

    ctx, tiered, local = _stores(args)
    bad = []
    if not args.shared:
        problem = local.check_database()
        if problem:
            print(f"the local store's database {local.db_path} is damaged: {problem}")
            print("  move it aside (results in it are rebuilt or fetched again), then run 'bb cache verify' again")
            return 1
        blobs = list(local.blobs())
        progress = _Progress(len(blobs), "verifying local blobs")
        for digest, _, _ in blobs:
            if not local.verify_blob(digest):
                bad.append(("local", digest))
                if args.delete:
                    local.discard(digest)
            progress.step()
        progress.close()
    else:
        store = _shared(ctx)
        remote = store.remote
        names = [n for n, _, _ in remote.list("cas")]
        progress = _Progress(len(names), "verifying shared blobs")
        scratch = os.path.join(ctx.workspace.state, "verify.tmp")
        os.makedirs(ctx.workspace.state, exist_ok=True)

        def check(digest):
            tmp = f"{scratch}.{digest}"
            try:
                remote.download_blob(digest, tmp)
                return None
            except CorruptEntry:
                return digest
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

        for digest in store.map(check, names):
            if digest:
                bad.append(("shared", digest))
            progress.step()
        progress.close()
        if args.delete and bad:
            if store.read_only:
                raise UsageError("cannot delete from a read-only shared cache.")
            remote.delete("cas", [d for _, d in bad])
        store.close()
    for where, digest in bad:
        print(f"corrupt {where} blob {digest}" + (" (removed)" if args.delete else ""))
    print(f"bb: {len(bad)} corrupt blob(s)" + ("" if args.delete or not bad else "; rerun with --delete to remove them"))
    return 1 if bad and not args.delete else 0


def gc(args) -> int:
    from buildsys.cli.main import load_context
    from buildsys.store.gc import LocalBackend, SharedBackend, collect_from, parse_age, parse_size

    if args.max_size is None and args.max_age is None:
        raise UsageError("say what to keep: --max-size (such as 10G) and/or --max-age (such as 30d).")
    max_size = parse_size(args.max_size) if args.max_size else None
    max_age = parse_age(args.max_age) if args.max_age else None
    args.targets, args.overrides = [], {}
    ctx = load_context(args)
    if args.shared:
        store = _shared(ctx)
        if store.read_only:
            raise UsageError("cannot collect garbage in a read-only shared cache.")
        keep = set()
        if not args.include_current:
            # what the current Batchfile's targets reach stays
            _, reports = _plan(ctx, list(ctx.graph.targets), store)
            keep = {r.key for r in reports.values() if r.key}
        report = collect_from(SharedBackend(store), max_size=max_size, max_age=max_age, keep=keep, dry_run=args.dry_run, pmap=store.map)
        store.close()
        where = f"the shared cache {store.remote.url}"
    else:
        store = ctx.store.local if getattr(ctx.store, "remote", None) is not None else ctx.store
        keep = set(ctx.workspace.last.values()) if not args.include_current else set()
        report = collect_from(LocalBackend(store), max_size=max_size, max_age=max_age, keep=keep, dry_run=args.dry_run)
        where = "the local store"
        if report.results_removed and not args.dry_run:
            import shutil

            # a no-op stamp may vouch for a result that is gone now
            shutil.rmtree(os.path.join(ctx.workspace.state, "noop"), ignore_errors=True)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"bb: {verb} {report.results_removed} action result(s) and {report.blobs_removed} blob(s) from {where}, "
        f"{_human(report.bytes_freed)}; kept {report.results_kept} result(s), {_human(report.bytes_kept)}"
    )
    return 0
