"""Smoke test of the remote-execution test infrastructure, through real parts:
base image (mmdebstrap + docker import) -> job image (docker build) -> loopback
registry (push) -> moto Batch (register, submit) -> a real container that
pulls the image from the registry and writes to moto's S3.

The job image's local tags are removed after the push, so moto (through
docker-py's ImageNotFound fallback) must pull it from the registry: the test
proves the registry serves what was pushed, not only that a local image runs.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

# The first use of base_image on a machine builds it (about 1.5 min); pytest-timeout
# counts fixture setup against the test that triggers it.
pytestmark = pytest.mark.timeout(900)

# The job payload. Standard library only (the base image has python3 and no
# boto3): a SigV4-signed S3 PUT built from the environment the test passes in
# containerOverrides, exactly what a job needs under moto (notes, P4).
WORKER = r'''
import datetime, hashlib, hmac, json, os, sys, urllib.parse, urllib.request

bucket, key = sys.argv[1], sys.argv[2]
endpoint = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
region = os.environ["AWS_DEFAULT_REGION"]
access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
body = json.dumps({
    "token": open("/app/token.txt").read().strip(),
    "job_id": os.environ.get("AWS_BATCH_JOB_ID"),
    "python": sys.version.split()[0],
    "argv": sys.argv[1:],
}).encode()

now = datetime.datetime.now(datetime.timezone.utc)
amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
host = urllib.parse.urlsplit(endpoint).netloc
path = "/" + urllib.parse.quote(bucket) + "/" + urllib.parse.quote(key, safe="/")
payload_hash = hashlib.sha256(body).hexdigest()
signed = "host;x-amz-content-sha256;x-amz-date"
canonical = "\n".join(["PUT", path, "", f"host:{host}", f"x-amz-content-sha256:{payload_hash}",
                       f"x-amz-date:{amz_date}", "", signed, payload_hash])
scope = f"{day}/{region}/s3/aws4_request"
to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
k = ("AWS4" + secret).encode()
for part in (day, region, "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(endpoint + path, data=body, method="PUT", headers={
    # urllib would send form encoding, and moto's server would then read the body as a form
    "Content-Type": "application/json",
    "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}",
})
with urllib.request.urlopen(req, timeout=30) as r:
    print(f"smoke: PUT s3://{bucket}/{key} -> {r.status}")
print("smoke: done", file=sys.stderr)
'''


def _push(client, repository: str, tag: str) -> None:
    # push() does not raise on registry errors: they come as items of the stream (P17).
    for item in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in item or "errorDetail" in item:
            raise AssertionError(f"push of {repository}:{tag} failed: {item}")


def _wait_for_job(batch, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in ("SUCCEEDED", "FAILED") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_batch_job_runs_pushed_image_and_writes_to_s3(base_image, registry, batch_env, moto_server,
                                                     docker_client, docker_cleanup, tmp_path: Path):
    import boto3
    import docker

    run = uuid.uuid4().hex[:12]
    repository = "bb-test/smoke"
    local_ref = docker_cleanup.image(f"{repository}:{run}")
    remote_repo = f"{registry.address}/{repository}"
    remote_ref = docker_cleanup.image(f"{remote_repo}:{run}")
    docker_cleanup.label("bb-test.run", run)

    # 1. A tiny job image FROM the base image: one COPY layer (the script and a token only this run knows).
    token = uuid.uuid4().hex
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "smoke.py").write_text(WORKER)
    (ctx / "app" / "token.txt").write_text(token + "\n")
    (ctx / "Dockerfile").write_text(f"FROM {base_image}\nCOPY app/ /app/\nCMD [\"python3\", \"/app/smoke.py\"]\n")
    t_build = time.monotonic()
    image, _ = docker_client.images.build(path=str(ctx), tag=local_ref, rm=True, forcerm=True, pull=False,
                                          labels={"bb-test": "smoke", "bb-test.run": run})

    # 2. Push to the loopback registry, then drop every local tag: moto must pull it.
    t_push = time.monotonic()
    assert image.tag(remote_repo, run)
    _push(docker_client, remote_repo, run)
    t_pushed = time.monotonic()
    assert run in registry.tags(repository)
    docker_client.images.remove(local_ref)
    docker_client.images.remove(remote_ref)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(remote_ref)
    log_before_job = len(registry.log_text())

    # 3. One Batch job through boto3 against moto; endpoint and dummy credentials
    #    travel in containerOverrides, the job definition carries none.
    kw = dict(endpoint_url=batch_env["endpoint"], region_name=batch_env["region"],
              aws_access_key_id=batch_env["env"]["AWS_ACCESS_KEY_ID"],
              aws_secret_access_key=batch_env["env"]["AWS_SECRET_ACCESS_KEY"])
    batch, s3, logs = boto3.client("batch", **kw), boto3.client("s3", **kw), boto3.client("logs", **kw)
    bucket, key = f"bb-smoke-{run}", f"out/{run}.json"
    s3.create_bucket(Bucket=bucket)
    jobdef = f"bb-smoke-{run}"
    jobdef_arn = batch.register_job_definition(
        jobDefinitionName=jobdef, type="container",
        containerProperties={
            "image": remote_ref,
            "command": ["python3", "/app/smoke.py", "Ref::bucket", "Ref::key"],  # one Ref:: per argument (P9)
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}],
        })["jobDefinitionArn"]
    try:
        t0 = time.monotonic()
        job_id = docker_cleanup.job(batch.submit_job(
            jobName=f"smoke-{run}", jobQueue=batch_env["queue"], jobDefinition=jobdef,
            parameters={"bucket": bucket, "key": key},
            containerOverrides={"environment": [{"name": k, "value": v} for k, v in batch_env["env"].items()]},
        )["jobId"])
        job = _wait_for_job(batch, job_id)
        elapsed = time.monotonic() - t0
        if job["status"] != "SUCCEEDED":
            codes = [j.get("container", {}).get("exitCode") for j in
                     batch.list_jobs(jobQueue=batch_env["queue"], jobStatus="FAILED")["jobSummaryList"]
                     if j["jobId"] == job_id]  # exitCode is only in list_jobs (P5)
            pytest.fail(f"job {job_id} ended {job['status']} (exit code {codes}) after {elapsed:.1f} s; "
                        f"moto's log:\n{moto_server.log_text()[-3000:]}")

        # 4. The container really ran our image: the object it wrote carries this run's token and its job id.
        obj = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert obj["token"] == token
        assert obj["job_id"] == job_id
        assert obj["argv"] == [bucket, key]
        assert obj["python"].startswith("3.")

        # moto pulled the image from the registry (it was not local), and the job's output reached CloudWatch Logs.
        docker_client.images.get(remote_ref)
        pulled = registry.log_text()[log_before_job:]
        # docker resolves the tag (HEAD), then fetches the manifest by digest and the blobs it lacks
        assert re.search(rf'"GET /v2/{repository}/manifests/\S+ HTTP/1.1" 200', pulled), pulled[-2000:]
        stream = batch.describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
        messages = [e["message"] for e in
                    logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]]
        assert any(f"PUT s3://{bucket}/{key} -> 200" in m for m in messages), messages
        print(f"smoke: build {t_push - t_build:.1f} s, push {t_pushed - t_push:.1f} s, job {job_id} "
              f"submit -> SUCCEEDED {elapsed:.1f} s (image pulled from {registry.address})")
    finally:
        # Everything this test created: moto's job definition and bucket, the registry tag;
        # docker_cleanup removes containers from the image, the image tags and anything labelled with this run.
        batch.deregister_job_definition(jobDefinition=jobdef_arn)
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", ()):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)
        registry.delete(repository, run)


def test_batch_no_docker_mode_runs_no_container(batch_no_docker, moto_server, docker_client):
    """moto's no-Docker Batch mode (for API-economy tests): a job succeeds at once
    and nothing starts; the mode is put back for the other tests."""
    import boto3

    from infra.moto import get_use_docker

    assert get_use_docker(batch_no_docker["endpoint"]) is False
    kw = dict(endpoint_url=batch_no_docker["endpoint"], region_name=batch_no_docker["region"],
              aws_access_key_id="testing", aws_secret_access_key="testing")
    batch = boto3.client("batch", **kw)
    run = uuid.uuid4().hex[:12]
    jobdef = f"bb-simple-{run}"
    arn = batch.register_job_definition(jobDefinitionName=jobdef, type="container", containerProperties={
        "image": f"bb-test/does-not-exist:{run}", "command": ["true"],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "128"}]})["jobDefinitionArn"]
    try:
        job_id = batch.submit_job(jobName=f"simple-{run}", jobQueue=batch_no_docker["queue"], jobDefinition=jobdef)["jobId"]
        assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "SUCCEEDED"
        assert docker_client.containers.list(all=True, filters={"name": job_id}) == []
    finally:
        batch.deregister_job_definition(jobDefinition=arn)


def test_batch_queue_is_idempotent(batch_env):
    from infra.moto import batch_queue

    again = batch_queue(batch_env["endpoint"], batch_env["queue"])
    assert again["queue_arn"] == batch_env["queue_arn"]
    assert again["env"] == batch_env["env"]
    assert set(again["env"]) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def test_base_image_is_reused_by_tag(base_image, docker_client):
    from infra.base_image import LABEL, LABEL_VALUE, ensure_base_image

    before = docker_client.images.get(base_image)
    assert ensure_base_image() == base_image
    after = docker_client.images.get(base_image)
    assert after.id == before.id  # found by its tag, not built again
    labels = after.labels
    assert labels.get(LABEL) == LABEL_VALUE
    out = docker_client.containers.run(base_image, ["python3", "-c", "import venv, ssl, sys; print(sys.version_info[0])"],
                                       remove=True, labels={"bb-test.run": "base-check"})
    assert out.strip() == b"3"
