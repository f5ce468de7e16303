#!/usr/bin/env python3
"""Benchmark bb's shared S3 cache against boto3, on a local moto_server.

    python bench/s3_bench.py              # 1 GB transfers, 10,000-target planning (~15 min)
    python bench/s3_bench.py --quick      # 100 MB, 1,000 files, 1,000 targets (< 3 min)
    python bench/s3_bench.py --only plan --fanout 10000 --chain 10000
    python bench/s3_bench.py --workdir /tmp/s3b --keep

What it measures (see bench/RESULTS_S3.md for the numbers):

1. transfer: 1 GB as 4 files of 256 MiB and as 10,000 files of 100 KiB, moved
   by bb (`bb cache push` from the checkout that built them, `bb cache pull`
   into a second, empty checkout) and by boto3's own transfer code (the
   TransferManager for the big files; client.upload_file/download_file on 32
   threads for the small ones), on the same bytes. Wall time, MB/s (10^6
   bytes), requests, and bb/boto3.
2. plan: a fan-out of N trivial targets plus a join (and an N-step chain),
   built and pushed from checkout A; then, in a fresh checkout B (same files,
   empty .bb), `bb plan` and `bb build --json`: wall time and the number of
   S3 requests, with the plan's bundle in the bucket, for a selection other
   than the one pushed, and with the bundles deleted (the fallback).

Requests are counted from moto_server's own request log (one line per HTTP
request), so bb and boto3 are counted the same way and nothing sits between
them and the endpoint; bb's own count (its --json summary, its push/pull
line) is shown next to it.

Every phase gets a fresh moto_server (moto keeps objects in memory). bb and
the boto3 baseline both run as separate processes configured only through the
environment a user would set: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL (and BB_CACHE for bb).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import filecmp
import json
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
BB = [os.path.join(BIN, "bb")] if os.path.exists(os.path.join(BIN, "bb")) else [sys.executable, "-m", "buildsys"]
BUCKET = "bb-bench"
MB = 1_000_000
MiB = 1 << 20
SMALL_THREADS = 32  # boto3 baseline for many small files

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def log(msg: str) -> None:
    print(f"[s3-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ---------------------------------------------------------------------


class Run:
    """One timed command: wall seconds, peak RSS of the process itself (KiB), exit code, output."""

    def __init__(self, seconds: float, maxrss_kb: int, rc: int, out: str, err: str):
        self.seconds, self.maxrss_kb, self.rc, self.out, self.err = seconds, maxrss_kb, rc, out, err


# GNU time reports the peak RSS of the command itself: a process forked from
# this one would inherit our own high-water mark at exec, so wait4's ru_maxrss
# would be at least the size of this script.
TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run(cmd: list[str], cwd: str, env: dict, *, timeout: float = 3600, check: bool = True) -> Run:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        full = [TIME, "-o", rss.name, "-f", "%M"] + cmd if TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, 9)  # the command and whatever it started
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        maxrss = usage.ru_maxrss
        if TIME:
            lines = rss.read().split()
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        r = Run(seconds, maxrss, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and r.rc != 0:
        raise SystemExit(f"s3-bench: {' '.join(cmd[:6])} ... exited {r.rc} in {cwd}\nstdout:\n{r.out[-3000:]}\nstderr:\n{r.err[-3000:]}")
    return r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUNNING: list["Moto"] = []


class Moto:
    """A moto_server of our own on a free loopback port; its request log counts requests."""

    LINE = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/[\d.]+" (\d+)')

    def __init__(self, workdir: str, name: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, f"moto-{name}.log")
        exe = os.path.join(BIN, "moto_server")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "moto.server"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _RUNNING.append(self)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                break
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    raise SystemExit("s3-bench: moto_server did not start; install it with: pip install 'moto[server]'")
                time.sleep(0.1)
        self.client = boto3_client(self.url)
        self.client.create_bucket(Bucket=BUCKET)

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BB_"))}
        env.update(CREDENTIALS)
        env["AWS_ENDPOINT_URL"] = self.url
        env.update(extra)
        return env

    def mark(self) -> int:
        self._log.flush()
        return os.path.getsize(self.log_path)

    def requests_since(self, mark: int) -> collections.Counter:
        """Requests to the bucket since `mark`, by kind ("GET ac", "PUT cas", "POST multipart"...)."""
        time.sleep(0.2)  # the log line is written as the answer goes out; let the last ones land
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        kinds = collections.Counter()
        for m in self.LINE.finditer(text):
            method, path = m.group(1), m.group(2)
            if path.startswith("/moto-api"):
                continue
            kinds[f"{method} {_kind(path)}"] += 1
        return kinds

    def delete(self, prefix: str) -> int:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", ()))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True})
        return len(keys)

    def bundle_entries(self, prefix: str) -> list[int]:
        """How many results each bundle under `prefix` holds."""
        sizes = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for o in page.get("Contents", ()):
                sizes.append(len(json.loads(self.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())))
        return sizes

    def count(self, prefix: str) -> int:
        n = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            n += len(page.get("Contents", ()))
        return n

    def peak_rss_mib(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self) -> float:
        peak = self.peak_rss_mib()
        if self in _RUNNING:
            _RUNNING.remove(self)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return peak


def _kind(path: str) -> str:
    p, _, query = path.partition("?")
    if "uploadId" in query or "uploads" in query:
        return "multipart"
    if p.rstrip("/") == f"/{BUCKET}":
        return "list" if "list-type" in query or not query else "bucket"
    # the first kind in the path: a name's shard may be spelled like a kind (an/ac/...)
    found = sorted((p.find(part), part) for part in ("/cas/", "/ac/", "/an/", "/bundles/") if part in p)
    return found[0][1].strip("/") if found else "object"


def total(kinds: collections.Counter) -> int:
    return sum(kinds.values())


def boto3_client(endpoint: str, threads: int = 10):
    import boto3
    from botocore.config import Config

    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=threads))


# ---- the boto3 baseline (run as its own process, like bb) --------------------------


def boto3_worker(op: str, kind: str, folder: str, prefix: str) -> None:
    """Upload every file of `folder` under `prefix`, or download `prefix` into
    `folder`, as a competent boto3 user would. Prints {"requests", "bytes", "files"}."""
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config
    from concurrent.futures import ThreadPoolExecutor

    # credentials, region and endpoint come from the environment (AWS_*)
    client = boto3.client("s3", config=Config(max_pool_connections=SMALL_THREADS))
    counter = [0]
    client.meta.events.register("before-send.s3", lambda **_: counter.__setitem__(0, counter[0] + 1))
    if op == "upload":
        names = sorted(os.listdir(folder))
        pairs = [(os.path.join(folder, n), f"{prefix}/{n}") for n in names]
    else:
        os.makedirs(folder, exist_ok=True)
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            keys.extend(o["Key"] for o in page.get("Contents", ()))
        pairs = [(os.path.join(folder, k.rsplit("/", 1)[-1]), k) for k in keys]
    if kind == "large":
        # boto3's transfer manager: multipart above 8 MiB, 10 threads, all files in flight
        with create_transfer_manager(client, TransferConfig()) as manager:
            if op == "upload":
                futures = [manager.upload(path, BUCKET, key) for path, key in pairs]
            else:
                futures = [manager.download(BUCKET, key, path) for path, key in pairs]
            for f in futures:
                f.result()
    else:
        with ThreadPoolExecutor(SMALL_THREADS) as pool:
            if op == "upload":
                list(pool.map(lambda pk: client.upload_file(pk[0], BUCKET, pk[1]), pairs))
            else:
                list(pool.map(lambda pk: client.download_file(BUCKET, pk[1], pk[0]), pairs))
    size = sum(os.path.getsize(p) for p, _ in pairs)
    print(json.dumps({"requests": counter[0], "bytes": size, "files": len(pairs)}))


# ---- 1. transfers --------------------------------------------------------------------

GEN_SMALL = """\
import os, sys
out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
for i in range(n):
    with open(os.path.join(out, f"{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
"""


def transfer_batchfile(large_mib: int, files: int, file_kib: int) -> str:
    return f"""\
# 4 big files and one directory of many small ones, all random bytes
@for i in 1..4
big/$(i).bin:
    head -c {large_mib * MiB} /dev/urandom > $@

small/: gen_small.py
    python3 gen_small.py $@ {files} {file_kib * 1024}

large: big/1.bin big/2.bin big/3.bin big/4.bin

many: small/

@default
all: large many
"""


def _bb_requests(text: str) -> int | None:
    m = re.search(r"(\d+) request\(s\)", text)
    return int(m.group(1)) if m else None


def _same_tree(a: str, b: str) -> bool:
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    return all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names)


def _sync() -> None:
    os.sync()  # dirty pages of the previous step are written back before the clock starts


def transfer_section(work: str, cfg: dict) -> dict:
    root = os.path.join(work, "transfer")
    a = os.path.join(root, "A")
    os.makedirs(a, exist_ok=True)
    with open(os.path.join(a, "Batchfile"), "w") as f:
        f.write(transfer_batchfile(cfg["large_mib"], cfg["files"], cfg["file_kib"]))
    with open(os.path.join(a, "gen_small.py"), "w") as f:
        f.write(GEN_SMALL)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BB_"))}
    log(f"transfer: generating the data once with bb build --no-cache ({4 * cfg['large_mib']} MiB in 4 files, {cfg['files']} files of {cfg['file_kib']} KiB)")
    gen = run(BB + ["build", "--no-cache", "-q"], a, base_env)
    out = {"generate_seconds": gen.seconds, "cases": []}
    for kind, alias, folder in (("large", "large", "big"), ("small", "many", "small")):
        src = os.path.join(a, folder)
        nbytes = sum(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src))
        nfiles = len(os.listdir(src))
        case = {"kind": kind, "bytes": nbytes, "files": nfiles}

        # bb: push from A, pull into a fresh checkout B
        moto = Moto(work, f"transfer-{kind}-bb")
        env = moto.env(BB_CACHE=f"s3://{BUCKET}/bb")
        b = os.path.join(root, f"B-{kind}")
        shutil.rmtree(b, ignore_errors=True)
        os.makedirs(b)
        for name in ("Batchfile", "gen_small.py"):
            shutil.copy(os.path.join(a, name), b)
        log(f"transfer {kind}: bb cache push {alias} ({nfiles} file(s), {nbytes / MB:.0f} MB)")
        _sync()
        mark = moto.mark()
        push = run(BB + ["cache", "push", alias], a, env)
        push_kinds = moto.requests_since(mark)
        log(f"transfer {kind}: bb cache push took {push.seconds:.1f}s, {total(push_kinds)} requests; bb cache pull {alias} in a fresh checkout")
        _sync()
        mark = moto.mark()
        pull = run(BB + ["cache", "pull", alias], b, env)
        pull_kinds = moto.requests_since(mark)
        log(f"transfer {kind}: bb cache pull took {pull.seconds:.1f}s, {total(pull_kinds)} requests")
        ok = _same_tree(src, os.path.join(b, folder))
        case["bb"] = {
            "upload": {"seconds": push.seconds, "requests": total(push_kinds), "kinds": dict(push_kinds), "bb_requests": _bb_requests(push.out), "maxrss_kb": push.maxrss_kb},
            "download": {"seconds": pull.seconds, "requests": total(pull_kinds), "kinds": dict(pull_kinds), "bb_requests": _bb_requests(pull.out), "maxrss_kb": pull.maxrss_kb},
            "verified": ok,
            "moto_peak_rss_mib": moto.stop(),
        }
        shutil.rmtree(b, ignore_errors=True)

        # boto3 on the same bytes
        moto = Moto(work, f"transfer-{kind}-boto3")
        env = moto.env()
        dest = os.path.join(root, f"boto3-{kind}")
        shutil.rmtree(dest, ignore_errors=True)
        worker = [sys.executable, os.path.abspath(__file__), "--boto3-worker"]
        log(f"transfer {kind}: boto3 upload")
        _sync()
        mark = moto.mark()
        up = run(worker + ["upload", kind, src, "boto3"], root, env)
        up_kinds = moto.requests_since(mark)
        log(f"transfer {kind}: boto3 upload took {up.seconds:.1f}s, {total(up_kinds)} requests; boto3 download")
        _sync()
        mark = moto.mark()
        down = run(worker + ["download", kind, dest, "boto3"], root, env)
        down_kinds = moto.requests_since(mark)
        log(f"transfer {kind}: boto3 download took {down.seconds:.1f}s, {total(down_kinds)} requests")
        ok = _same_tree(src, dest)
        case["boto3"] = {
            "upload": {"seconds": up.seconds, "requests": total(up_kinds), "kinds": dict(up_kinds), "maxrss_kb": up.maxrss_kb},
            "download": {"seconds": down.seconds, "requests": total(down_kinds), "kinds": dict(down_kinds), "maxrss_kb": down.maxrss_kb},
            "verified": ok,
            "moto_peak_rss_mib": moto.stop(),
        }
        shutil.rmtree(dest, ignore_errors=True)
        out["cases"].append(case)
    return out


# ---- 2. planning a cached graph -------------------------------------------------------


def fanout_batchfile(n: int) -> str:
    ids = ", ".join(str(i) for i in range(1, n + 1))
    return f"""\
# {n} independent trivial targets and a join
IDS = [{ids}]

@for i in 1..{n}
out/$(i).txt:
    echo $(i) > $@

@default
all.txt: out/$(IDS).txt
    cat $^ > $@
"""


def chain_batchfile(n: int) -> str:
    rules = ["# a chain of {n} trivial steps, each reading the one before\n".format(n=n), "c/1.txt:\n    echo 1 > $@\n"]
    for i in range(2, n + 1):
        rules.append(f"{'@default' + chr(10) if i == n else ''}c/{i}.txt: c/{i - 1}.txt\n    echo {i} > $@\n")
    return "\n".join(rules)


def _counts(stderr: str) -> dict:
    m = re.search(r"bb: (\d+) to run, (\d+) cached", stderr)
    return {"to_run": int(m.group(1)), "cached": int(m.group(2))} if m else {}


def plan_section(work: str, shape: str, n: int) -> dict:
    root = os.path.join(work, f"plan-{shape}-{n}")
    a, b = os.path.join(root, "A"), os.path.join(root, "B")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(a)
    os.makedirs(b)
    text = fanout_batchfile(n) if shape == "fanout" else chain_batchfile(n)
    for folder in (a, b):
        with open(os.path.join(folder, "Batchfile"), "w") as f:
            f.write(text)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BB_"))}
    out = {"shape": shape, "n": n, "steps": []}

    log(f"plan {shape} {n}: building checkout A (local store only)")
    t0 = time.perf_counter()
    run(BB + ["build", "--no-cache", "-q"], a, base_env, timeout=1200)
    out["build_seconds"] = time.perf_counter() - t0
    local = run(BB + ["plan", "--no-cache"], a, base_env)
    out["steps"].append({"step": "bb plan in A, local store only (no S3)", "seconds": local.seconds, "requests": 0, "counts": _counts(local.err), "maxrss_kb": local.maxrss_kb})

    moto = Moto(work, f"plan-{shape}-{n}")
    env = moto.env(BB_CACHE=f"s3://{BUCKET}/team")
    log(f"plan {shape} {n}: bb cache push from A")
    mark = moto.mark()
    push = run(BB + ["cache", "push"], a, env)
    kinds = moto.requests_since(mark)
    out["push"] = {"seconds": push.seconds, "requests": total(kinds), "kinds": dict(kinds), "bb_requests": _bb_requests(push.out)}
    log(f"plan {shape} {n}: push took {push.seconds:.1f}s, {total(kinds)} requests")

    def fresh():
        for name in (".bb", "out", "c", "all.txt"):
            p = os.path.join(b, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.unlink(p)

    def step(label: str, args: list[str], bundle: bool) -> dict:
        fresh()
        mark = moto.mark()
        r = run(BB + args, b, env)
        kinds = moto.requests_since(mark)
        rec = {"step": label, "args": args, "bundle": bundle, "seconds": r.seconds, "requests": total(kinds), "kinds": dict(kinds), "maxrss_kb": r.maxrss_kb}
        if "--json" in args:
            report = json.loads(r.out)
            rec["counts"] = report["summary"]["counts"]
            rec["bb_requests"] = report["summary"].get("cache", {}).get("requests")
        else:
            rec["counts"] = _counts(r.err)
        log(f"plan {shape} {n}: {label}: {r.seconds:.2f}s, {rec['requests']} requests, {rec['counts']}")
        out["steps"].append(rec)
        return rec

    step("bb plan", ["plan"], True)
    step("bb build --json", ["build", "--json"], True)
    if shape == "fanout":
        step("bb plan 'out/1*.txt' (a selection never pushed)", ["plan", "out/1*.txt"], True)
    # Someone fetches only the final output in a third checkout; does the
    # plan's bundle survive for the next fresh checkout?
    c = os.path.join(root, "C")
    os.makedirs(c)
    shutil.copy(os.path.join(a, "Batchfile"), c)
    final = "all.txt" if shape == "fanout" else f"c/{n}.txt"
    before = moto.bundle_entries("team/bundles/")
    mark = moto.mark()
    pulled = run(BB + ["cache", "pull", final], c, env)
    out["pull_final"] = {
        "target": final, "seconds": pulled.seconds, "requests": total(moto.requests_since(mark)),
        "bundle_entries_before": before, "bundle_entries_after": moto.bundle_entries("team/bundles/"),
    }
    log(f"plan {shape} {n}: bb cache pull {final} in checkout C: bundle entries {before} -> {out['pull_final']['bundle_entries_after']}")
    if n <= 2000 or out["pull_final"]["bundle_entries_after"] == before:
        # (a fallback plan at 10,000 targets costs a minute or two here; the
        # 'bundles deleted' step measures the same thing)
        step(f"bb plan, after `bb cache pull {final}` in a third checkout", ["plan"], True)
    out["bundles_deleted"] = moto.delete("team/bundles/")
    step("bb plan, bundles deleted", ["plan"], False)
    step("bb build --json, bundles deleted", ["build", "--json"], False)
    out["bundles_after_build"] = moto.count("team/bundles/")
    step("bb plan after that build", ["plan"], out["bundles_after_build"] > 0)
    out["moto_peak_rss_mib"] = moto.stop()
    shutil.rmtree(root, ignore_errors=True)
    return out


# ---- the report ---------------------------------------------------------------------------


def _out(cmd: list[str], cwd: str | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return "?"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def code_files() -> dict:
    """path -> digest of each of bb's sources as they are on disk now (others may be editing them)."""
    import hashlib

    files = {}
    for folder in ("buildsys", "grammar"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if name.endswith((".py", ".lark")):
                    path = os.path.join(dirpath, name)
                    with open(path, "rb") as f:
                        files[os.path.relpath(path, REPO)] = hashlib.sha256(f.read()).hexdigest()
    return files


def code_digest(files: dict | None = None) -> str:
    files = code_files() if files is None else files
    return hashlib_sha(json.dumps(sorted(files.items())).encode())[:12]


def hashlib_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def machine(work: str) -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    head = _out(["git", "rev-parse", "--short", "HEAD"], REPO)
    dirty = _out(["git", "status", "--porcelain", "--", "buildsys"], REPO)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "mem_gib": mem / (1 << 30),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bb": _out(BB + ["--version"]),
        "commit": head + (" + uncommitted changes in buildsys/" if dirty else ""),
        "code": code_digest(),
        "boto3": _version("boto3"),
        "botocore": _version("botocore"),
        "s3transfer": _version("s3transfer"),
        "moto": _version("moto"),
        "workdir": work,
        "fs": _out(["df", "-hT", work]).splitlines()[-1] if work else "?",
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def _s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def _section_times(res: dict) -> list[str]:
    parts = []
    if "transfer" in res and res["transfer"].get("run"):
        parts.append(f"transfer {res['transfer']['run']['minutes']:.1f} min")
    for p in res.get("plans", []):
        if p.get("run"):
            parts.append(f"{p['shape']} {p['n']} {p['run']['minutes']:.1f} min")
    return parts


def _run_line(section: dict) -> str:
    r = section.get("run")
    if not r:
        return ""
    line = f"_From `{r['command']}` started {r['date']} ({r['minutes']:.1f} min for this section; load average at its end {' '.join(r['loadavg_end'])}; bb sources {r['code_start']})._"
    if r["code_end"] != r["code_start"]:
        changed = ", ".join(f"`{c}`" for c in r.get("code_changed", [])) or "files not recorded"
        line += (f"\n\n**bb's sources changed while this section ran ({r['code_start']} -> {r['code_end']}: {changed}): "
                 "its numbers may mix two versions of bb; judge from the files whether that matters, or run it again.**")
    return line


def _kinds(k: dict) -> str:
    return ", ".join(f"{v} {name}" for name, v in sorted(k.items(), key=lambda kv: -kv[1]))


def render(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# bb shared S3 cache: benchmark results",
        "",
        f"Generated by `{res.get('command', 'python bench/s3_bench.py')}` on {m['date']}, in {res['total_seconds'] / 60:.1f} min. "
        "`bench/s3_bench.py` is the reference for what is run; each run rewrites this file (with `--merge`, keeping the sections it did not measure). "
        "Each section names the run it comes from.",
        "",
        "Time per section: " + "; ".join(_section_times(res)) + ".",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, nproc = {m['nproc']}; memory {m['mem_gib']:.1f} GiB; kernel {m['kernel']}",
        f"- Python {m['python']}; {m['bb']} ({m['commit']}; sources {m['code']}); boto3 {m['boto3']}, botocore {m['botocore']}, s3transfer {m['s3transfer']}; moto {m['moto']} (moto_server on 127.0.0.1)",
        f"- work folder: `{m['fs']}`",
        f"- load average at start {' '.join(m['loadavg_start'])}, at end {' '.join(res['loadavg_end'])} (the machine was shared with other jobs; see the notes)",
        "",
        "**moto on loopback is not S3.** Latency is ~0 and there is no bandwidth limit, but moto itself is slow: a few "
        "milliseconds of Python per request, ~100-200 requests/s in all on this 2-core machine, shared by client and server. So "
        "these numbers measure client overhead and request counts, not what a team would see against AWS, where each request "
        "costs 10-50 ms of latency: there, what runs in parallel and how many requests are made matter more, not less.",
        "",
    ]
    if "transfer" in res:
        t = res["transfer"]
        lines += [
            "## 1. Transfers: bb vs boto3",
            "",
            _run_line(t),
            "",
            f"The data is generated once by `bb build --no-cache` in checkout A ({_s(t['generate_seconds'])}); boto3 moves the very files bb built. "
            "bb uploads with `bb cache push TARGET` from A and downloads with `bb cache pull TARGET` into a second checkout with an empty `.bb` "
            "(the download includes writing the local store and the workspace copy, and verifying blake3 digests). "
            f"boto3: the TransferManager (`create_transfer_manager`, default TransferConfig: 8 MiB parts, 10 threads, all files in flight) for the big files; "
            f"`client.upload_file` / `download_file` on a ThreadPoolExecutor of {SMALL_THREADS} threads (max_pool_connections={SMALL_THREADS}) for the small files; "
            "the download lists the prefix first. Each side gets a fresh moto_server. MB = 10^6 bytes; requests are counted in moto's request log.",
            "",
            "| data | direction | bb | boto3 | bb MB/s | boto3 MB/s | bb / boto3 (time) | requests bb / boto3 | bb requests by kind |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in t["cases"]:
            label = f"{c['files']} x {c['bytes'] / c['files'] / MiB:.0f} MiB" if c["kind"] == "large" else f"{c['files']} x {c['bytes'] / c['files'] / 1024:.0f} KiB"
            label += f" ({c['bytes'] / MB:.0f} MB)"
            for d in ("upload", "download"):
                x, y = c["bb"][d], c["boto3"][d]
                lines.append(
                    f"| {label} | {d} | {_s(x['seconds'])} | {_s(y['seconds'])} | {c['bytes'] / MB / x['seconds']:.1f} | {c['bytes'] / MB / y['seconds']:.1f} "
                    f"| **{x['seconds'] / y['seconds']:.2f}x** | {x['requests']} / {y['requests']} | {_kinds(x['kinds'])} |"
                )
        lines += [""]
        for c in t["cases"]:
            lines.append(
                f"- {c['kind']}: outputs verified byte for byte: bb {'yes' if c['bb']['verified'] else '**NO**'}, boto3 {'yes' if c['boto3']['verified'] else '**NO**'}; "
                f"bb's own request count: push {c['bb']['upload']['bb_requests']}, pull {c['bb']['download']['bb_requests']}; "
                f"peak RSS bb push/pull {c['bb']['upload']['maxrss_kb'] / 1024:.0f}/{c['bb']['download']['maxrss_kb'] / 1024:.0f} MiB, "
                f"boto3 up/down {c['boto3']['upload']['maxrss_kb'] / 1024:.0f}/{c['boto3']['download']['maxrss_kb'] / 1024:.0f} MiB; "
                f"moto peak RSS {c['bb']['moto_peak_rss_mib']:.0f} MiB (bb phase), {c['boto3']['moto_peak_rss_mib']:.0f} MiB (boto3 phase)"
            )
        lines.append("")
    for p in res.get("plans", []):
        n = p["n"]
        goal = n / 100
        lines += [
            f"## 2. Planning a fully cached {p['shape']} of {n} targets from a fresh checkout",
            "",
            _run_line(p),
            "",
            (f"`@for i in 1..{n}` makes `out/$(i).txt` with `echo $(i) > $@`; the default target `all.txt` joins them (`cat $^ > $@`). "
             if p["shape"] == "fanout" else
             f"`c/1.txt` ... `c/{n}.txt`, each `echo i > $@` reading the one before; the default target is the last. ")
            + f"Checkout A built it with `bb build --no-cache` (local store only) in {_s(p['build_seconds'])}"
            + f", then `bb cache push` sent it in {_s(p['push']['seconds'])} with {p['push']['requests']} requests ({_kinds(p['push']['kinds'])}). "
            "Checkout B holds the same Batchfile in another folder; each step below starts from an empty `.bb` and no outputs. "
            f"Goal: at most one request per 100 targets, i.e. <= {goal:.0f} requests for {n} targets.",
            "",
            "| step | wall | requests (moto log) | bb's count (--json) | result | requests by kind | peak RSS | <= 1 request per 100 targets |",
            "|---|---:|---:|---:|---|---|---:|---|",
        ]
        for s in p["steps"]:
            counts = s.get("counts", {})
            result = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "?"
            if "local store only" in s["step"]:
                verdict = "—"
            elif s["requests"] <= goal:
                verdict = "yes"
            elif "selection" in s["step"]:
                verdict = "no (no bundle for this selection)"
            elif not s.get("bundle", True):
                verdict = "no (fallback without bundle)"
            else:
                verdict = "**NO**"
            lines.append(
                f"| {s['step']} | {_s(s['seconds'])} | {s['requests']} | {s.get('bb_requests', '') if s.get('bb_requests') is not None else ''} "
                f"| {result} | {_kinds(s.get('kinds', {}))} | {s.get('maxrss_kb', 0) / 1024:.0f} MiB | {verdict} |"
            )
        before = p.get("before")
        if before:
            lines += ["", f"The same steps with bb before result names ({before['commit']}), run just before on the same machine:", ""]
            lines += [
                f"- {s['step']}: {_s(s['seconds'])}, {s['requests']} requests ({_kinds(s.get('kinds', {}))})"
                for s in before["steps"] if "bundles deleted" in s["step"] or s["step"] == "push"
            ]
        lines += [
            "",
            f"- bundles deleted before the fallback steps: {p['bundles_deleted']}; bundles in the bucket after the fallback `bb build`: {p['bundles_after_build']}; "
            f"moto peak RSS {p['moto_peak_rss_mib']:.0f} MiB.",
            "",
        ]
    lines += ["## What the numbers say", ""] + observations(res) + [""]
    lines += [
        "## Notes",
        "",
        "- Single runs, not medians: a full run takes 12-15 minutes here. Repeat runs on this machine moved individual times by up to ~40%; "
        "the load average above shows other jobs were running on the same 2 cores.",
        "- moto serves everything from one Python process. With latency ~0, a client that sends requests one at a time loses "
        "little against one that keeps 32 in flight, because the server is the bottleneck either way. Against real S3 "
        "(10-50 ms per request) a sequential client is 10-30x slower than a parallel one, so read the request counts and "
        "the parallelism notes below as the part that carries over.",
        "- Request counts are from moto's request log (one line per HTTP request, including retries and multipart parts), "
        "taken between the start and the end of each command.",
        "- `bb cache pull` and `bb build` download with verification (blake3), write the blob to the local store and copy it into the "
        "workspace (ext4 here: no reflinks), so they write every byte twice; boto3 writes it once.",
        "",
    ]
    return "\n".join(lines)


def _vs_fanout(res: dict) -> str:
    """The chain's fallback per request, next to the fan-out's: a chain has one
    ready target at a time, so its lookups cannot overlap."""
    for p in res.get("plans", []):
        if p["shape"] == "fanout":
            s = next((s for s in p["steps"] if s["step"] == "bb plan, bundles deleted"), None)
            if s:
                return (f", against {1000 * s['seconds'] / max(s['requests'], 1):.1f} ms in the fan-out's fallback, whose ready targets are looked up "
                        "many at a time; a chain's keys are known one after another, so its lookups go one at a time")
    return ""


def observations(res: dict) -> list[str]:
    obs = []
    t = res.get("transfer")
    if t:
        for c in t["cases"]:
            bu, tu = c["bb"]["upload"], c["boto3"]["upload"]
            bd, td = c["bb"]["download"], c["boto3"]["download"]
            obs.append(
                f"- {c['kind']} files: bb takes {bu['seconds'] / tu['seconds']:.2f}x boto3's time to upload and {bd['seconds'] / td['seconds']:.2f}x to download "
                f"({bu['requests'] / c['files']:.2f} vs {tu['requests'] / c['files']:.2f} requests per file up, {bd['requests'] / c['files']:.2f} vs {td['requests'] / c['files']:.2f} down)."
            )
            heads = c["bb"]["upload"]["kinds"].get("HEAD cas", 0)
            if c["kind"] == "small" and heads >= c["files"]:
                obs.append(
                    f"  bb's upload checks every blob with a HEAD before its PUT ({heads} HEADs for {c['files']} files, "
                    f"{c['bb']['upload']['kinds'].get('PUT cas', 0)} PUTs): twice boto3's requests, and on S3 twice the per-request charges and round trips."
                )
            if c["kind"] == "large" and c["boto3"]["download"]["kinds"].get("GET object", 0) > c["files"]:
                obs.append(
                    f"  boto3 downloads each big file as {c['boto3']['download']['kinds'].get('GET object', 0) // c['files']} ranged GETs of 8 MiB in parallel; "
                    "bb with one GET per file. moto answers every ranged GET by copying the whole object "
                    "(`FakeKey.value` in moto/s3/models.py) and slicing it, which penalizes boto3 here: the download ratio for big files "
                    "says more about moto than about either client. Against S3, parallel ranges are usually the faster way to fetch one large object."
                )
    for p in res.get("plans", []):
        n = p["n"]
        by = {s["step"]: s for s in p["steps"]}
        planned = by.get("bb plan")
        none = by.get("bb plan, bundles deleted")
        local = p["steps"][0]
        if planned:
            obs.append(
                f"- {p['shape']} {n}: with the bundle, `bb plan` from a fresh checkout made {planned['requests']} requests "
                f"({'meets' if planned['requests'] <= n / 100 else 'misses'} the goal of <= {n / 100:.0f}) in {_s(planned['seconds'])}, "
                f"against {_s(local['seconds'])} for the same plan in A on the local store alone."
            )
        if none:
            how = ("one listing of the results and their names (16 prefixes each) answers every lookup" if not none.get("kinds", {}).get("GET ac")
                   else "it falls back to one GET per target")
            obs.append(
                f"  Without the bundle {how}: {none['requests']} requests, {_s(none['seconds'])} "
                f"({none['seconds'] / max(planned['seconds'], 1e-9):.0f}x the time with the bundle)."
                + f" That is {1000 * none['seconds'] / max(none['requests'], 1):.1f} ms per request"
                + (_vs_fanout(res) if p["shape"] == "chain" else "") + "."
            )
        sel = by.get("bb plan 'out/1*.txt' (a selection never pushed)")
        if sel:
            obs.append(
                f"  A selection other than the pushed one (`out/1*.txt`, {sel['counts'].get('cached', '?')} targets) has no bundle of its own: "
                f"{sel['requests']} requests in {_s(sel['seconds'])}. Bundles are named by the exact set of targets planned."
            )
        pf = p.get("pull_final")
        after_pull = next((s for s in p["steps"] if s["step"].startswith("bb plan, after `bb cache pull")), None)
        if pf:
            obs.append(
                f"  `bb cache pull {pf['target']}` in a third checkout ({pf['requests']} requests) left the bundle(s) holding {pf['bundle_entries_after']} result(s) "
                f"(before: {pf['bundle_entries_before']}); "
                + (f"the next fresh `bb plan` made {after_pull['requests']} requests in {_s(after_pull['seconds'])}."
                   if after_pull else "the next fresh `bb plan` then costs what the 'bundles deleted' row shows (not run again here, to keep the run short).")
                + (" **The pull replaced the plan's bundle with a smaller one**: it writes a bundle under the name of the whole plan holding only the pulled targets' results."
                   if sum(pf["bundle_entries_after"]) < sum(pf["bundle_entries_before"]) else "")
            )
        was = {s["step"]: s for s in p.get("before", {}).get("steps", [])}
        if none and "bb plan, bundles deleted" in was and "bb build --json, bundles deleted" in by:
            old, build, old_build = was["bb plan, bundles deleted"], by["bb build --json, bundles deleted"], was.get("bb build --json, bundles deleted")
            obs.append(
                f"  Result names ({p['before']['commit']} had none): the plan without a bundle went from {old['requests']} requests in {_s(old['seconds'])} "
                f"to {none['requests']} in {_s(none['seconds'])}. A build that brings every output home still reads each result once (to check it against its name "
                f"before its bytes are used, keep it locally and bundle it again) and each blob: {build['requests']} requests"
                + (f", as before ({old_build['requests']})" if old_build else "")
                + f". Pushing costs one more PUT per result (its name): {p['push']['requests']} requests, against {was['push']['requests']} before."
            )
        healed = by.get("bb plan after that build")
        if healed and none:
            obs.append(
                f"  A `bb build` without the bundle writes it again ({p['bundles_after_build']} bundle(s) after it); the next fresh plan made {healed['requests']} requests."
            )
    return obs


# ---- main ------------------------------------------------------------------------------------


RAW_BEGIN = "<!-- s3_bench raw results, read by --merge:"


def load_previous(path: str) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    i = text.find(RAW_BEGIN)
    if i < 0:
        return {}
    j = text.find("-->", i)
    try:
        return json.loads(text[i + len(RAW_BEGIN) : j])
    except ValueError:
        return {}


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--boto3-worker"]:
        boto3_worker(*argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 MB, 1,000 small files, 1,000-target graphs (< 3 min)")
    ap.add_argument("--only", choices=("transfer", "plan"), help="run one part")
    ap.add_argument("--fanout", type=int, help="targets in the fan-out (default 10000; --quick 1000; 0 skips)")
    ap.add_argument("--chain", type=int, help="steps in the chain (default 1000; --quick 300; 0 skips)")
    ap.add_argument("--workdir", help="where to put the checkouts (default: a new folder in $TMPDIR, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_S3.md"), help="the report to write (default bench/RESULTS_S3.md)")
    ap.add_argument("--merge", action="store_true", help="keep the sections of the existing report that this run does not measure")
    args = ap.parse_args(argv)

    cfg = {
        "quick": args.quick,
        "large_mib": 25 if args.quick else 256,
        "files": 1000 if args.quick else 10000,
        "file_kib": 100,
        "fanout": args.fanout if args.fanout is not None else (1000 if args.quick else 10000),
        "chain": args.chain if args.chain is not None else (300 if args.quick else 1000),
    }
    missing = [m for m in ("boto3", "moto") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"s3-bench: {', '.join(missing)} not installed; install the test extras: pip install -e '.[test]'")
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="bb-s3-bench-")
    os.makedirs(work, exist_ok=True)
    need = (8 if not args.quick else 1) << 30
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"s3-bench: {work} has less than {need >> 30} GiB free")
    t0 = time.time()
    res = {"machine": machine(work), "config": cfg}
    command = "python bench/s3_bench.py" + "".join(f" {a}" for a in argv)
    res["command"] = command

    def stamp(section: dict, started: float, code: dict) -> dict:
        now = code_files()
        section["run"] = {
            "code_start": code_digest(code),
            "code_end": code_digest(now),
            "code_changed": sorted(k for k in code.keys() | now.keys() if code.get(k) != now.get(k)),
            "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "minutes": (time.time() - started) / 60,
            "loadavg_end": open("/proc/loadavg").read().split()[:3],
        }
        return section

    log(f"work folder {work}; bb = {' '.join(BB)}")
    try:
        if args.only in (None, "transfer"):
            started, code = time.time(), code_files()
            res["transfer"] = stamp(transfer_section(work, cfg), started, code)
        if args.only in (None, "plan"):
            res["plans"] = []
            for shape in ("fanout", "chain"):
                if cfg[shape]:
                    started, code = time.time(), code_files()
                    res["plans"].append(stamp(plan_section(work, shape, cfg[shape]), started, code))
    finally:
        for server in list(_RUNNING):
            server.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    res["total_seconds"] = time.time() - t0
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    if args.merge:
        old = load_previous(args.out)
        if "transfer" not in res and "transfer" in old:
            res["transfer"] = old["transfer"]
        have = {(p["shape"], p["n"]) for p in res.get("plans", [])}
        res["plans"] = res.get("plans", []) + [p for p in old.get("plans", []) if (p["shape"], p["n"]) not in have]
        res["plans"].sort(key=lambda p: (p["shape"] != "fanout", p["n"]))
    report = render(res)
    text = report + "\n" + RAW_BEGIN + "\n" + json.dumps(res, separators=(",", ":")) + "\n-->\n"
    with open(args.out, "w") as f:
        f.write(text)
    raw = os.path.join(work if (args.keep or args.workdir) else tempfile.gettempdir(), "s3_bench_results.json")
    with open(raw, "w") as f:
        json.dump(res, f, indent=1)
    print(report)
    log(f"wrote {args.out} (raw numbers: {raw}) in {res['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
