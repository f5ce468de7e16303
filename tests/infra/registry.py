"""A loopback container registry: Debian's `docker-registry` (distribution v2).

    reg = start_registry()        # 127.0.0.1:<free port>, storage in a temp folder
    reg.address                   # "127.0.0.1:PORT": tag and push to f"{reg.address}/repo:tag"
    reg.stop()                    # kills exactly that process, removes its storage

The config file is our own (filesystem storage, delete enabled, no auth),
never the packaged /etc/docker/registry/config.yml, which listens on :5000
with htpasswd auth. The Docker engine treats 127.0.0.0/8 as an insecure
registry by default, so no daemon configuration is needed.

As a command, `python3 tests/infra/registry.py [--port N]` runs one in the
foreground until Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


class RegistryError(RuntimeError):
    """The registry could not be started; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, proc: subprocess.Popen, port: int, workdir: Path):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://{self.address}"
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.log = workdir / "registry.log"

    def __repr__(self) -> str:
        return f"<Registry {self.address} pid={self.pid}>"

    def ref(self, repository: str, tag: str) -> str:
        """The image reference of repository:tag in this registry."""
        return f"{self.address}/{repository}:{tag}"

    def tags(self, repository: str) -> list[str]:
        import json

        try:
            with urllib.request.urlopen(f"{self.url}/v2/{repository}/tags/list", timeout=5) as r:
                return json.load(r).get("tags") or []
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise

    def delete(self, repository: str, tag: str) -> bool:
        """Delete repository:tag's manifest (delete is enabled in our config).
        Returns False if it was not there. Blobs stay until the registry is stopped."""
        accept = ", ".join([
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ])
        head = urllib.request.Request(f"{self.url}/v2/{repository}/manifests/{tag}", method="HEAD",
                                      headers={"Accept": accept})
        try:
            with urllib.request.urlopen(head, timeout=10) as r:
                digest = r.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise
        req = urllib.request.Request(f"{self.url}/v2/{repository}/manifests/{digest}", method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 202

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop exactly this registry process and remove its storage."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _executable() -> str:
    exe = shutil.which("docker-registry") or ("/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None)
    if not exe:
        raise RegistryError("docker-registry is not installed: apt-get install -y docker-registry")
    return exe


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    return False


def start_registry(port: int | None = None, *, workdir: str | Path | None = None, timeout: float = 20.0) -> Registry:
    """Start a registry on 127.0.0.1 (a free port unless one is given); wait until `GET /v2/` answers."""
    exe = _executable()
    attempts = 1 if port else 3  # a free port can be taken between choosing and binding
    last_log = ""
    for _ in range(attempts):
        p = port or free_port()
        wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bb-test-registry-"))
        (wd / "storage").mkdir(parents=True, exist_ok=True)
        config = wd / "config.yml"
        config.write_text(CONFIG.format(root=wd / "storage", port=p))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(wd / "registry.log", "wb") as log:
            # A simple command: the pid is the registry's own (notes, P1).
            proc = subprocess.Popen([exe, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=wd, start_new_session=True)
        reg = Registry(proc, p, wd)
        if _wait_ready(proc, reg.url, timeout):
            return reg
        last_log = reg.log_text()[-2000:]
        reg.stop()
    raise RegistryError(f"docker-registry did not answer GET /v2/ within {timeout:.0f} s; its log:\n{last_log}")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a loopback docker-registry in the foreground (Ctrl-C stops it).")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one; avoid 5000)")
    parser.add_argument("--storage", default=None, help="folder for config, storage and log (default: a temp folder, removed at exit)")
    args = parser.parse_args(argv)
    try:
        reg = start_registry(args.port, workdir=args.storage)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"registry at {reg.address} (pid {reg.pid}, storage {reg.storage}, log {reg.log})", flush=True)
    print(f"push with: docker tag IMAGE {reg.address}/NAME:TAG && docker push {reg.address}/NAME:TAG", flush=True)
    try:
        while reg.proc.poll() is None:
            time.sleep(0.5)
        print(f"registry exited with {reg.proc.returncode}; log:\n{reg.log_text()[-2000:]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if args.storage:  # a folder the person chose: stop, but keep it
            if reg.proc.poll() is None:
                reg.proc.terminate()
                reg.proc.wait(timeout=10)
        else:
            reg.stop()


def _interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main(sys.argv[1:]))
