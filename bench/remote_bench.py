#!/usr/bin/env python3
"""Benchmark `bb build --remote` (AWS Batch) against moto_server on this machine.

    python bench/remote_bench.py                 # all three sections, ~9 min on 2 cores
    python bench/remote_bench.py --quick         # 100-way fan-out, 1,000 cached targets, ~3 min
    python bench/remote_bench.py --only fanout,cached --fanout 1000 --cached 10000

Sections (results in bench/RESULTS_REMOTE.md; `--only` keeps the other
sections of that file from the run that measured them):

docker   moto's Docker-mode Batch: every job is a real container of the
         environment image, pulled from a loopback registry. A 6-way fan-out
         plus a join: the first `bb build --remote` (environment image built
         and pushed, timed from bb's own output), then the same after a
         code-only edit (a script input changes: no image build, no push),
         once more after another edit with BB_BATCH_POLL=1, and where bb's
         wall time goes beyond moto's own job time (job timestamps
         createdAt/startedAt/stoppedAt). Peers: a local `bb build`, and
         `bb build --remote docker` (the same jobs on the local Docker
         Engine, no Batch).
fanout   moto's no-Docker mode (a job is SUCCEEDED inside SubmitJob; nothing
         runs): a 1,000-way `@for` fan-out plus a join. (a) as it is: every
         job "succeeds" without a result, so bb reports every target failed
         ("no usable result") and never submits the join; this measures the
         API economy of submitting and watching 1,000 jobs, and the time.
         (b) with host workers (bench/remote_proxy.py): the jobs run on this
         machine with bb's worker code while the proxy shows them RUNNING,
         so the build completes, the join is submitted, and jobs take time,
         as on Batch. Peers: plain boto3 submitting 1,000 separate jobs, and
         one array job, polled with DescribeJobs.
cached   10,000 targets whose results are all in the shared cache (both
         the remote-keyed and the local-keyed ones: they differ; the set-up
         makes the remote ones with bench/remote_hostexec.py): a fresh
         checkout runs `bb build --remote` (must make 0 Batch calls) beside
         `bb build --no-intermediates` (the same work without --remote) and
         `bb build` (bb's default, which brings every output home).

Batch calls are counted in moto_server's own request log (one line per HTTP
request, `POST /v1/<operation>`), so retries count and nothing of bb's is
trusted for the count. Batch traffic goes through bench/remote_proxy.py
(AWS_ENDPOINT_URL_BATCH), which timestamps every call; S3 and the job
containers talk to moto directly (AWS_ENDPOINT_URL). Everything is started
with the project's test infrastructure (tests/infra: moto_server, the
loopback registry, the base image) and stopped by its pid or id at the end;
the environment images bb builds are removed by reference.

bb itself runs from a snapshot of its sources (`git archive` of HEAD or of
--commit REV; --working-tree for the files as they are) put first on
PYTHONPATH: the environment image's tag covers bb's source, so an edit in
the checkout during the run would otherwise build a new image mid-run.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))  # tests/infra
BIN = os.path.dirname(sys.executable)
BB = [os.path.join(BIN, "bb")] if os.path.exists(os.path.join(BIN, "bb")) else [sys.executable, "-m", "buildsys"]
QUEUE = "bb-bench"
BUCKET = "bb-bench"
SECTIONS = ("docker", "fanout", "cached")
RAW_BEGIN = "<!-- remote_bench raw results, read by --only:"
TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None
GOAL_SUBMIT, GOAL_DESCRIBE = 10, 20


def log(msg: str) -> None:
    print(f"[remote-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ---------------------------------------------------------------------------


class Run:
    def __init__(self, seconds, maxrss_kb, rc, out, err, t0, t1):
        self.seconds, self.maxrss_kb, self.rc, self.out, self.err, self.t0, self.t1 = seconds, maxrss_kb, rc, out, err, t0, t1

    def report(self) -> dict | None:
        try:
            return json.loads(self.out) if self.out.strip().startswith("{") else None
        except ValueError:
            return None


def run(cmd: list[str], cwd: str, env: dict, *, timeout: float = 900, check: bool = True) -> Run:
    """A timed command: wall seconds (and wall-clock start and end), peak RSS of the command itself."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        full = [TIME, "-o", rss.name, "-f", "%M"] + cmd if TIME else cmd
        t0 = time.time()
        p0 = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command and what it started (a group of our own)
            proc.wait()
        except BaseException:  # interrupted: stop the command too, as bb's own Ctrl-C would
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
        seconds = time.perf_counter() - p0
        t1 = time.time()
        out.seek(0)
        err.seek(0)
        lines = rss.read().split() if TIME else []
        maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        r = Run(seconds, maxrss, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), t0, t1)
    if check and r.rc != 0:
        raise SystemExit(f"remote-bench: {' '.join(cmd[:6])} ... exited {r.rc} in {cwd}\nstdout:\n{r.out[-3000:]}\nstderr:\n{r.err[-3000:]}")
    return r


SNAPSHOT = {"path": ""}  # the copy of bb's sources every command of this run imports (see snapshot_bb)


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BB_")) and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["LC_ALL"] = "C"
    if SNAPSHOT["path"]:
        env["PYTHONPATH"] = SNAPSHOT["path"]
    if SNAPSHOT.get("tmp"):
        env["TMPDIR"] = SNAPSHOT["tmp"]  # the workers' scratch folders: on the work folder's file system (tmpfs by default)
    return env


def snapshot_bb(work: str, working_tree: bool = False, rev: str = "HEAD") -> str:
    """A copy of bb's sources (buildsys/ and the files its wheel is built from),
    imported by every bb, worker and proxy of this run through PYTHONPATH: a
    commit (`git archive`, HEAD by default), or with `working_tree` the files
    as they are now. The environment image's tag covers bb's source, so an edit in the
    checkout while the benchmark runs would otherwise build a new image in the
    middle of it and mix two versions of bb in one section."""
    dest = os.path.join(work, "bb-src")
    os.makedirs(dest)
    top = [n for n in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, n)) and (
        n in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in") or re.fullmatch(r"(README|LICEN[CS]E|COPYING|NOTICE|AUTHORS)(\..*)?", n, re.I))]
    if working_tree:
        for folder in ("buildsys", "grammar"):  # buildsys/lang/batchfile.lark links to grammar/
            shutil.copytree(os.path.join(REPO, folder), os.path.join(dest, folder), symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in top:
            shutil.copy2(os.path.join(REPO, name), dest)
    else:
        commit = _out(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], REPO)
        if not commit:
            raise SystemExit(f"remote-bench: no commit '{rev}' in {REPO}")
        SNAPSHOT["commit"] = commit[:7]
        tracked = set(_out(["git", "ls-tree", "--name-only", commit], REPO).split()) & set(top)
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "buildsys", "grammar", *sorted(tracked)], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    SNAPSHOT["path"] = dest
    where = _out([sys.executable, "-c", "import buildsys; print(buildsys.__file__)"], cwd=work, env=clean_env())
    if not where.startswith(dest):
        raise SystemExit(f"remote-bench: with PYTHONPATH={dest}, buildsys is imported from {where}")
    sanity = os.path.join(work, "sanity")
    write(os.path.join(sanity, "Batchfile"), "@for i in 1..3\nout/$(i).txt:\n    echo $(i) > $@\n\nall.txt: out/*.txt\n    cat $^ > $@\n")
    proc = subprocess.run(BB + ["plan", "--no-cache", "all.txt"], cwd=sanity, env=clean_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"remote-bench: bb at {SNAPSHOT.get('commit', 'the working tree')} cannot plan the benchmark's kind of Batchfile "
                         f"(an @for fan-out joined by a glob):\n{proc.stderr[-2000:]}\nRun another commit with --commit REV.")
    shutil.rmtree(sanity)
    subprocess.run([sys.executable, "-m", "compileall", "-q", dest], check=False, env=clean_env())
    return dest


# ---- request logs ------------------------------------------------------------------------

LINE = re.compile(r'"(GET|PUT|HEAD|POST|DELETE|PATCH) (\S+) HTTP/[\d.]+" (\d+)')
OPS = {
    "submitjob": "SubmitJob", "describejobs": "DescribeJobs", "listjobs": "ListJobs",
    "describejobqueues": "DescribeJobQueues", "describejobdefinitions": "DescribeJobDefinitions",
    "registerjobdefinition": "RegisterJobDefinition", "terminatejob": "TerminateJob", "canceljob": "CancelJob",
}


class LogMark:
    """Requests in a server's access log after a point."""

    def __init__(self, path: str):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def text(self) -> str:
        time.sleep(0.3)  # a line is written as the answer goes out
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


def moto_requests(mark: LogMark) -> tuple[collections.Counter, collections.Counter]:
    """(Batch calls by operation, S3 requests by kind) since the mark."""
    batch, s3 = collections.Counter(), collections.Counter()
    for m in LINE.finditer(mark.text()):
        method, path = m.group(1), m.group(2)
        if path.startswith("/moto-api"):
            continue
        if path.startswith("/v1/"):
            name = path[4:].split("?")[0].strip("/")
            batch[OPS.get(name, name)] += 1
        else:
            s3[f"{method} {_s3_kind(path)}"] += 1
    return batch, s3


def _s3_kind(path: str) -> str:
    p, _, query = path.partition("?")
    if "uploadId" in query or "uploads" in query:
        return "multipart"
    for part in ("/cas/", "/ac/", "/bundles/", "/claims/"):
        if part in p:
            return part.strip("/")
    if p.rstrip("/").count("/") <= 1:
        return "list" if "list-type" in query or not query else "bucket"
    return "object"


def registry_requests(mark: LogMark) -> collections.Counter:
    out = collections.Counter()
    for m in LINE.finditer(mark.text()):
        method, path = m.group(1), m.group(2)
        if not path.startswith("/v2"):
            continue
        kind = "blob upload" if "/blobs/uploads" in path else "blob" if "/blobs/" in path else "manifest" if "/manifests/" in path else "other"
        out[f"{method} {kind}"] += 1
    return out


# ---- the infrastructure (tests/infra) --------------------------------------------------


class Infra:
    """What the benchmark starts; `close` stops exactly that."""

    def __init__(self, work: str):
        from infra import base_image, registry

        self.work = work
        self.motos = []
        self.proxies = []
        self.images: set[str] = set()
        self.base = base_image.ensure_base_image()
        self.registry = registry.start_registry()
        log(f"base image {self.base}; registry {self.registry.address} (pid {self.registry.pid})")

    def moto(self, *, use_docker: bool):
        from infra import moto

        srv = moto.start_moto()
        self.motos.append(srv)
        moto.set_use_docker(srv.endpoint, use_docker)
        moto.batch_queue(srv.endpoint, QUEUE)
        moto.client("s3", srv.endpoint).create_bucket(Bucket=BUCKET)
        log(f"moto_server {srv.endpoint} (pid {srv.pid}), Batch {'with Docker' if use_docker else 'without Docker'}")
        return srv

    def stop_moto(self, srv) -> float:
        peak = _peak_rss_mib(srv.pid)
        srv.stop()  # /moto-api/reset (kills job containers still running), then that pid
        self.motos.remove(srv)
        return peak

    def proxy(self, srv, name: str, host_workers: int = 0) -> "Proxy":
        p = Proxy(srv.endpoint, os.path.join(self.work, f"proxy-{name}"), host_workers)
        self.proxies.append(p)
        return p

    def env(self, srv, proxy: "Proxy") -> dict:
        from infra import moto

        env = clean_env()
        env.update(moto.client_env(srv.endpoint))
        env["AWS_ENDPOINT_URL_BATCH"] = proxy.url
        return env

    def close(self) -> None:
        for p in list(self.proxies):
            p.stop()
        for srv in list(self.motos):
            try:
                srv.stop()
            except Exception as err:  # noqa: BLE001 - stop the rest anyway
                log(f"moto {srv.pid}: {err}")
        if self.images:
            from infra.fixtures import remove_docker_objects
            import docker

            client = docker.from_env()
            try:
                removed = remove_docker_objects(client, images=sorted(self.images))
                log(f"removed {len(removed)} docker object(s): {', '.join(removed)}")
            except RuntimeError as err:
                log(str(err))
            client.close()
        self.registry.stop()


class Proxy:
    """bench/remote_proxy.py as a process of our own."""

    def __init__(self, upstream: str, folder: str, host_workers: int):
        os.makedirs(folder, exist_ok=True)
        self.events_path = os.path.join(folder, "events.jsonl")
        self.log_path = os.path.join(folder, "proxy.log")
        port_file = os.path.join(folder, "port")
        env = clean_env()
        from infra import moto

        env.update(moto.client_env(upstream))  # the host workers' S3
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, os.path.join(HERE, "remote_proxy.py"), "--upstream", upstream, "--events", self.events_path,
               "--host-workers", str(host_workers), "--port-file", port_file]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"remote-bench: the Batch proxy did not start:\n{open(self.log_path).read()[-2000:]}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{open(port_file).read().strip()}"
        self.stopped = False

    def events(self) -> list[dict]:
        with open(self.events_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _peak_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def settings_block(infra: Infra, cache: str, requirements: bool = True) -> str:
    return (
        "settings:\n"
        f"    image = {infra.base}\n"
        f"    registry = {infra.registry.address}\n"
        f"    queue = {QUEUE}\n"
        f"    cache = s3://{BUCKET}/{cache}\n"
        + ("    requirements = requirements.txt\n" if requirements else "")
    )


IMAGE_REF = re.compile(r"image (\S+): (?:built|up to date|pushed|pushing|building)")


def image_facts(stderr: str) -> dict:
    """What bb said about the environment image."""
    facts = {"lines": [line for line in stderr.splitlines() if re.search(r"bb: (image |  wheelhouse)", line)]}
    m = re.search(r"image \S+: built in ([\d.]+) s", stderr)
    facts["built_s"] = float(m.group(1)) if m else None
    m = re.search(r"wheelhouse: (\d+) wheels, ([\d.]+) MB in ([\d.]+) s", stderr)
    facts["wheelhouse"] = {"wheels": int(m.group(1)), "mb": float(m.group(2)), "seconds": float(m.group(3))} if m else None
    m = re.search(r"image \S+: pushed in ([\d.]+) s \((\d+) layers sent, (\d+) already there\)", stderr)
    facts["pushed_s"] = float(m.group(1)) if m else None
    facts["layers_sent"] = int(m.group(2)) if m else None
    facts["up_to_date"] = bool(re.search(r"image \S+: up to date", stderr))
    facts["building"] = "building from" in stderr
    facts["pushing"] = ": pushing" in stderr
    facts["refs"] = sorted(set(IMAGE_REF.findall(stderr)))
    return facts


def statuses(report: dict | None) -> dict:
    if not report:
        return {}
    return dict(collections.Counter(t["status"] for t in report["targets"]))


# ---- timelines from the proxy's events ------------------------------------------------------


def timeline(events: list[dict], t_start: float) -> dict:
    """When bb submitted what, and when a DescribeJobs/ListJobs answer first showed it ended."""
    submits = [e for e in events if e["op"] == "SubmitJob" and e.get("status") == 200]
    seen = {}
    for e in events:
        for jid, status in (e.get("done") or {}).items():
            seen.setdefault(jid, (e["t1"], status))
    calls = [e for e in events if e["op"] != "worker"]
    workers = [e for e in events if e["op"] == "worker"]
    out = {
        "first_call": (calls[0]["t0"] - t_start) if calls else None,
        "submits": [{"t": e["t0"] - t_start, "job": e["job"], "size": e.get("size", 0), "name": e.get("name", "")} for e in submits],
        "polls": sum(1 for e in events if e["op"] == "DescribeJobs"),
    }
    jobs = []
    for s in submits:
        jid = s["job"]
        entry = {"job": jid, "size": s.get("size", 0), "submitted": s["t0"] - t_start}
        if s.get("size"):
            kids = [seen[k] for k in seen if k.startswith(jid + ":")]
            parent = seen.get(jid)
            if len(kids) >= s["size"]:
                entry["seen_done"] = max(t for t, _ in kids) - t_start
            elif parent is not None:
                entry["seen_done"] = parent[0] - t_start
            entry["children_seen_done"] = len(kids)
        elif jid in seen:
            entry["seen_done"] = seen[jid][0] - t_start
        mine = [w for w in workers if w["job"] == jid]
        if mine:
            entry["worker_first_start"] = min(w["t0"] for w in mine) - t_start
            entry["worker_last_end"] = max(w["t1"] for w in mine) - t_start
            entry["worker_failed"] = sum(1 for w in mine if w["code"] != 0)
        jobs.append(entry)
    out["jobs"] = jobs
    return out


def moto_job_times(endpoint: str, job_ids: list[str]) -> list[dict]:
    """createdAt/startedAt/stoppedAt (s since the epoch) of these jobs and of array children, from moto."""
    from infra import moto

    batch = moto.client("batch", endpoint)
    out = []
    for jid in job_ids:
        desc = batch.describe_jobs(jobs=[jid])["jobs"][0]
        size = (desc.get("arrayProperties") or {}).get("size")
        entry = {"job": jid, "status": desc["status"], "size": size or 0, **_times(desc)}
        if size:
            kids = batch.list_jobs(arrayJobId=jid)["jobSummaryList"]
            ids = [k["jobId"] for k in kids]
            described = []
            for i in range(0, len(ids), 100):
                described += batch.describe_jobs(jobs=ids[i : i + 100])["jobs"]
            entry["children"] = [{"job": d["jobId"], "status": d["status"], **_times(d)} for d in described]
        out.append(entry)
    return out


def _times(desc: dict) -> dict:
    return {k: desc[k] / 1000 for k in ("createdAt", "startedAt", "stoppedAt") if desc.get(k)}


# ---- 3. docker: real containers -------------------------------------------------------------

FANOUT6 = """
@for i in 1..6
parts/$(i).txt: data.txt scripts/part.sh
    sh scripts/part.sh $(i) > $@

@default
total.txt: parts/1.txt parts/2.txt parts/3.txt parts/4.txt parts/5.txt parts/6.txt
    cat $^ > $@
"""


def docker_project(root: str, infra: Infra, cache: str, run_id: str) -> None:
    write(os.path.join(root, "Batchfile"), settings_block(infra, cache) + FANOUT6)
    write(os.path.join(root, "requirements.txt"), requirements_text(run_id))
    write(os.path.join(root, "data.txt"), "hello\n")
    write(os.path.join(root, "scripts", "part.sh"), 'echo "part $1: $(cat data.txt)"\n')


def requirements_text(run_id: str) -> str:
    return (f"# bench/remote_bench.py run {run_id}: a requirements file with no packages, named in the settings so that\n"
            "# the environment image of this run has a tag no earlier run built (its first --remote builds it).\n")


def docker_section(infra: Infra, work: str, run_id: str) -> dict:
    srv = infra.moto(use_docker=True)
    proxy = infra.proxy(srv, "docker")
    env = infra.env(srv, proxy)
    root = os.path.join(work, "docker")
    out = {"runs": []}

    local = os.path.join(root, "local")
    docker_project(local, infra, "local", run_id)
    r = run(BB + ["build", "--no-cache", "--json"], local, env)
    out["local"] = {"seconds": r.seconds, "statuses": statuses(r.report())}
    log(f"docker: local bb build of the 6-way fan-out: {r.seconds:.2f} s")

    project = os.path.join(root, "remote")
    docker_project(project, infra, "team", run_id)
    steps = (
        ("first", None, {}),
        ("edit", 'echo "PART $1: $(cat data.txt)"\n', {}),
        ("edit, poll 1 s", 'echo "Part $1: $(cat data.txt)"\n', {"BB_BATCH_POLL": "1"}),
    )
    for step, script, extra in steps:
        if script:
            write(os.path.join(project, "scripts", "part.sh"), script)
        mark, rmark = LogMark(srv.log), LogMark(infra.registry.log)
        n_events = len(proxy.events())
        log(f"docker: bb build --remote ({step}) ...")
        r = run(BB + ["build", "--remote", "--json"], project, {**env, **extra}, timeout=1200, check=False)
        batch, s3 = moto_requests(mark)
        reg = registry_requests(rmark)
        report = r.report()
        facts = image_facts(r.err)
        infra.images.update(facts["refs"])
        events = proxy.events()[n_events:]
        tl = timeline(events, r.t0)
        times = moto_job_times(srv.endpoint, [s["job"] for s in tl["submits"]])
        item = {
            "step": step, "poll": extra.get("BB_BATCH_POLL", "5"), "seconds": r.seconds, "rc": r.rc, "maxrss_kb": r.maxrss_kb, "statuses": statuses(report),
            "batch": dict(batch), "s3": dict(s3), "registry": dict(reg), "image": facts, "timeline": tl,
            "jobs": [_relative(j, r.t0) for j in times], "t_end": r.t1 - r.t0,
            "where": [t.get("where", {}) for t in (report or {}).get("targets", [])],
        }
        if r.rc != 0:
            item["stderr_tail"] = r.err[-3000:]
        out["runs"].append(item)
        log(f"docker: {step}: {r.seconds:.1f} s, rc {r.rc}, {statuses(report)}, Batch calls {dict(batch)}, image {facts['built_s']} s built, {facts['pushed_s']} s pushed")
        if r.rc != 0:
            log(r.err[-2000:])

    # peer: the same jobs on the local Docker Engine (bb build --remote docker), no Batch
    peer = os.path.join(root, "docker-backend")
    docker_project(peer, infra, "docker-backend", run_id)
    mark = LogMark(srv.log)
    r = run(BB + ["build", "--remote", "docker", "--json"], peer, env, timeout=900, check=False)
    batch, s3 = moto_requests(mark)
    infra.images.update(image_facts(r.err)["refs"])
    out["docker_backend"] = {"seconds": r.seconds, "rc": r.rc, "statuses": statuses(r.report()), "batch": dict(batch), "image": image_facts(r.err)}
    log(f"docker: bb build --remote docker: {r.seconds:.1f} s, {statuses(r.report())}")
    proxy.stop()
    out["moto_peak_rss_mib"] = infra.stop_moto(srv)
    return out


def _relative(job: dict, t0: float) -> dict:
    out = {k: (v - t0 if k in ("createdAt", "startedAt", "stoppedAt") else v) for k, v in job.items() if k != "children"}
    if "children" in job:
        out["children"] = [{k: (v - t0 if k in ("createdAt", "startedAt", "stoppedAt") else v) for k, v in c.items()} for c in job["children"]]
    return out


# ---- 1. fanout: 1,000 jobs in moto's no-Docker mode -----------------------------------------


def fanout_batchfile(infra: Infra, cache: str, n: int) -> str:
    return settings_block(infra, cache) + f"""
@for i in 1..{n}
out/$(i).txt:
    echo $(i) > $@

@default
all.txt: out/*.txt
    cat $^ > $@
"""


def fanout_section(infra: Infra, work: str, run_id: str, n: int) -> dict:
    srv = infra.moto(use_docker=False)
    root = os.path.join(work, "fanout")
    out = {"n": n}

    # (a) moto as it is: jobs "succeed" at once, no worker runs
    proxy = infra.proxy(srv, "fanout-plain")
    env = infra.env(srv, proxy)
    project = os.path.join(root, "plain")
    write(os.path.join(project, "Batchfile"), fanout_batchfile(infra, "plain", n))
    write(os.path.join(project, "requirements.txt"), requirements_text(run_id))
    mark = LogMark(srv.log)
    log(f"fanout: (a) bb build --remote -k, {n} jobs, no worker ...")
    r = run(BB + ["build", "--remote", "--json", "-k"], project, env, timeout=900, check=False)
    batch, s3 = moto_requests(mark)
    facts = image_facts(r.err)
    infra.images.update(facts["refs"])
    report = r.report()
    tl = timeline(proxy.events(), r.t0)
    errors = collections.Counter(re.sub(r"'[^']*'", "'…'", t.get("error", ""))[:120] for t in (report or {}).get("targets", []) if t.get("error"))
    out["plain"] = {
        "seconds": r.seconds, "rc": r.rc, "maxrss_kb": r.maxrss_kb, "statuses": statuses(report), "summary": (report or {}).get("summary"),
        "batch": dict(batch), "s3": dict(s3), "timeline": tl, "image": facts, "t_end": r.t1 - r.t0, "errors": dict(errors.most_common(3)),
    }
    proxy.stop()
    log(f"fanout: (a) {r.seconds:.1f} s, rc {r.rc}, {statuses(report)}, Batch calls {dict(batch)}")

    # peers: plain boto3, 1000 separate jobs, then one array job
    out["boto3"] = boto3_peers(srv, n)

    # (b) host workers: the proxy runs the jobs here and shows them RUNNING until done
    proxy = infra.proxy(srv, "fanout-workers", host_workers=os.cpu_count() or 2)
    env = infra.env(srv, proxy)
    project = os.path.join(root, "workers")
    write(os.path.join(project, "Batchfile"), fanout_batchfile(infra, "workers", n))
    write(os.path.join(project, "requirements.txt"), requirements_text(run_id))
    mark = LogMark(srv.log)
    log(f"fanout: (b) bb build --remote, {n} jobs run by host workers ...")
    r = run(BB + ["build", "--remote", "--json"], project, env, timeout=1200, check=False)
    batch, s3 = moto_requests(mark)
    report = r.report()
    events = proxy.events()
    tl = timeline(events, r.t0)
    workers = [e for e in events if e["op"] == "worker"]
    ok = False
    try:
        with open(os.path.join(project, "all.txt")) as f:
            ok = f.read().split() == [str(i) for i in sorted(range(1, n + 1), key=lambda i: f"out/{i}.txt")]
    except OSError:
        pass
    out["workers"] = {
        "seconds": r.seconds, "rc": r.rc, "maxrss_kb": r.maxrss_kb, "statuses": statuses(report), "summary": (report or {}).get("summary"),
        "batch": dict(batch), "s3": dict(s3), "timeline": tl, "t_end": r.t1 - r.t0, "verified": ok,
        "worker_jobs": len(workers), "worker_seconds": sum(w["t1"] - w["t0"] for w in workers),
        "threads": os.cpu_count() or 2,
        "polls": [round(e["t0"] - r.t0, 2) for e in events if e["op"] == "DescribeJobs"],
        "listjobs": [round(e["t0"] - r.t0, 2) for e in events if e["op"] == "ListJobs" and e.get("array")],
    }
    if r.rc != 0:
        out["workers"]["stderr_tail"] = r.err[-3000:]
        log(r.err[-2000:])
    proxy.stop()
    log(f"fanout: (b) {r.seconds:.1f} s, rc {r.rc}, {statuses(report)}, Batch calls {dict(batch)}, all.txt verified: {ok}")
    out["moto_peak_rss_mib"] = infra.stop_moto(srv)
    return out


def boto3_peers(srv, n: int) -> dict:
    """What a careful boto3 user does for n jobs: n SubmitJob calls, or one array job; then DescribeJobs
    100 ids a call until every job ended (moto's no-Docker mode: at the first look)."""
    from infra import moto

    batch = moto.client("batch", srv.endpoint)
    out = {}
    for kind in ("separate", "array"):
        mark = LogMark(srv.log)
        t0 = time.perf_counter()
        name = f"peer-{kind}-{os.getpid()}"
        batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
            "image": "busybox", "command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]})
        if kind == "separate":
            ids = [batch.submit_job(jobName=f"{name}-{i}", jobQueue=QUEUE, jobDefinition=name)["jobId"] for i in range(n)]
        else:
            ids = [batch.submit_job(jobName=name, jobQueue=QUEUE, jobDefinition=name, arrayProperties={"size": n})["jobId"]]
        submitted = time.perf_counter() - t0
        pending = list(ids)
        while pending:
            still = []
            for i in range(0, len(pending), 100):
                for d in batch.describe_jobs(jobs=pending[i : i + 100])["jobs"]:
                    if d["status"] not in ("SUCCEEDED", "FAILED"):
                        still.append(d["jobId"])
            pending = still
            if pending:
                time.sleep(0.5)
        seconds = time.perf_counter() - t0
        calls, _ = moto_requests(mark)
        out[kind] = {"seconds": seconds, "submit_seconds": submitted, "batch": dict(calls)}
        log(f"fanout: boto3 {kind}: {seconds:.2f} s, {dict(calls)}")
    return out


# ---- 2. cached: 10,000 targets already in the shared cache ------------------------------------


def cached_section(infra: Infra, work: str, run_id: str, n: int) -> dict:
    # no-Docker mode: should bb submit anything by mistake, no container starts
    srv = infra.moto(use_docker=False)
    proxy = infra.proxy(srv, "cached")
    env = infra.env(srv, proxy)
    root = os.path.join(work, "cached")
    text = fanout_batchfile(infra, "team", n)
    out = {"n": n, "setup": [], "steps": []}

    def checkout(name: str) -> str:
        path = os.path.join(root, name)
        write(os.path.join(path, "Batchfile"), text)
        write(os.path.join(path, "requirements.txt"), requirements_text(run_id))
        return path

    def measured(label: str, args: list[str], cwd: str, *, setup: bool = False, command: list[str] | None = None, keep_stamp: bool = False) -> dict:
        if setup and not keep_stamp:
            # bb's no-op stamp (.bb/noop) is keyed without --remote or the shared cache
            # (buildsys/cli/main.py, _stamp): after `bb build --no-cache`, a `bb build --remote`
            # or a `bb build` with the cache would report everything cached and do nothing.
            # The set-up steps remove it, so each one really plans; the measured steps do not.
            shutil.rmtree(os.path.join(cwd, ".bb", "noop"), ignore_errors=True)
        mark, rmark = LogMark(srv.log), LogMark(infra.registry.log)
        n_events = len(proxy.events())
        r = run((command or BB) + args, cwd, env, timeout=1800, check=False)
        batch, s3 = moto_requests(mark)
        reg = registry_requests(rmark)
        report = r.report()
        facts = image_facts(r.err)
        infra.images.update(facts["refs"])
        item = {
            "step": label, "seconds": r.seconds, "rc": r.rc, "maxrss_kb": r.maxrss_kb, "statuses": statuses(report),
            "batch": dict(batch), "proxy_calls": len(proxy.events()) - n_events, "s3": dict(s3), "registry": dict(reg),
            "image": {k: facts[k] for k in ("built_s", "pushed_s", "up_to_date")},
            "bb_requests": ((report or {}).get("summary") or {}).get("cache", {}).get("requests"),
        }
        if r.rc != 0:
            item["stderr_tail"] = r.err[-3000:]
            log(r.err[-2000:])
        (out["setup"] if setup else out["steps"]).append(item)
        item = dict(item, report=report)
        log(f"cached: {label}: {r.seconds:.2f} s, rc {r.rc}, {statuses(report)}, Batch calls {dict(batch)}, S3 {sum(s3.values())} requests")
        return item

    a = checkout("A")
    first = measured("A: bb build --no-cache (local keys, local store)", ["build", "--no-cache", "-q", "--json"], a, setup=True)
    # A probe of the no-op stamp: right after that build, `bb build --remote --no-cache` must not be
    # a no-op (its keys are remote ones; and without a shared cache it is a usage error, exit 2).
    time.sleep(1.5)  # outputs younger than the file system's time stamps make bb skip writing the stamp
    measured("A: bb build --no-cache again (writes the no-op stamp)", ["build", "--no-cache", "-q", "--json"], a, setup=True, keep_stamp=True)
    probe = run(BB + ["build", "--remote", "--no-cache", "--json"], a, env, check=False)
    probe_report = probe.report() or {}
    local_keys = {t["target"]: t["key"] for t in (first.get("report") or {}).get("targets", [])}
    out["noop_probe"] = {
        "rc": probe.rc, "seconds": probe.seconds, "statuses": statuses(probe_report),
        "same_keys_as_local": bool(local_keys) and {t["target"]: t["key"] for t in probe_report.get("targets", [])} == local_keys,
        "stderr": probe.err[-500:],
    }
    log(f"cached: no-op stamp probe: `bb build --remote --no-cache` after a local build: exit {probe.rc}, {statuses(probe_report)}, "
        f"local keys: {out['noop_probe']['same_keys_as_local']}")
    measured("A: the same with --remote, every job run here by bb's worker code (remote keys, local store)",
             ["--threads", str(os.cpu_count() or 2), "--", "build", "--remote", "--no-cache", "-q", "--json"], a, setup=True,
             command=[sys.executable, os.path.join(HERE, "remote_hostexec.py")])
    measured("A: bb build (all in the local store; shares the local-keyed results and their bundle)", ["build", "--json"], a, setup=True)
    measured("A: bb build --remote (all in the local store; shares the remote-keyed results and their bundle)", ["build", "--remote", "--json"], a, setup=True)

    from infra import moto

    s3 = moto.client("s3", srv.endpoint)
    out["bundles"] = sum(len(page.get("Contents", ())) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="team/bundles/"))
    out["results"] = sum(len(page.get("Contents", ())) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="team/ac/"))
    b, c = checkout("B"), checkout("C")
    d = checkout("D")
    # --remote brings home only the requested outputs (all.txt); a local build brings home every
    # target's outputs unless told --no-intermediates: C is the same work as B, D is bb's default.
    measured("B (fresh checkout): bb build --remote", ["build", "--remote", "--json"], b)
    measured("C (fresh checkout): bb build --no-intermediates", ["build", "--no-intermediates", "--json"], c)
    measured("D (fresh checkout): bb build (brings home every output)", ["build", "--json"], d)
    measured("B again (no-op): bb build --remote", ["build", "--remote", "--json"], b)
    measured("C again (no-op): bb build --no-intermediates", ["build", "--no-intermediates", "--json"], c)
    proxy.stop()
    out["moto_peak_rss_mib"] = infra.stop_moto(srv)
    return out


# ---- machine facts --------------------------------------------------------------------------


def _out(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, env=env).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return "?"


def code_digest(root: str = REPO) -> str:
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, "buildsys"))):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def machine(work: str, working_tree: bool) -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dirty = _out(["git", "status", "--porcelain", "--", "buildsys"], REPO)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "nproc": os.cpu_count(), "mem_gib": mem / (1 << 30), "kernel": platform.release(),
        "python": platform.python_version(), "bb": _out(BB + ["--version"], env=clean_env()),
        "commit": SNAPSHOT.get("commit") or (_out(["git", "rev-parse", "--short", "HEAD"], REPO) + (" + uncommitted changes in buildsys/" if dirty else "")),
        "source": "the checkout's working tree" if working_tree else "a commit (git archive)",
        "code": code_digest(SNAPSHOT["path"] or REPO), "checkout_code_start": code_digest(),
        "boto3": _version("boto3"), "botocore": _version("botocore"), "moto": _version("moto"), "docker_sdk": _version("docker"),
        "docker": _out(["docker", "info", "--format", "{{.ServerVersion}}, storage driver {{.Driver}}, cgroup v{{.CgroupVersion}}"]),
        "registry": _out(["docker-registry", "--version"]).split(" ", 1)[-1],
        "workdir": work, "fs": _out(["df", "-hT", work]).splitlines()[-1] if work else "?",
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


# ---- the report ------------------------------------------------------------------------------


def render(res: dict) -> str:
    sys.path.insert(0, HERE)
    from remote_report import render as _render  # bench/remote_report.py

    return _render(res)


# ---- main -------------------------------------------------------------------------------------


def load_previous(path: str) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    i = text.find(RAW_BEGIN)
    if i < 0:
        return {}
    body = text[i + len(RAW_BEGIN) :]
    body = body[: body.rfind("-->")]
    try:
        return json.loads(body)
    except ValueError:
        return {}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 100-way fan-out and 1,000 cached targets")
    ap.add_argument("--only", help=f"comma-separated sections to run, of {','.join(SECTIONS)} (the others are kept from --out)")
    ap.add_argument("--fanout", type=int, help="width of the no-Docker fan-out (default 1000)")
    ap.add_argument("--cached", type=int, help="targets of the cached graph (default 10000)")
    ap.add_argument("--workdir", help="scratch folder (default: a new folder under /dev/shm if it exists, else the temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--working-tree", action="store_true", help="run bb as the checkout's files are now (default: as committed)")
    ap.add_argument("--commit", default="HEAD", help="the commit of bb to run (default HEAD)")
    ap.add_argument("--label", default="", help="a few words on why the run was made, shown in the report")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_REMOTE.md"), help="the report (default bench/RESULTS_REMOTE.md)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    for s in only:
        if s not in SECTIONS:
            ap.error(f"unknown section '{s}' (use {', '.join(SECTIONS)})")
    cfg = {
        "fanout": args.fanout or (100 if args.quick else 1000),
        "cached": args.cached or (1000 if args.quick else 10000),
        "poll": os.environ.get("BB_BATCH_POLL", "5 (default)"),
        "quick": args.quick,
    }
    if args.workdir:
        work = os.path.abspath(args.workdir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="bb-remote-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    command = "python bench/remote_bench.py" + "".join(" " + shlex.quote(a) for a in argv)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    t0 = time.time()
    infra = None
    try:
        SNAPSHOT["tmp"] = os.path.join(work, "tmp")
        os.makedirs(SNAPSHOT["tmp"], exist_ok=True)
        snapshot_bb(work, args.working_tree, args.commit)
        res = {"machine": machine(work, args.working_tree), "config": cfg, "command": command, "label": args.label, "run_id": run_id}
        log(f"work folder {work}; bb = {' '.join(BB)} from {SNAPSHOT['path']} ({res['machine']['commit']}); sections {', '.join(only)}")
        infra = Infra(work)
        res["base_image"] = infra.base
        for name in SECTIONS:
            if name not in only:
                continue
            started, checkout = time.time(), code_digest()  # the checkout's (bb runs from the snapshot)
            load0 = open("/proc/loadavg").read().split()[:3]
            if name == "docker":
                section = docker_section(infra, work, run_id)
            elif name == "fanout":
                section = fanout_section(infra, work, run_id, cfg["fanout"])
            else:
                section = cached_section(infra, work, run_id, cfg["cached"])
            section["run"] = {
                "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": command, "minutes": (time.time() - started) / 60, "code": res["machine"]["code"],
                "checkout_edited": checkout != code_digest(),
                "loadavg_start": load0, "loadavg_end": open("/proc/loadavg").read().split()[:3], "config": cfg,
            }
            res[name] = section
    finally:
        if infra is not None:
            infra.close()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    res["total_seconds"] = time.time() - t0
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    old = load_previous(args.out)
    for name in SECTIONS:
        if name not in res and name in old:
            res[name] = old[name]
    report = render(res)
    with open(args.out, "w") as f:
        f.write(report + "\n" + RAW_BEGIN + "\n" + json.dumps(res, separators=(",", ":")) + "\n-->\n")
    raw = os.path.join(tempfile.gettempdir(), "remote_bench_results.json")
    with open(raw, "w") as f:
        json.dump(res, f, indent=1)
    print(report)
    log(f"wrote {args.out} (raw numbers also in {raw}) in {res['total_seconds'] / 60:.1f} min")
    return 0


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # SIGTERM (and SIGINT, which a background job ignores) stop the run the way Ctrl-C
    # does: what was started is stopped and removed in main's finally.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sys.exit(main())
