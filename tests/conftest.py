"""Shared helpers: every end-to-end test drives the real `bb` command in a
fresh project folder."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Fixtures for remote execution (docker, base image, registry, moto, Batch): tests/infra/fixtures.py
pytest_plugins = ["infra.fixtures"]

# Tests send SIGINT and SIGHUP to bb. A suite started in the background or
# under nohup has them ignored, and an ignored signal is inherited across
# exec: give bb the default dispositions, as a terminal would.
signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

BB = shutil.which("bb")
BB_CMD = [BB] if BB else [sys.executable, "-m", "buildsys"]


class Project:
    def __init__(self, root: Path):
        self.root = root

    def write(self, rel: str, text: str = "", *, dedent=True) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if dedent else text)
        return path

    def batchfile(self, text: str) -> Path:
        return self.write("Batchfile", text)

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def bb(self, *args, check=None, env=None, timeout=120) -> subprocess.CompletedProcess:
        """Run bb; check=0 (or any code) asserts the exit code and shows the output if it differs."""
        full_env = dict(os.environ)
        full_env.pop("BB_STORE", None)
        if env:
            full_env.update(env)
        proc = subprocess.run(BB_CMD + list(args), cwd=self.root, env=full_env, capture_output=True, text=True, timeout=timeout)
        if check is not None:
            assert proc.returncode == check, f"bb {' '.join(args)} exited {proc.returncode}, expected {check}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    def build(self, *args, check=0, **kw) -> dict:
        """`bb build --json`; returns {target: status}, with the full report in .last_report."""
        proc = self.bb("build", "--json", *args, check=check, **kw)
        self.last_report = json.loads(proc.stdout) if proc.stdout.strip() else None
        self.last_proc = proc
        if self.last_report is None:
            return {}
        return {t["target"]: t["status"] for t in self.last_report["targets"]}


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    return Project(root)


def statuses(report: dict, status: str) -> set[str]:
    return {name for name, s in report.items() if s == status}


# ---- a real S3 endpoint: moto_server on loopback ------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(moto_server):
    """moto_server as the AWS endpoint, started for the test session (with
    MOTO_DOCKER_NETWORK_MODE=host, so Batch job containers reach it on
    127.0.0.1; see tests/infra/moto.py). Tests that use it must run: if it
    cannot start, they fail."""
    return moto_server.endpoint


class S3:
    """A bucket of the moto endpoint, and the environment a user would set."""

    def __init__(self, endpoint: str, bucket: str):
        import boto3

        self.endpoint = endpoint
        self.bucket = bucket
        self.env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
            "AWS_DEFAULT_REGION": "us-east-1",
            "BB_CACHE": f"s3://{bucket}/team",
        }
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing-secret-value",
        )
        self.client.create_bucket(Bucket=bucket)

    def keys(self, kind: str = "") -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="team/" + kind):
            out.extend(o["Key"] for o in page.get("Contents", ()))
        return out

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture
def s3(moto_endpoint, request):
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return S3(moto_endpoint, f"bb-{name}")
