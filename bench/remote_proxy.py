#!/usr/bin/env python3
"""A recording proxy for the AWS Batch API, on loopback in front of moto_server
(bench/remote_bench.py starts one per run, as its own process).

    python bench/remote_proxy.py --upstream http://127.0.0.1:PORT --events FILE [--host-workers N]

bb is pointed at it with AWS_ENDPOINT_URL_BATCH (botocore's per-service
endpoint), while S3 and the job containers keep AWS_ENDPOINT_URL = moto itself,
so only Batch calls pass through here. Every call is forwarded unchanged and
written to FILE as one JSON line with its wall-clock times ("t0", "t1"), its
operation, and for SubmitJob, DescribeJobs and ListJobs what it said about
which jobs; the benchmark counts calls from moto's own request log and uses
this file for *when* things happened.

--host-workers N: moto's no-Docker Batch mode marks a job SUCCEEDED inside
SubmitJob and runs nothing, so bb finds no result and reports every target
failed. With this option the proxy plays the compute environment instead: each
job that SubmitJob accepts is run here, on N threads, by bb's own worker code
(`buildsys.worker.run`, the function `python -m buildsys.worker` calls in a
container, against the same S3 cache), one array child after another; until a
job's worker has finished, DescribeJobs and ListJobs show it RUNNING (an array
parent with a statusSummary that counts its finished children), then SUCCEEDED,
or FAILED with the worker's exit code. The worker runs in this process, not in
a fresh container, and all jobs share one LocalExecutor (one recipe
supervisor process), so a job costs its recipe and its S3 requests, not a
Python start-up; nothing about bb's side (its calls, its polling) changes.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

OPS = {
    "/v1/submitjob": "SubmitJob",
    "/v1/describejobs": "DescribeJobs",
    "/v1/listjobs": "ListJobs",
    "/v1/describejobqueues": "DescribeJobQueues",
    "/v1/describejobdefinitions": "DescribeJobDefinitions",
    "/v1/registerjobdefinition": "RegisterJobDefinition",
    "/v1/terminatejob": "TerminateJob",
    "/v1/canceljob": "CancelJob",
    "/v1/describecomputeenvironments": "DescribeComputeEnvironments",
}
TERMINAL = ("SUCCEEDED", "FAILED")


class Jobs:
    """What the host workers have done, by job id (array children by index)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.size: dict[str, int] = {}  # job id -> array size (0: a single job)
        self.codes: dict[str, dict[int, int]] = {}  # job id -> {index (0 for a single job): exit code}

    def add(self, job_id: str, size: int) -> None:
        with self.lock:
            self.size[job_id] = size
            self.codes[job_id] = {}

    def done(self, job_id: str, index: int, code: int) -> None:
        with self.lock:
            self.codes[job_id][index] = code

    def known(self, job_id: str) -> bool:
        return job_id.partition(":")[0] in self.size

    def status(self, job_id: str) -> tuple[str, int | None, dict | None]:
        """(status, exit code, statusSummary for an array parent)."""
        parent, colon, index = job_id.partition(":")
        with self.lock:
            size, codes = self.size[parent], dict(self.codes[parent])
        if colon:
            code = codes.get(int(index))
            return ("RUNNING", None, None) if code is None else ("SUCCEEDED" if code == 0 else "FAILED", code, None)
        if not size:
            code = codes.get(0)
            return ("RUNNING", None, None) if code is None else ("SUCCEEDED" if code == 0 else "FAILED", code, None)
        ok = sum(1 for c in codes.values() if c == 0)
        failed = len(codes) - ok
        summary = {"SUBMITTED": 0, "PENDING": 0, "RUNNABLE": 0, "STARTING": 0, "RUNNING": size - len(codes), "SUCCEEDED": ok, "FAILED": failed}
        if len(codes) < size:
            return "RUNNING", None, summary
        return ("SUCCEEDED" if not failed else "FAILED"), None, summary


def _rewrite_job(job: dict, jobs: Jobs, now_ms: int) -> None:
    status, code, summary = jobs.status(job["jobId"])
    job["status"] = status
    if status == "RUNNING":
        job.pop("stoppedAt", None)
        job["startedAt"] = job.get("startedAt") or now_ms
    if code is not None and code != 0:
        job.setdefault("container", {})["exitCode"] = code
        job["statusReason"] = "Essential container in task exited"
    if summary is not None:
        job.setdefault("arrayProperties", {})["statusSummary"] = summary


class HostWorkers:
    """Runs submitted jobs with bb's worker code on threads of this process."""

    def __init__(self, n: int, jobs: Jobs, record):
        self.jobs, self.record = jobs, record
        self.tasks: queue.Queue = queue.Queue()
        self._listings: dict[str, list[str]] = {}
        self._s3 = {}
        self._s3_lock = threading.Lock()
        for i in range(n):
            threading.Thread(target=self._loop, name=f"host-worker-{i}", daemon=True).start()

    def submit(self, job_id: str, command: list[str], size: int) -> None:
        args = _worker_args(command)
        for index in range(size or 1):
            self.tasks.put((job_id, index, size, args))

    def _shared(self, url: str):
        from buildsys.store.s3 import S3Store

        with self._s3_lock:
            if url not in self._s3:
                self._s3[url] = S3Store(url, endpoint=os.environ.get("AWS_ENDPOINT_URL", ""), region=os.environ.get("AWS_DEFAULT_REGION", ""))
            return self._s3[url]

    def _loop(self) -> None:
        from buildsys import worker
        from buildsys.store.local import LocalStore
        from buildsys.store.tiered import TieredStore

        while True:
            job_id, index, size, args = self.tasks.get()
            t0 = time.time()
            code = 2
            try:
                with tempfile.TemporaryDirectory(prefix="bb-host-worker.") as scratch:
                    store = TieredStore(LocalStore(os.path.join(scratch, "store")), self._shared(args["store"]))
                    try:
                        digest = args.get("action")
                        if args.get("actions"):
                            listing = self._listings.get(args["actions"])
                            if listing is None:
                                listing = self._listings[args["actions"]] = json.loads(store.read_bytes(args["actions"]))
                            digest = listing[index]
                        code = worker.run(store, digest, float(args.get("timeout") or 0), scratch)
                    finally:
                        store.close()
            except Exception as err:  # noqa: BLE001 - a failed job, like a crashed container
                print(f"host worker: {job_id}:{index}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                code = 2
            self.jobs.done(job_id, index, code)
            self.record({"op": "worker", "job": job_id, "index": index if size else None, "t0": t0, "t1": time.time(), "code": code})


def _worker_args(command: list[str]) -> dict:
    out, i = {}, 0
    while i < len(command):
        word = command[i]
        if word.startswith("--") and i + 1 < len(command):
            out[word[2:]] = command[i + 1]
            i += 2
        else:
            i += 1
    return out


def make_server(upstream: str, events_path: str, host_workers: int) -> ThreadingHTTPServer:
    up = urlparse(upstream)
    events = open(events_path, "a", buffering=1)
    write_lock = threading.Lock()
    jobs = Jobs()
    seen_done: set[str] = set()

    def record(item: dict) -> None:
        with write_lock:
            events.write(json.dumps(item, separators=(",", ":")) + "\n")

    workers = HostWorkers(host_workers, jobs, record) if host_workers else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _handle(self):
            t0 = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.partition("?")[0].rstrip("/")
            op = OPS.get(path, f"{self.command} {path}")
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            item = {"op": op, "t0": t0, "status": resp.status}
            try:
                req = json.loads(body) if body else {}
            except ValueError:
                req = {}
            if resp.status == 200 and op in ("SubmitJob", "DescribeJobs", "ListJobs"):
                try:
                    out = json.loads(data)
                except ValueError:
                    out = None
                if out is not None:
                    data = self._inspect(op, req, out, item)
            item["t1"] = time.time()
            record(item)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _inspect(self, op: str, req: dict, out: dict, item: dict) -> bytes:
            now_ms = int(time.time() * 1000)
            if op == "SubmitJob":
                size = (req.get("arrayProperties") or {}).get("size", 0)
                item.update(job=out.get("jobId"), name=req.get("jobName"), size=size)
                if workers is not None:
                    jobs.add(out["jobId"], size)
                    workers.submit(out["jobId"], (req.get("containerOverrides") or {}).get("command") or [], size)
                return json.dumps(out).encode()
            listed = out.get("jobs") if op == "DescribeJobs" else out.get("jobSummaryList")
            listed = listed or []
            if workers is not None:
                for job in listed:
                    if jobs.known(job.get("jobId", "")):
                        _rewrite_job(job, jobs, now_ms)
            item["ids"] = len(req.get("jobs") or []) if op == "DescribeJobs" else None
            if op == "ListJobs":
                item["array"] = req.get("arrayJobId")
                item["queue_status"] = req.get("jobStatus")
                item["returned"] = len(listed)
            newly = {}
            for job in listed:
                jid, status = job.get("jobId", ""), job.get("status", "")
                summary = (job.get("arrayProperties") or {}).get("statusSummary") or {}
                if status in TERMINAL and jid not in seen_done:
                    seen_done.add(jid)
                    newly[jid] = status
                if summary:
                    item.setdefault("summaries", {})[jid] = {k: v for k, v in summary.items() if v}
            if newly:
                item["done"] = newly
            return json.dumps(out).encode()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="moto_server's URL")
    ap.add_argument("--events", required=True, help="JSON lines file to append to")
    ap.add_argument("--host-workers", type=int, default=0, help="run submitted jobs here on N threads (moto's no-Docker mode)")
    ap.add_argument("--port-file", help="write the port here once listening")
    args = ap.parse_args(argv)
    if args.host_workers:
        from remote_hostexec import share_local_executor  # bench/, next to this file

        share_local_executor()  # one recipe supervisor process for all jobs, not one per job
    server = make_server(args.upstream, args.events, args.host_workers)
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"batch proxy on 127.0.0.1:{port} -> {args.upstream} (host workers: {args.host_workers})", flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
