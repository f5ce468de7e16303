"""The shared cache when things go wrong: throttling, resets, denied access,
bad credentials, a dead endpoint, a missing bucket, an upload cut short."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from conftest import BB_CMD, Project, statuses
from faulty_proxy import FaultyProxy

PIPELINE = """
    a.txt: src.txt
        tr a-z A-Z < $< > $@

    b.txt: a.txt
        cat $< $< > $@
"""


@pytest.fixture
def proxy(moto_endpoint):
    p = FaultyProxy(moto_endpoint)
    yield p
    p.close()


def person(tmp_path, name, s3, endpoint) -> Project:
    root = tmp_path / name
    root.mkdir()
    p = Project(root)
    p.batchfile(PIPELINE)
    p.write("src.txt", "shared data\n")
    p.env = {**s3.env, "AWS_ENDPOINT_URL": endpoint, "HOME": str(root)}
    return p


def test_throttling_is_retried(project, s3, proxy, tmp_path):
    alice = person(tmp_path, "alice", s3, proxy.url)
    proxy.fail("slowdown", 3)
    report = alice.build("b.txt", env=alice.env)
    assert statuses(report, "built") == {"a.txt", "b.txt"}
    assert proxy.faults_left == 0, "the proxy really answered SlowDown"
    assert len(s3.keys("ac/")) == 2
    bob = person(tmp_path, "bob", s3, proxy.url)
    proxy.fail("slowdown", 3)
    assert statuses(bob.build("b.txt", env=bob.env), "built") == set()


def test_connection_resets_are_retried(project, s3, proxy, tmp_path):
    alice = person(tmp_path, "alice", s3, proxy.url)
    alice.build("b.txt", env=alice.env)
    bob = person(tmp_path, "bob", s3, proxy.url)
    proxy.fail("reset", 3)
    report = bob.build("b.txt", env=bob.env)
    assert proxy.faults_left == 0
    assert statuses(report, "built") == set()
    assert bob.read("b.txt") == "SHARED DATA\nSHARED DATA\n"


def _one_paragraph_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    err = proc.stderr.lower()
    for w in words:
        assert w.lower() in err, proc.stderr


def test_access_denied_names_the_bucket(project, s3, proxy, tmp_path):
    alice = person(tmp_path, "alice", s3, proxy.url)
    proxy.fail("deny")
    proc = alice.bb("build", "b.txt", env=alice.env)
    _one_paragraph_error(proc, "denied", s3.bucket, "read-only")
    assert not alice.exists("b.txt")


def test_bad_credentials_are_named(project, s3, proxy, tmp_path):
    alice = person(tmp_path, "alice", s3, proxy.url)
    proxy.fail("badcreds")
    proc = alice.bb("build", "b.txt", env=alice.env)
    _one_paragraph_error(proc, "credentials", "AWS_ACCESS_KEY_ID")


def test_dead_endpoint(project, s3, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    alice = person(tmp_path, "alice", s3, dead)
    proc = alice.bb("build", "b.txt", env=alice.env, timeout=300)
    _one_paragraph_error(proc, "cannot reach", dead, "--no-cache")
    # and the way out works
    assert statuses(alice.build("b.txt", "--no-cache", env=alice.env), "built") == {"a.txt", "b.txt"}


def test_missing_bucket(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3, s3.endpoint)
    proc = alice.bb("build", "b.txt", env={**alice.env, "BB_CACHE": "s3://no-such-bucket-here/x"})
    _one_paragraph_error(proc, "no-such-bucket-here", "does not exist")


def test_missing_credentials(project, s3, tmp_path):
    alice = person(tmp_path, "alice", s3, s3.endpoint)
    env = {k: v for k, v in alice.env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    env.update({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full.update(env)
    proc = subprocess.run(BB_CMD + ["build", "b.txt"], cwd=alice.root, env=full, capture_output=True, text=True, timeout=120)
    _one_paragraph_error(proc, "no AWS credentials")


def test_upload_killed_half_way_leaves_nothing_half_recorded(project, s3, proxy, tmp_path):
    alice = person(tmp_path, "alice", s3, proxy.url)
    alice.batchfile(PIPELINE + """
    big.bin: src.txt
        head -c 3000000 /dev/urandom > $@
""")
    proxy.delay_puts = 2.0
    proc = subprocess.Popen(BB_CMD + ["build", "b.txt", "big.bin"], cwd=alice.root, env={**os.environ, **alice.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proxy.puts_started.wait(60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proxy.delay_puts = 0
    # every shared result names blobs that are all there
    blobs = {k.rsplit("/", 1)[-1] for k in s3.keys("cas/")}
    for key in s3.keys("ac/"):
        result = json.loads(s3.get(key))
        assert {o["digest"] for o in result["outputs"]} <= blobs
    # the next build finishes the work and shares what the cut-short run did not
    alice.build("b.txt", "big.bin", env=alice.env)
    assert len(s3.keys("ac/")) == 3
    bob = person(tmp_path, "bob", s3, proxy.url)
    bob.batchfile(alice.read("Batchfile"))
    assert statuses(bob.build("b.txt", "big.bin", env=bob.env), "built") == set()
    assert (bob.root / "big.bin").read_bytes() == (alice.root / "big.bin").read_bytes()
