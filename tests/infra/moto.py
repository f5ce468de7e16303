"""moto_server on loopback as the AWS endpoint for remote (Batch) tests.

    srv = start_moto()                 # 127.0.0.1:<free port>
    srv.endpoint                       # "http://127.0.0.1:PORT"
    q = batch_queue(srv.endpoint, "bb-test")   # service role, UNMANAGED CE, job queue
    q["env"]                           # what a user sets: AWS_ENDPOINT_URL, dummy keys, region
    set_use_docker(srv.endpoint, False)        # moto's no-Docker Batch mode (notes, P20)
    srv.stop()                         # /moto-api/reset (kills job containers), then that pid only

moto_server runs with MOTO_DOCKER_NETWORK_MODE=host, so Batch job containers
share the host's network and reach moto at 127.0.0.1 (notes, P2); MOTO_PORT is
set so the values moto injects into jobs name the right port. Jobs still get
no credentials or endpoint from moto: pass `q["env"]` in
containerOverrides.environment (P4).

As a command, `python3 tests/infra/moto.py [--port N] [--queue NAME]` runs one
in the foreground until Ctrl-C and prints the environment to set.

Note: this file is `infra.moto` inside the tests; it never imports the moto
library (moto runs as its own process).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


class MotoError(RuntimeError):
    """moto_server could not be started; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(port: int, base: dict | None = None) -> dict:
    """The environment moto_server must run with for Batch jobs on this machine."""
    env = dict(os.environ if base is None else base)
    env["MOTO_DOCKER_NETWORK_MODE"] = "host"
    env["MOTO_PORT"] = str(port)
    return env


def moto_command() -> list[str]:
    """moto_server of the running interpreter (no pyenv shim in between, so the pid is the server's)."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    exe = shutil.which("moto_server")
    if exe:
        return [exe]
    return [sys.executable, "-m", "moto.server"]


def _post(url: str, payload: dict | None = None, timeout: float = 30) -> bytes:
    data = json.dumps(payload).encode() if payload is not None else b""
    req = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def reset(endpoint: str) -> None:
    """Wipe moto's state; kills and removes running Batch job containers (about 1 s)."""
    _post(endpoint + "/moto-api/reset")


def get_use_docker(endpoint: str) -> bool:
    with urllib.request.urlopen(endpoint + "/moto-api/config", timeout=10) as r:
        return bool(json.load(r)["batch"]["use_docker"])


def set_use_docker(endpoint: str, value: bool) -> bool:
    """Switch moto's Batch between real containers (True) and the no-Docker mode
    where jobs succeed at once inside submit_job (False). The setting is global
    to the server and survives /moto-api/reset: set it back. Returns the previous value."""
    previous = get_use_docker(endpoint)
    _post(endpoint + "/moto-api/config", {"batch": {"use_docker": bool(value)}})
    now = get_use_docker(endpoint)
    if now != bool(value):
        raise MotoError(f"moto at {endpoint} kept batch.use_docker={now} after setting {value}")
    return previous


def client_env(endpoint: str) -> dict:
    """What a user (or a job container) sets to talk to this moto."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def client(service: str, endpoint: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def batch_queue(endpoint: str, name: str = "bb-test") -> dict:
    """Everything a Batch job queue needs in moto: an IAM service role, an
    UNMANAGED compute environment and the queue. Idempotent: existing ones are reused.

    Returns {"queue", "queue_arn", "compute_environment", "compute_environment_arn",
    "service_role_arn", "endpoint", "env"}; env is client_env(endpoint)."""
    iam, batch = client("iam", endpoint), client("batch", endpoint)
    role_name = f"{name}-batch-service"
    try:
        role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role_arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(_TRUST))["Role"]["Arn"]

    ce_name = f"{name}-ce"
    found = batch.describe_compute_environments(computeEnvironments=[ce_name])["computeEnvironments"]
    if found:
        ce_arn = found[0]["computeEnvironmentArn"]
    else:
        ce_arn = batch.create_compute_environment(computeEnvironmentName=ce_name, type="UNMANAGED",
                                                  state="ENABLED", serviceRole=role_arn)["computeEnvironmentArn"]

    found = batch.describe_job_queues(jobQueues=[name])["jobQueues"]
    if found:
        queue_arn = found[0]["jobQueueArn"]
    else:
        queue_arn = batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce_arn}])["jobQueueArn"]
    return {
        "queue": name,
        "queue_arn": queue_arn,
        "compute_environment": ce_name,
        "compute_environment_arn": ce_arn,
        "service_role_arn": role_arn,
        "endpoint": endpoint,
        "env": client_env(endpoint),
    }


class MotoServer:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, workdir: Path):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log = log
        self._workdir = workdir

    def __repr__(self) -> str:
        return f"<MotoServer {self.endpoint} pid={self.pid}>"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Reset moto (which kills its running job containers: a killed moto
        orphans them, P19), then stop exactly this process."""
        if self.proc.poll() is None:
            try:
                reset(self.endpoint)
            except Exception:  # noqa: BLE001 - stop it anyway
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)  # moto takes 3-5 s to exit
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)


def wait_ready(endpoint: str, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/config", timeout=1):
                return True
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    return False


def start_moto(port: int | None = None, *, timeout: float = 30.0) -> MotoServer:
    """Start moto_server on 127.0.0.1 (a free port unless one is given) with
    MOTO_DOCKER_NETWORK_MODE=host; wait until it answers."""
    attempts = 1 if port else 3
    last = ""
    for _ in range(attempts):
        p = port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="bb-test-moto-"))
        log = workdir / "moto.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(moto_command() + ["-H", "127.0.0.1", "-p", str(p)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=server_env(p), start_new_session=True)
        srv = MotoServer(proc, p, log, workdir)
        if wait_ready(srv.endpoint, proc, timeout):
            return srv
        last = srv.log_text()[-2000:]
        srv.stop()
    raise MotoError(f"moto_server did not answer within {timeout:.0f} s (install the test extra: "
                    f"pip install -e '.[test]'); its log:\n{last}")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run moto_server for remote builds in the foreground (Ctrl-C stops it).")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one; avoid 5000)")
    parser.add_argument("--queue", default="bb-test", help="Batch job queue to create (default: bb-test)")
    args = parser.parse_args(argv)
    try:
        srv = start_moto(args.port)
    except MotoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        q = batch_queue(srv.endpoint, args.queue)
        print(f"moto_server at {srv.endpoint} (pid {srv.pid}, log {srv.log}); Batch queue {q['queue']}", flush=True)
        print("# set in the shell that runs bb:", flush=True)
        for k, v in q["env"].items():
            print(f"export {k}={v}", flush=True)
        while srv.proc.poll() is None:
            time.sleep(0.5)
        print(f"moto_server exited with {srv.proc.returncode}; log:\n{srv.log_text()[-2000:]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.stop()


def _interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main(sys.argv[1:]))
