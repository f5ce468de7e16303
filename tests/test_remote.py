"""`bb build --remote`: missing work runs as AWS Batch container jobs (moto's
Batch runs each job as a real container of the environment image, pushed to a
loopback registry), or as containers on the local Docker Engine. Everything
goes through the `bb` command."""
from __future__ import annotations

import json
import re

import boto3
import pytest

import localstore
from conftest import Project, statuses

FANOUT = """
    settings:
        image = {image}
        registry = {registry}
        queue = {queue}
        cache = s3://{bucket}/team

    @for i in 1..6
    parts/$(i).txt: data.txt scripts/part.sh
        sh scripts/part.sh $(i) > $@

    @default
    total.txt: parts/1.txt parts/2.txt parts/3.txt parts/4.txt parts/5.txt parts/6.txt
        cat $^ > $@
"""


def fanout(root, *, image, registry, queue, bucket) -> Project:
    project = Project(root)
    root.mkdir(parents=True, exist_ok=True)
    project.batchfile(FANOUT.format(image=image, registry=registry, queue=queue, bucket=bucket))
    project.write("data.txt", "hello\n")
    project.write("scripts/part.sh", 'echo "part $1: $(cat data.txt)"\n')
    return project


def jobs_in(batch_env) -> list[dict]:
    client = boto3.client("batch", endpoint_url=batch_env["endpoint"], region_name=batch_env["region"], aws_access_key_id="testing", aws_secret_access_key="testing")
    out = []
    for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
        out += client.list_jobs(jobQueue=batch_env["queue"], jobStatus=status)["jobSummaryList"]
    return out


@pytest.fixture
def remote_env(batch_env, s3):
    return {**batch_env["env"], **s3.env, "BB_BATCH_POLL": "0.5"}


@pytest.fixture(scope="module", autouse=True)
def built_images(docker_client):
    """The environment images bb builds here (named in its output), removed
    when the module is done, and nothing else. Kept across the module's
    tests: they share one image, as a user's builds do."""
    refs: set[str] = set()
    yield refs
    from infra.fixtures import remove_docker_objects

    remove_docker_objects(docker_client, images=sorted(refs))


IMAGE_LINE = re.compile(r"image (\S+): (?:built|up to date|pushed)")


def remember_images(project, refs) -> None:
    refs.update(IMAGE_LINE.findall(project.last_proc.stderr))


def test_a_fanout_runs_as_one_array_job_and_matches_a_local_build(tmp_path, built_images, base_image, registry, batch_env, s3, remote_env):
    project = fanout(tmp_path / "remote", image=base_image, registry=registry.address, queue=batch_env["queue"], bucket=s3.bucket)
    report = project.build("--remote", env=remote_env, timeout=900)
    remember_images(project, built_images)
    assert statuses(report, "built") == {f"parts/{i}.txt" for i in range(1, 7)} | {"total.txt"}, project.last_proc.stderr
    where = {t["target"]: t.get("where", {}) for t in project.last_report["targets"]}
    assert all(w.get("executor") == "batch" for w in where.values()), (where, project.last_proc.stderr)
    arrays = {w["job"].split(":")[0] for n, w in where.items() if n.startswith("parts/")}
    assert len(arrays) == 1  # one array job for the fan-out
    # the worker recorded that it ran it in a Batch job
    key = {t["target"]: t["key"] for t in project.last_report["targets"]}["total.txt"]
    provenance = json.loads(s3.get(f"team/ac/{key[:2]}/{key}"))["provenance"]
    assert provenance["executor"] == "batch" and provenance["job"]
    # what was asked for came home; the intermediates stayed in the cache
    assert project.exists("total.txt") and not project.exists("parts/1.txt")
    # the same pipeline built here gives the same bytes
    local = fanout(tmp_path / "local", image=base_image, registry=registry.address, queue=batch_env["queue"], bucket=s3.bucket)
    local.build("--no-cache")
    assert local.read("total.txt") == project.read("total.txt") == "".join(f"part {i}: hello\n" for i in range(1, 7))
    submitted = len(jobs_in(batch_env))
    # a second --remote submits nothing
    again = project.build("--remote", env=remote_env, timeout=300)
    assert set(again.values()) == {"cached"}
    assert len(jobs_in(batch_env)) == submitted
    # a recipe edit rebuilds only what it affects, and builds no image
    project.write("scripts/part.sh", 'echo "PART $1: $(cat data.txt)"\n')
    project.batchfile(FANOUT.format(image=base_image, registry=registry.address, queue=batch_env["queue"], bucket=s3.bucket).replace("cat $^ > $@;", "cat $^ > $@; true;"))
    edited = project.build("--remote", env=remote_env, timeout=600)
    assert statuses(edited, "built") == {f"parts/{i}.txt" for i in range(1, 7)} | {"total.txt"}
    assert "building from" not in project.last_proc.stderr  # the image was up to date
    assert "PART 3: hello\n" in project.read("total.txt")


def failing_remote_build(tmp_path, built_images, base_image, registry, batch_env, s3, remote_env, rule: str) -> str:
    """Build one rule remotely, expect exit 1; returns what bb printed."""
    project = Project(tmp_path / "p")
    project.root.mkdir()
    project.write("helper.txt", "x\n")
    settings = f"""
        settings:
            image = {base_image}
            registry = {registry.address}
            queue = {batch_env["queue"]}
            cache = s3://{s3.bucket}/team
    """
    project.batchfile(settings + rule)
    proc = project.bb("build", "--remote", env=remote_env, check=1, timeout=900)
    built_images.update(IMAGE_LINE.findall(proc.stderr))
    return proc.stderr


def test_a_failing_remote_recipe_shows_its_exit_code_and_log_and_fails(tmp_path, built_images, base_image, registry, batch_env, s3, remote_env):
    rule = """
        broken.txt:
            echo "about to fail"; exit 7
    """
    stderr = failing_remote_build(tmp_path, built_images, base_image, registry, batch_env, s3, remote_env, rule)
    assert "exit code 7" in stderr and "about to fail" in stderr, stderr


def test_an_undeclared_input_fails_remotely_with_its_name(tmp_path, built_images, base_image, registry, batch_env, s3, remote_env):
    rule = """
        out.txt:
            cat helper.txt > $@
    """
    stderr = failing_remote_build(tmp_path, built_images, base_image, registry, batch_env, s3, remote_env, rule)
    assert "'helper.txt', which the workspace has but the rule does not declare" in stderr, stderr


def test_docker_backend_runs_the_worker_in_the_image_on_this_machine(tmp_path, built_images, base_image):
    project = Project(tmp_path / "p")
    project.root.mkdir()
    project.write("in.txt", "abc\n")
    project.batchfile(f"""
        settings:
            image = {base_image}
        @for i in 1..2
        out/$(i).txt: in.txt
            cat in.txt > $@; echo "$(i)" >> $@
    """)
    report = project.build("--remote", "docker", "out/1.txt", "out/2.txt", timeout=900)
    remember_images(project, built_images)
    assert set(report.values()) == {"built"}, project.last_proc.stderr
    assert project.read("out/2.txt") == "abc\n2\n"
    results = list(localstore.results(project.root / ".bb").values())
    assert {r["provenance"]["executor"] for r in results} == {"docker"}
    assert project.build("--remote", "docker", "out/1.txt", "out/2.txt") == {"out/1.txt": "cached", "out/2.txt": "cached"}


def test_remote_settings_are_checked_up_front(project, base_image):
    project.batchfile("""
        out.txt:
            echo x > $@
    """)
    proc = project.bb("build", "--remote", check=2)
    assert "base image" in proc.stderr and "internal error" not in proc.stderr
    project.batchfile(f"""
        settings:
            image = {base_image}
        out.txt:
            echo x > $@
    """)
    proc = project.bb("build", "--remote", check=2)
    assert "shared cache in S3" in proc.stderr
