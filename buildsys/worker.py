"""The worker: what runs inside a container (`python -m buildsys.worker`).

It gets an action's digest and where the store is, and nothing else:

    python -m buildsys.worker --store s3://bucket/prefix --action DIGEST [--timeout S]
    python -m buildsys.worker --store /bb-store --actions DIGEST   # an array job: one per index

It looks the action's key up first (someone may have built it meanwhile: then
it runs nothing), lays out exactly the inputs the key covers in a scratch
folder, runs the recipe there, uploads the outputs and the recipe's output,
and writes the action result last. Every digest is verified; no path leaves
the scratch folder. The exit code is the recipe's (0 when it was cached)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from buildsys import __version__


def open_store(where: str, scratch: str):
    from buildsys.store.local import LocalStore

    if where.startswith("s3://"):
        from buildsys.store.s3 import S3Store
        from buildsys.store.tiered import TieredStore

        remote = S3Store(where, endpoint=os.environ.get("AWS_ENDPOINT_URL", ""), region=os.environ.get("AWS_DEFAULT_REGION", ""))
        return TieredStore(LocalStore(os.path.join(scratch, "store")), remote)
    return LocalStore(where)


def array_index() -> int:
    """This job's index in an array job: AWS_BATCH_JOB_ARRAY_INDEX, else the
    suffix of the job id (moto sets only `<parent>:<i>`)."""
    index = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX") or os.environ.get("AWS_BATCH_JOB_ID", "").partition(":")[2]
    if not index.isdigit():
        raise SystemExit("bb worker: --actions needs AWS_BATCH_JOB_ARRAY_INDEX (or a job id ending in :<index>)")
    return int(index)


def run(store, digest: str, timeout: float, scratch: str, cpus: int = 1) -> int:
    from buildsys.digest import StatCache, hash_bytes, is_digest
    from buildsys.keys.action import Action
    from buildsys.keys.plan import thread_env
    from buildsys.run import sandbox
    from buildsys.run.executors import Job
    from buildsys.run.executors.local import LocalExecutor
    from buildsys.run.materialize import OutputMissing, capture
    from buildsys.store.api import ActionResult, CorruptEntry

    if not is_digest(digest):
        print(f"bb worker: '{digest[:80]}' is not an action digest", file=sys.stderr)
        return 2
    data = store.read_bytes(digest)
    if hash_bytes(data) != digest:
        raise CorruptEntry(f"action {digest[:12]} does not match its digest")
    action = Action.from_json(json.loads(data))
    key = action.key()
    try:
        if store.get_result(key) is not None:
            print(f"bb worker: {action.target}: already built (key {key[:16]}); nothing to run")
            return 0
    except CorruptEntry:
        pass  # a bad entry is replaced by this run
    work = os.path.join(scratch, "work")
    os.makedirs(work)
    sandbox.lay_out(action, store, work)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")}
    env.update(thread_env(cpus))
    env.update((name, value) for name, value in action.env if value is not None)
    shell = dict(action.environment).get("shell", "/bin/sh")
    executor = LocalExecutor(os.path.join(scratch, "running"))
    print(f"bb worker: {action.target}: running (key {key[:16]})", flush=True)
    try:
        outcome = executor.run(Job(action.target, action.recipe, shell, work, env, timeout))
    finally:
        executor.close()
    sys.stdout.buffer.write(outcome.output)
    sys.stdout.flush()
    if outcome.exit_code != 0:
        reason = f"timed out after {timeout:g}s" if outcome.timed_out else f"exited with code {outcome.exit_code}"
        print(f"bb worker: {action.target}: the recipe {reason}", flush=True)
        return outcome.exit_code or 1
    try:
        outputs = capture(store, StatCache(None), work, action.outputs)
    except OutputMissing as missing:
        print(f"bb worker: {action.target}: the recipe succeeded but did not create the declared output '{missing.path}'", flush=True)
        return 1
    log = store.put_bytes(outcome.output) if outcome.output else ""
    where = {"host": os.uname().nodename, "bb": __version__, "executor": os.environ.get("BB_EXECUTOR", "container")}
    if os.environ.get("AWS_BATCH_JOB_ID"):
        where["job"] = os.environ["AWS_BATCH_JOB_ID"]
    store.put_result(ActionResult(key, outputs, 0, log, outcome.started, outcome.duration, action.to_json(), provenance=where))
    if hasattr(store, "finish"):
        store.finish({})  # uploads: blobs first, the result last
    print(f"bb worker: {action.target}: done", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildsys.worker", description="Run one bb action from the store.")
    parser.add_argument("--store", required=True, help="the store: a folder, or s3://bucket/prefix")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--action", help="digest of the action (its JSON, in the store)")
    which.add_argument("--actions", help="digest of a JSON list of action digests; this job runs the one at its array index")
    parser.add_argument("--timeout", type=float, default=0.0)
    parser.add_argument("--cpus", type=int, default=1, help="cores the job was given: the recipe's thread-count variables")
    args = parser.parse_args(argv)
    from buildsys.errors import BBError
    from buildsys.store.api import CorruptEntry

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bb-worker.") as scratch:
        store = open_store(args.store, scratch)
        try:
            digest = args.action
            if args.actions:
                digest = json.loads(store.read_bytes(args.actions))[array_index()]
            return run(store, digest, args.timeout, scratch, max(1, args.cpus))
        except (BBError, CorruptEntry, OSError, ValueError, KeyError) as err:
            text = err.render() if isinstance(err, BBError) else f"bb worker: error: {type(err).__name__}: {err}"
            print(text, file=sys.stderr, flush=True)
            return 2
        finally:
            if hasattr(store, "close"):
                store.close()
            print(f"bb worker: {time.time() - started:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
