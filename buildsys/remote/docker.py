"""The local Docker backend: each action runs as the worker in a container of
the environment image, on this machine's Docker Engine.

It is what a user without AWS tries first (`bb build --remote docker`), the
place to find out that a pipeline is hermetic, and what `bb debug` uses to
rerun a failed remote action in the very same image. With a local store the
store folder is mounted into the container and the container has no
network; with a shared cache in S3 the worker reads and writes S3."""
from __future__ import annotations

import os
import threading

from buildsys.errors import BBError
from buildsys.run.executors import RUNNING, ActionJob, Completion, Sink

STORE_MOUNT = "/bb-store"
LOG_TAIL = 200
FORWARDED = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")


def docker_client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
        return client
    except Exception as err:  # the SDK raises several types for one cause
        raise BBError(
            f"cannot reach the Docker Engine ({err}).",
            hint="Start Docker (or set DOCKER_HOST), or run without --remote docker.",
        ) from None


class DockerExecutor:
    name = "docker"

    def __init__(self, image: str, store: str, *, poll: float = 0.2):
        """`store`: a local store folder (mounted) or an s3:// URL."""
        self.image = image
        self.store = store
        self.poll = poll
        self.client = docker_client()
        self.run_id = os.urandom(6).hex()
        self._active: dict[str, tuple[ActionJob, object]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.sink: Sink | None = None

    def start(self, sink: Sink) -> None:
        self.sink = sink
        self._thread = threading.Thread(target=self._monitor, name="bb-docker", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[ActionJob]) -> None:
        for job in jobs:
            container = self.client.containers.run(self.image, **self._container(job), detach=True)
            with self._lock:
                self._active[container.id] = (job, container)
            self.sink.stage(job.key, RUNNING)

    def _container(self, job: ActionJob) -> dict:
        local = not self.store.startswith("s3://")
        command = ["python", "-m", "buildsys.worker", "--store", STORE_MOUNT if local else self.store, "--action", job.action]
        command += ["--cpus", str(job.resources.cpus)]
        if job.resources.timeout:
            command += ["--timeout", str(job.resources.timeout)]
        env = {"BB_EXECUTOR": "docker", "HOME": "/tmp"}
        if not local:  # this machine's credentials, for a container on this machine
            env.update({k: os.environ[k] for k in FORWARDED if k in os.environ})
        spec = {
            "command": command,
            "environment": env,
            "labels": {"bb.key": job.key, "bb.run": self.run_id, "bb.target": job.target[:200]},
            "user": f"{os.getuid()}:{os.getgid()}",
            "network_mode": "host",  # as on Batch, recipes have the network; the worker reaches loopback endpoints
            "nano_cpus": int(job.resources.cpus * 1e9),
        }
        if local:
            spec["volumes"] = {os.path.abspath(self.store): {"bind": STORE_MOUNT, "mode": "rw"}}
        if job.resources.memory:
            spec["mem_limit"] = job.resources.memory
        if job.resources.gpus:
            import docker

            spec["device_requests"] = [docker.types.DeviceRequest(count=job.resources.gpus, capabilities=[["gpu"]])]
        return spec

    def _monitor(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                active = list(self._active.items())
            for cid, (job, container) in active:
                try:
                    container.reload()
                except Exception:
                    state = {"Status": "gone", "ExitCode": -1}
                else:
                    state = container.attrs.get("State", {})
                if state.get("Status") not in ("exited", "dead", "gone"):
                    continue
                with self._lock:
                    if self._active.pop(cid, None) is None:
                        continue  # cancelled meanwhile
                self.sink.finished(self._completion(job, container, state))
            self._stop.wait(self.poll)

    def _completion(self, job: ActionJob, container, state: dict) -> Completion:
        try:
            log = container.logs(tail=LOG_TAIL).decode("utf-8", "replace")
        except Exception:
            log = ""
        try:
            container.remove(force=True)
        except Exception:
            pass
        code = state.get("ExitCode", -1)
        message = state.get("Error", "") or ("killed: out of memory" if state.get("OOMKilled") else "")
        cached = "already built" in log
        return Completion(job.key, code, container.id, message, log, details={"container": container.id[:12], "cached": cached} if cached else {"container": container.id[:12]})

    def cancel(self) -> None:
        with self._lock:
            active = list(self._active.items())
            self._active.clear()
        for cid, (job, container) in active:
            try:
                container.remove(force=True)
            except Exception:
                pass
            self.sink.finished(Completion(job.key, -1, cid, "cancelled", cancelled=True))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.cancel()
