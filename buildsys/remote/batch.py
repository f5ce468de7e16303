"""The AWS Batch backend: actions run as container jobs of the environment
image, reading inputs from and writing results to the shared cache in S3.

The client drives the graph (not `dependsOn`: it caps at 20 parents and
cannot skip cache hits): the scheduler submits what is ready, and a fan-out
of the same resources goes as one array job whose children find their action
by index. One monitor thread asks about every job in flight with DescribeJobs
(100 ids per call; an array is one id until it needs a closer look), and all
Batch calls share one rate limiter (50 per second per account). Job names
carry the action key (an array's, the digest of its list of actions), so a
rerun after Ctrl-C or a crash adopts jobs still in flight instead of
submitting them again."""
from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from buildsys.digest import hash_bytes
from buildsys.errors import BBError
from buildsys.run.executors import QUEUED, RUNNING, ActionJob, Completion, Sink

POLL_SECONDS = float(os.environ.get("BB_BATCH_POLL", "5"))
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
LOG_GROUP = "/aws/batch/job"
LOG_LINES = 200
DEFAULT_MEMORY_MIB = 2048
ARRAY_MAX = 10_000
RETRY = {
    "attempts": 3,
    # Retry what the infrastructure did (a reclaimed spot instance, a lost
    # host), never a recipe's own failure.
    "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onReason": "CannotStartContainerError*", "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"},
    ],
}


class RateLimiter:
    """A token bucket shared by every Batch call of this process."""

    def __init__(self, per_second: float):
        self.rate = per_second
        self.tokens = per_second
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                time.sleep((1 - self.tokens) / self.rate)


@dataclass
class _Submitted:
    """One Batch job in flight: a single action, or an array of them."""

    job_id: str
    name: str
    keys: list[str]  # by array index (one for a single job)
    array: bool
    done: set[int] = field(default_factory=set)  # array indexes already reported
    stage: str = ""
    runnable_since: float = 0.0


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BatchExecutor:
    name = "batch"

    def __init__(self, *, image: str, queue: str, store, region: str = "", job_role: str = "", platform: str = "linux/amd64", runnable_timeout: float = 1800.0, poll: float = POLL_SECONDS):
        """`store`: the tiered store whose shared tier the jobs use."""
        import boto3
        from botocore.config import Config

        self.image, self.queue, self.store = image, queue, store
        self.store_url = str(store.remote.url)
        self.job_role, self.platform = job_role, platform
        self.runnable_timeout, self.poll = runnable_timeout, poll
        config = Config(retries={"max_attempts": 10, "mode": "adaptive"}, connect_timeout=5, read_timeout=30)
        session = boto3.session.Session()
        self.batch = session.client("batch", region_name=region or None, config=config)
        self._session, self._region, self._config = session, region, config
        self.limit = RateLimiter(50)
        self.calls: dict[str, int] = {}
        self._inflight: dict[str, _Submitted] = {}
        self._adoptable: dict[str, str] = {}  # job name -> id of a job of an earlier run still in flight
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._definition = None
        self.sink: Sink | None = None

    # -- calls ---------------------------------------------------------------------------

    def _call(self, op: str, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        self.limit.wait()
        self.calls[op] = self.calls.get(op, 0) + 1
        try:
            return getattr(self.batch, op)(**kw)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            raise BBError(f"AWS Batch refused {op} ({code}): {err}.", hint="Check the 'queue', 'region' and 'job_role' settings and your AWS credentials.") from None
        except BotoCoreError as err:
            raise BBError(f"cannot reach AWS Batch for {op}: {err}.", hint="Check the network, the region and AWS_ENDPOINT_URL.") from None

    # -- the executor contract ---------------------------------------------------------

    def start(self, sink: Sink) -> None:
        self.sink = sink
        queues = self._call("describe_job_queues", jobQueues=[self.queue]).get("jobQueues", [])
        if not queues:
            raise BBError(f"there is no AWS Batch job queue named '{self.queue}'.", hint="Create it (with a compute environment), or fix the 'queue' setting and the region.")
        for status in ACTIVE:
            token = None
            while True:
                page = self._call("list_jobs", jobQueue=self.queue, jobStatus=status, **({"nextToken": token} if token else {}))
                for job in page.get("jobSummaryList", ()):
                    if job.get("jobName", "").startswith("bb-"):
                        self._adoptable[job["jobName"]] = job["jobId"]
                token = page.get("nextToken")
                if not token:
                    break
        self._thread = threading.Thread(target=self._monitor, name="bb-batch", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[ActionJob]) -> None:
        groups: dict[tuple, list[ActionJob]] = {}
        for job in jobs:
            groups.setdefault(job.resources, []).append(job)
        for resources, group in groups.items():
            for i in range(0, len(group), ARRAY_MAX):
                self._submit_group(group[i : i + ARRAY_MAX])

    def _submit_group(self, group: list[ActionJob]) -> None:
        command = ["python", "-m", "buildsys.worker", "--store", self.store_url]
        if len(group) == 1:
            name = f"bb-{group[0].key[:64]}"
            command += ["--action", group[0].action]
        else:
            listing = json.dumps([job.action for job in group]).encode()
            digest = self.store.put_bytes(listing)
            self.store.push_blobs((), fresh=[digest])
            name = f"bb-array-{digest[:64]}"
            command += ["--actions", digest]
        resources = group[0].resources
        command += ["--cpus", str(resources.cpus)]
        if resources.timeout:
            command += ["--timeout", str(resources.timeout)]
        keys = [job.key for job in group]
        adopted = self._adoptable.pop(name, None)
        if adopted:
            job_id = adopted
        else:
            kw = dict(
                jobName=name, jobQueue=self.queue, jobDefinition=self._job_definition(),
                containerOverrides={"command": command, "resourceRequirements": _requirements(resources), "environment": self._environment()},
            )
            if len(group) > 1:
                kw["arrayProperties"] = {"size": len(group)}
            if resources.timeout:
                kw["timeout"] = {"attemptDurationSeconds": max(60, int(resources.timeout) + 60)}  # the worker stops the recipe first
            job_id = self._call("submit_job", **kw)["jobId"]
        with self._lock:
            self._inflight[job_id] = _Submitted(job_id, name, keys, len(group) > 1)
        for key in keys:
            self.sink.stage(key, QUEUED)

    def _environment(self) -> list[dict]:
        env = {"BB_EXECUTOR": "batch"}
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        if endpoint and _loopback(endpoint):
            # An emulator on this machine (moto in the tests): the job cannot
            # have a role there, so it gets the endpoint and the emulator's
            # dummy keys. Never done for a real endpoint: jobs get their
            # credentials from the job role only.
            for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                if os.environ.get(name):
                    env[name] = os.environ[name]
        elif self._region:
            env["AWS_DEFAULT_REGION"] = self._region
        return [{"name": k, "value": v} for k, v in env.items()]

    def _job_definition(self) -> str:
        """One definition per (image, role, platform), named by their hash:
        described first, registered only if missing, then reused."""
        if self._definition is None:
            ident = hash_bytes(json.dumps([self.image, self.job_role, self.platform, RETRY]).encode())[:24]
            name = f"bb-{ident}"
            found = self._call("describe_job_definitions", jobDefinitionName=name, status="ACTIVE").get("jobDefinitions", [])
            if found:
                self._definition = max(found, key=lambda d: d["revision"])["jobDefinitionArn"]
            else:
                props = {
                    "image": self.image,
                    "command": ["python", "-m", "buildsys.worker"],
                    "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": str(DEFAULT_MEMORY_MIB)}],
                    "runtimePlatform": {"cpuArchitecture": "ARM64" if self.platform.endswith("arm64") else "X86_64", "operatingSystemFamily": "LINUX"},
                }
                if self.job_role:
                    props["jobRoleArn"] = self.job_role
                self._definition = self._call(
                    "register_job_definition", jobDefinitionName=name, type="container", containerProperties=props, retryStrategy=RETRY,
                )["jobDefinitionArn"]
        return self._definition

    def cancel(self) -> None:
        with self._lock:
            inflight = list(self._inflight.values())
            self._inflight.clear()
        for job in inflight:
            try:
                self._call("terminate_job", jobId=job.job_id, reason="cancelled by bb (interrupted)")
            except BBError:
                pass
            for i, key in enumerate(job.keys):
                if i not in job.done:
                    self.sink.finished(Completion(key, -1, job.job_id, "cancelled", cancelled=True))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the monitor -------------------------------------------------------------------------

    def _monitor(self) -> None:
        while not self._stop.wait(self.poll if self._inflight else min(self.poll, 0.2)):
            try:
                self._check()
            except BBError as err:
                self._fail_all(err.message)
            except Exception as err:  # every job must end with a report, or the build waits forever
                self._fail_all(f"{type(err).__name__}: {err}")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            inflight = list(self._inflight.values())
            self._inflight.clear()
        for job in inflight:
            for i, key in enumerate(job.keys):
                if i not in job.done:
                    self.sink.finished(Completion(key, -1, job.job_id, f"lost track of the job: {message}"))

    def _check(self) -> None:
        with self._lock:
            ids = list(self._inflight)
        for i in range(0, len(ids), 100):
            for desc in self._call("describe_jobs", jobs=ids[i : i + 100]).get("jobs", ()):
                job = self._inflight.get(desc["jobId"])
                if job is not None:
                    self._update(job, desc)

    def _update(self, job: _Submitted, desc: dict) -> None:
        status = desc.get("status", "")
        stage = RUNNING if status in ("STARTING", "RUNNING") else QUEUED
        if stage != job.stage:
            job.stage = stage
            for key in job.keys:
                self.sink.stage(key, stage)
        if status == "RUNNABLE":
            job.runnable_since = job.runnable_since or time.monotonic()
            if time.monotonic() - job.runnable_since > self.runnable_timeout:
                self._call("terminate_job", jobId=job.job_id, reason="bb: stuck in RUNNABLE")
                message = (
                    f"stuck in RUNNABLE for {self.runnable_timeout:g}s: no compute environment of queue '{self.queue}' "
                    "can run it (check its resources against the target's @cpus/@memory/@gpus, and the environment's maximum vCPUs)"
                )
                self._finish_rest(job, -1, message)
                return
        if not job.array:
            if status == "SUCCEEDED":
                self._finish_rest(job, 0, "", desc)
            elif status == "FAILED":
                code, message, log, attempts = self._failure(desc)
                self._finish_rest(job, code, message, log=log, attempts=attempts)
            return
        summary = desc.get("arrayProperties", {}).get("statusSummary", {})
        if status == "SUCCEEDED":
            self._finish_rest(job, 0, "", desc)
        elif status == "FAILED" or summary.get("FAILED", 0) + summary.get("SUCCEEDED", 0) > len(job.done):
            self._children(job)

    def _children(self, job: _Submitted) -> None:
        """An array with finished children: report each one (a parent whose
        child failed may never leave its state, so children are read)."""
        ended = {}
        token = None
        while True:
            page = self._call("list_jobs", arrayJobId=job.job_id, **({"nextToken": token} if token else {}))
            for child in page.get("jobSummaryList", ()):
                index = child.get("arrayProperties", {}).get("index")
                if index is None:
                    index = int(child["jobId"].rpartition(":")[2])
                if index not in job.done and child.get("status") in ("SUCCEEDED", "FAILED"):
                    ended[index] = child
            token = page.get("nextToken")
            if not token:
                break
        failed = [c["jobId"] for c in ended.values() if c["status"] == "FAILED"]
        described = {}
        for i in range(0, len(failed), 100):
            for desc in self._call("describe_jobs", jobs=failed[i : i + 100]).get("jobs", ()):
                described[desc["jobId"]] = desc
        for index, child in sorted(ended.items()):
            job.done.add(index)
            if child["status"] == "SUCCEEDED":
                self.sink.finished(Completion(job.keys[index], 0, child["jobId"], details={"job": child["jobId"]}))
            else:
                code, message, log, attempts = self._failure(described.get(child["jobId"], child), child.get("container", {}).get("exitCode"))
                self.sink.finished(Completion(job.keys[index], code, child["jobId"], message, log, attempts, details={"job": child["jobId"]}))
        if len(job.done) == len(job.keys):
            with self._lock:
                self._inflight.pop(job.job_id, None)

    def _failure(self, desc: dict, exit_code=None) -> tuple[int, str, str, int]:
        container = desc.get("container", {}) or {}
        code = container.get("exitCode", exit_code)
        if code is None and desc.get("jobId") and ":" not in desc["jobId"]:
            # DescribeJobs may leave exitCode out; ListJobs has it
            for summary in self._call("list_jobs", jobQueue=self.queue, jobStatus="FAILED").get("jobSummaryList", ()):
                if summary["jobId"] == desc["jobId"]:
                    code = summary.get("container", {}).get("exitCode")
        reasons = [r for r in (desc.get("statusReason"), container.get("reason")) if r]
        attempts = len(desc.get("attempts", ())) or 1
        return (code if code is not None else -1), "; ".join(reasons), self._log(container.get("logStreamName")), attempts

    def _log(self, stream: str | None) -> str:
        """The tail of a job's log from CloudWatch (the worker also prints
        the recipe's output there); never hides the failure if it is gone."""
        if not stream:
            return ""
        try:
            logs = self._session.client("logs", region_name=self._region or None, config=self._config)
            self.limit.wait()
            events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, limit=LOG_LINES, startFromHead=False)["events"]
            return "\n".join(e["message"] for e in events)
        except Exception:
            return ""

    def _finish_rest(self, job: _Submitted, code: int, message: str, desc: dict | None = None, log: str = "", attempts: int = 1) -> None:
        with self._lock:
            self._inflight.pop(job.job_id, None)
        if desc is not None:
            attempts = len(desc.get("attempts", ())) or attempts
        for i, key in enumerate(job.keys):
            if i not in job.done:
                job_id = f"{job.job_id}:{i}" if job.array else job.job_id
                self.sink.finished(Completion(key, code, job_id, message, log, attempts, details={"job": job_id}))


def _requirements(resources) -> list[dict]:
    out = [{"type": "VCPU", "value": str(max(1, resources.cpus))}]
    out.append({"type": "MEMORY", "value": str(max(1, resources.memory >> 20) if resources.memory else DEFAULT_MEMORY_MIB)})
    if resources.gpus:
        out.append({"type": "GPU", "value": str(resources.gpus)})
    return out
