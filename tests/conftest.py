"""Shared helpers: every end-to-end test drives the real `bb` command in a
fresh project folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
