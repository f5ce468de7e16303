"""pytest fixtures for remote (Batch) execution tests; loaded by tests/conftest.py
through `pytest_plugins = ["infra.fixtures"]`.

Session-scoped:
    docker_client   docker.DockerClient of the local engine (pinged)
    base_image      "bb-test/bookworm-py:<hash>": the job base image (python3, venv)
    registry        infra.registry.Registry on 127.0.0.1 (.address, .ref(repo, tag), .tags(repo), .delete(repo, tag))
    moto_server     infra.moto.MotoServer (.endpoint, .log_text()); tests/conftest.py's
                    moto_endpoint is its endpoint
    batch_env       {"endpoint", "queue", "queue_arn", "compute_environment", "region",
                     "env": {AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                             AWS_DEFAULT_REGION}}
                    a Batch queue in moto, with jobs running as real containers
Function-scoped:
    batch_no_docker the same dict, with moto's no-Docker Batch mode on for this
                    test only (jobs SUCCEED at once, no container; notes P11, P20)
    docker_cleanup  a DockerCleanup: register what the test creates, it is removed
                    at the end of the test, and nothing else is

With CI=true every fixture here FAILS when its part cannot start: CI must
never pass by skipping the remote tests. Elsewhere a missing Docker engine,
docker SDK, mmdebstrap or docker-registry skips with the reason and the fix.
"""
from __future__ import annotations

import os
import shutil

import pytest

from infra import base_image as _base_image
from infra import moto as _moto
from infra import registry as _registry

QUEUE = "bb-test"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str):
    """Skip with the reason, except under CI=true, where it is a failure."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the remote-test infrastructure must start, not skip)", pytrace=False)
    pytest.skip(reason)


# ---- docker ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker
    except ImportError:
        unavailable("the docker SDK is not installed: pip install -e '.[test]'")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - no engine, whatever the error
        unavailable(f"the Docker engine does not answer ({e})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The base image for job containers (built by mmdebstrap + docker import the
    first time, about 1.5 min; reused by tag after that)."""
    import docker

    ref = _base_image.image_ref()
    try:
        docker_client.images.get(ref)
        return ref
    except docker.errors.ImageNotFound:
        pass
    if not shutil.which("mmdebstrap"):
        unavailable(f"base image {ref} is missing and mmdebstrap is not installed: apt-get install -y mmdebstrap")
    return _base_image.ensure_base_image()


class DockerCleanup:
    """Removes exactly the Docker objects a test says it created.

    image(ref)        an image reference (name:tag) the test built, tagged or had
                      pulled: containers started from it (`ancestor=ref`, this is
                      how moto's unlabelled job containers are found, P19) are
                      removed, then the reference itself (other tags of the same
                      image are left alone).
    container(id)     one container, by id or name.
    label(key, value) containers, then images, carrying that label (use a value
                      unique to the test, e.g. a run id).
    job(job_id)       moto's container for a Batch job (named `<jobName>-<jobId>`).
    """

    def __init__(self, client):
        self.client = client
        self.images: list[str] = []
        self.containers: list[str] = []
        self.labels: list[str] = []
        self.jobs: list[str] = []

    def image(self, ref: str) -> str:
        self.images.append(ref)
        return ref

    def container(self, ident: str) -> str:
        self.containers.append(ident)
        return ident

    def label(self, key: str, value: str | None = None) -> str:
        self.labels.append(key if value is None else f"{key}={value}")
        return self.labels[-1]

    def job(self, job_id: str) -> str:
        self.jobs.append(job_id)
        return job_id

    def _remove_container(self, c, removed: list[str]) -> None:
        import docker

        try:
            c.remove(force=True)
            removed.append(f"container {c.name}")
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:  # moto removing a finished job's container at the same moment
            if "already in progress" not in str(err):
                raise

    def cleanup(self) -> list[str]:
        """Remove everything registered; returns what was removed. Raises only
        if something registered could not be removed."""
        import docker

        removed: list[str] = []
        errors: list[str] = []
        containers = self.client.containers
        try:
            for ident in self.containers:
                try:
                    self._remove_container(containers.get(ident), removed)
                except docker.errors.NotFound:
                    pass
            for job_id in self.jobs:
                for c in containers.list(all=True, filters={"name": job_id}):
                    if c.name.endswith(f"-{job_id}"):
                        self._remove_container(c, removed)
            for label in self.labels:
                for c in containers.list(all=True, filters={"label": label}):
                    self._remove_container(c, removed)
            for ref in self.images:
                try:
                    self.client.images.get(ref)
                except docker.errors.ImageNotFound:
                    continue  # an ancestor filter on a missing image would match nothing
                for c in containers.list(all=True, filters={"ancestor": ref}):
                    self._remove_container(c, removed)
        except docker.errors.APIError as e:
            errors.append(f"containers: {e}")
        for ref in self.images:
            try:
                self.client.images.remove(ref, force=True)  # by name: untags unless it is the last tag
                removed.append(f"image {ref}")
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:
                errors.append(f"image {ref}: {e}")
        for label in self.labels:
            try:
                for img in self.client.images.list(filters={"label": label}):
                    self.client.images.remove(img.id, force=True)
                    removed.append(f"image {img.short_id} ({label})")
            except docker.errors.APIError as e:
                errors.append(f"images with {label}: {e}")
        if errors:
            raise RuntimeError("docker cleanup left things behind: " + "; ".join(errors))
        return removed


def remove_docker_objects(client, *, images=(), containers=(), labels=(), jobs=()) -> list[str]:
    """One-shot form of DockerCleanup (for session fixtures and scripts)."""
    c = DockerCleanup(client)
    for ref in images:
        c.image(ref)
    for ident in containers:
        c.container(ident)
    for label in labels:
        c.label(label)
    for job_id in jobs:
        c.job(job_id)
    return c.cleanup()


@pytest.fixture
def docker_cleanup(docker_client):
    cleanup = DockerCleanup(docker_client)
    yield cleanup
    cleanup.cleanup()


# ---- registry -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def registry(docker_client):
    """A loopback docker-registry for the session; stopped and its storage removed at the end."""
    if not shutil.which("docker-registry") and not os.path.exists("/usr/bin/docker-registry"):
        unavailable("docker-registry is not installed: apt-get install -y docker-registry")
    reg = _registry.start_registry()
    yield reg
    reg.stop()


# ---- moto / Batch ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def moto_server():
    """moto_server on 127.0.0.1 with MOTO_DOCKER_NETWORK_MODE=host (and MOTO_PORT).
    It must start: a failure here fails the tests that use it, in or out of CI."""
    server = _moto.start_moto()
    yield server
    server.stop()  # /moto-api/reset first: kills job containers still running


@pytest.fixture(scope="session")
def batch_env(moto_endpoint, docker_client) -> dict:
    """A Batch job queue in moto whose jobs run as real containers on the local engine.

    Pass env in containerOverrides.environment (jobs get no endpoint or
    credentials from moto, P4)."""
    _moto.set_use_docker(moto_endpoint, True)  # global in moto: never trust what another test left (P20)
    return _queue(moto_endpoint)


def _queue(moto_endpoint) -> dict:
    """The test queue in moto, as the batch fixtures describe it."""
    q = _moto.batch_queue(moto_endpoint, QUEUE)
    return {
        "endpoint": moto_endpoint,
        "queue": q["queue"],
        "queue_arn": q["queue_arn"],
        "compute_environment": q["compute_environment"],
        "region": _moto.REGION,
        "env": dict(q["env"]),
    }


@pytest.fixture
def batch_no_docker(moto_endpoint) -> dict:
    """Like batch_env, but moto's Batch runs no containers (jobs SUCCEED inside
    submit_job) for this one test; for API-economy tests, not for execution."""
    _moto.set_use_docker(moto_endpoint, False)
    try:
        yield _queue(moto_endpoint)
    finally:
        _moto.set_use_docker(moto_endpoint, True)  # the mode every other test expects
