"""Controlling remote runs, end to end through the `bb` command against
moto's Batch (real job containers, a loopback registry, moto's S3):
Ctrl-C with and without --detach, a rerun after bb was killed, `bb debug`
and `bb log` after remote runs, a requirements change and the environment
image, the RUNNABLE limit, and -k with a failing remote target.

What a user would check is asserted: bb's exit code and what it prints, the
files in the workspace, and what moto's Batch says about the jobs (ListJobs,
as `aws batch list-jobs` would). Docker objects: the environment images bb
names in its output are removed at the end of the module; job containers are
removed by job id (moto names them `<jobName>-<jobId>`, notes P19).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from infra.wheels import make_wheel

from conftest import BB_CMD, Project

# The first test may build the environment image (and, on a new machine, the base image).
pytestmark = pytest.mark.timeout(600)

IMAGE_LINE = re.compile(r"image (\S+): (?:built|up to date|pushed)")
STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")

SETTINGS = """
    settings:
        image = {image}
        registry = {registry}
        queue = {queue}
        cache = s3://{bucket}/team
"""


@pytest.fixture
def remote_env(batch_env, s3):
    return {**batch_env["env"], **s3.env, "BB_BATCH_POLL": "0.5"}


@pytest.fixture(scope="module", autouse=True)
def built_images(docker_client):
    """The environment images bb names in its output here, removed when the
    module is done (shared by its tests, as a user's builds share one)."""
    refs: set[str] = set()
    yield refs
    from infra.fixtures import remove_docker_objects

    remove_docker_objects(docker_client, images=sorted(refs))


@pytest.fixture
def new_project(tmp_path, base_image, registry, batch_env, s3):
    """A project for remote runs. Like most projects it has requirements: a
    tiny wheel made here (no network), the same bytes in every project, so
    the module's tests share one environment image."""

    def make(rules: str, *, extra_settings: str = "", name: str = "p") -> Project:
        project = Project(tmp_path / name)
        project.root.mkdir(parents=True)
        make_wheel(project.root / "wheels", "bbtinypkg", "0.1", "ANSWER = 'tiny 0.1'\n")
        project.write("requirements.txt", "--find-links ./wheels\nbbtinypkg==0.1\n")
        head = textwrap.dedent(SETTINGS.format(image=base_image, registry=registry.address, queue=batch_env["queue"], bucket=s3.bucket))
        head += "    requirements = requirements.txt\n"
        if extra_settings:
            head += "".join(f"    {line.strip()}\n" for line in extra_settings.strip().splitlines())
        project.batchfile(head + textwrap.dedent(rules))
        return project

    return make


def remember(text: str, refs: set[str]) -> list[str]:
    found = IMAGE_LINE.findall(text)
    refs.update(found)
    return found


# ---- moto's view of the jobs ----------------------------------------------------------

def batch_client(batch_env):
    return boto3.client("batch", endpoint_url=batch_env["endpoint"], region_name=batch_env["region"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def jobs_in(batch_env) -> list[dict]:
    """Every job of the queue, in every state (ListJobs, with exitCode, notes P5)."""
    client = batch_client(batch_env)
    out = []
    for status in STATES:
        out += client.list_jobs(jobQueue=batch_env["queue"], jobStatus=status)["jobSummaryList"]
    return out


def job(batch_env, job_id: str) -> dict:
    found = [j for j in jobs_in(batch_env) if j["jobId"] == job_id]
    assert found, (job_id, found)
    # a job that changed state between two ListJobs calls shows twice: the later state is its own
    return found[-1]


def wait_for(what: str, check, timeout: float, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def containers_of(docker_client, job_id: str) -> list:
    import docker

    for _ in range(5):
        try:
            return [c for c in docker_client.containers.list(all=True, filters={"name": job_id}) if c.name.endswith(f"-{job_id}")]
        except docker.errors.NotFound:  # listed, then removed (by moto) before it was inspected
            time.sleep(0.1)
    return []


def running_container(docker_client, job_id: str) -> bool:
    return any(c.status == "running" for c in containers_of(docker_client, job_id))


# ---- bb in the background ---------------------------------------------------------------

class Background:
    """`bb ...` started as its own process (so that it, and only it, gets the
    signals the test sends), its output kept in files."""

    def __init__(self, project: Project, *args: str, env: dict):
        full_env = dict(os.environ)
        full_env.pop("BB_STORE", None)
        full_env.update(env)
        self.out = open(project.root.parent / f"bb-{time.monotonic_ns()}.out", "w+")
        self.err = open(project.root.parent / f"bb-{time.monotonic_ns()}.err", "w+")
        self.proc = subprocess.Popen(BB_CMD + list(args), cwd=project.root, env=full_env, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)

    def stderr(self) -> str:
        self.err.flush()
        with open(self.err.name) as f:
            return f.read()

    def stdout(self) -> str:
        with open(self.out.name) as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"bb did not exit within {timeout:.0f} s; its output:\n{self.stderr()}") from None

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.out.close()
        self.err.close()


def new_running_job(batch_env, docker_client, bg: Background, before: set[str], timeout: float = 420) -> dict:
    """The job bb submitted (one not in `before`), once it is RUNNING in moto
    and its container runs."""

    def check():
        assert bg.alive(), f"bb exited early ({bg.proc.returncode}):\n{bg.stderr()}"
        for j in jobs_in(batch_env):
            if j["jobId"] not in before and j["jobName"].startswith("bb-") and j["status"] == "RUNNING":
                if running_container(docker_client, j["jobId"]):
                    return j
        return None

    return wait_for("bb's job to be RUNNING with its container up", check, timeout)


class Gate:
    """An HTTP endpoint on loopback that a recipe waits on (job containers
    share the host's network): the test decides when the job may finish,
    instead of guessing with a sleep."""

    def __init__(self):
        import http.server
        import threading

        opened = self.opened = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if opened.is_set() else 503)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/go"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_command(self, limit: int = 300) -> str:
        """Shell: wait (at most `limit` seconds) until the gate opens."""
        probe = f"python -c \"import urllib.request; urllib.request.urlopen('{self.url}', timeout=2)\""
        return f"i=0; until {probe} 2>/dev/null; do i=$$((i+1)); [ $i -gt {limit * 2} ] && break; sleep 0.5; done"

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.close()


def bb_source_digest() -> str:
    """bb's own source, which enters the environment image's tag: when it
    changes (another checkout edit while the tests run), a new image is
    expected, so the 'builds none' checks below only hold across runs of
    one and the same bb."""
    import buildsys

    root = Path(buildsys.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    pyproject = root.parent / "pyproject.toml"
    if pyproject.is_file():
        h.update(pyproject.read_bytes())
    return h.hexdigest()


def plan_lists(project: Project, target: str, env: dict) -> bool:
    proc = project.bb("plan", "--remote", env=env, check=0, timeout=120)
    return f"run     {target}" in proc.stdout.splitlines()


# ---- 1. Ctrl-C ------------------------------------------------------------------------------

def test_ctrl_c_terminates_the_running_job_and_records_nothing(new_project, batch_env, docker_client, docker_cleanup, remote_env, built_images):
    project = new_project("""
        slow.txt:
            sleep 60; echo late > $@
    """)
    before = {j["jobId"] for j in jobs_in(batch_env)}
    bg = Background(project, "build", "--remote", env=remote_env)
    try:
        running = new_running_job(batch_env, docker_client, bg, before)
        job_id = docker_cleanup.job(running["jobId"])
        t0 = time.monotonic()
        bg.signal(signal.SIGINT)
        code = bg.wait(timeout=30)
        seconds = time.monotonic() - t0
        err = bg.stderr()
    finally:
        bg.close()
    remember(err, built_images)
    assert code == 130, err
    assert seconds < 15, f"bb took {seconds:.1f} s to stop after Ctrl-C"
    assert "interrupted" in err, err
    # moto: the job was terminated (FAILED, with bb's reason), its container is gone
    ended = wait_for("the job to end", lambda: (j := job(batch_env, job_id))["status"] in ("SUCCEEDED", "FAILED") and j, 20)
    assert ended["status"] == "FAILED", ended
    assert "cancelled by bb" in ended.get("statusReason", ""), ended
    wait_for(f"the container of job {job_id} to be removed", lambda: not containers_of(docker_client, job_id), 20)
    # nothing recorded: no output, and the target still has to run
    assert not project.exists("slow.txt")
    assert plan_lists(project, "slow.txt", remote_env)


def _leave_a_job_running_then_rerun(new_project, gate, batch_env, docker_client, docker_cleanup, remote_env, built_images, *, stop, args):
    """Start a remote build, stop bb with `stop` while its job runs, check the
    job still runs, then run `bb build --remote` again: it must adopt the job.
    The recipe waits on the gate, opened once the second bb is building."""
    project = new_project(f"""
        adopted.txt: in.txt
            {gate.wait_command()}; cat in.txt > $@; echo "made by the first job" >> $@
    """)
    project.write("in.txt", "input\n")
    before = {j["jobId"] for j in jobs_in(batch_env)}
    bg = Background(project, "build", "--remote", *args, env=remote_env)
    try:
        running = new_running_job(batch_env, docker_client, bg, before)
        job_id = docker_cleanup.job(running["jobId"])
        bg.signal(stop)
        code = bg.wait(timeout=30)
        err = bg.stderr()
    finally:
        bg.close()
    remember(err, built_images)
    # the job was left running, and its container with it
    assert job(batch_env, job_id)["status"] == "RUNNING", (job(batch_env, job_id), err)
    assert running_container(docker_client, job_id)

    again = Background(project, "build", "--json", "--remote", env=remote_env)
    try:
        wait_for("the second bb to start building", lambda: "building adopted.txt" in again.stderr() or not again.alive(), 420)
        time.sleep(4)  # bb lists the jobs in flight when it submits; then the job may end
        gate.open()
        code2 = again.wait(timeout=120)
        err2, out2 = again.stderr(), again.stdout()
    finally:
        again.close()
    remember(err2, built_images)
    assert code2 == 0, err2
    report = json.loads(out2)
    statuses = {t["target"]: t["status"] for t in report["targets"]}
    assert statuses == {"adopted.txt": "built"}, err2
    assert project.read("adopted.txt") == "input\nmade by the first job\n"
    entry = report["targets"][0]
    assert entry.get("where", {}).get("job") == job_id, entry
    # moto has one job for that key: the first one, nothing was submitted again
    named = sorted((j for j in jobs_in(batch_env) if j["jobName"] == f"bb-{entry['key'][:64]}"), key=lambda j: j["createdAt"])
    assert [j["jobId"] for j in named] == [job_id], (
        f"adopted {job_id}, but moto has these jobs of that name:\n" + "\n".join(json.dumps(j) for j in named)
        + f"\nfirst bb:\n{err}\nsecond bb:\n{err2}")
    assert named[0]["status"] == "SUCCEEDED"
    assert {j["jobId"] for j in jobs_in(batch_env)} - before == {job_id}
    # moto removes the finished job's container (before the test's cleanup does)
    wait_for(f"the container of job {job_id} to be removed", lambda: not containers_of(docker_client, job_id), 20)
    return code, err


def test_ctrl_c_with_detach_leaves_the_job_running_for_the_next_run_to_adopt(new_project, gate, batch_env, docker_client, docker_cleanup, remote_env, built_images):
    code, err = _leave_a_job_running_then_rerun(new_project, gate, batch_env, docker_client, docker_cleanup, remote_env, built_images,
                                                stop=signal.SIGINT, args=("--detach",))
    assert code == 130, err
    assert "left running" in err, err


# ---- 2. kill -9 ---------------------------------------------------------------------------

def test_a_rerun_after_bb_was_killed_adopts_the_job_still_running(new_project, gate, batch_env, docker_client, docker_cleanup, remote_env, built_images):
    code, _ = _leave_a_job_running_then_rerun(new_project, gate, batch_env, docker_client, docker_cleanup, remote_env, built_images,
                                              stop=signal.SIGKILL, args=())
    assert code == -signal.SIGKILL


# ---- 3. bb debug ----------------------------------------------------------------------------

def test_debug_reruns_a_remotely_failed_target_in_the_same_image(new_project, docker_cleanup, remote_env, built_images):
    project = new_project("""
        broken.txt:
            echo "checking the input before exit 5"; exit 5
    """)
    for attempt in range(3):
        source = bb_source_digest()
        failed = project.build("--remote", env=remote_env, check=1, timeout=420)
        build_refs = set(remember(project.last_proc.stderr, built_images))
        assert failed == {"broken.txt": "failed"}, project.last_proc.stderr
        assert "exit code 5" in project.last_proc.stderr
        key = project.last_report["targets"][0]["key"]
        docker_cleanup.label("bb.key", key)  # debug's container, should bb leave it behind

        proc = project.bb("debug", "broken.txt", env=remote_env, check=1, timeout=420)
        debug_refs = set(remember(proc.stderr, built_images))
        if source == bb_source_digest():
            break  # else bb itself changed meanwhile, and with it the image: again
    assert "checking the input before exit 5" in proc.stdout, (proc.stdout, proc.stderr)
    assert "exit code 5" in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)
    # the same environment image as the remote run, named in both outputs
    assert build_refs and debug_refs == build_refs, (build_refs, debug_refs, proc.stderr)


# ---- 4. bb log ------------------------------------------------------------------------------

def test_log_shows_what_the_recipe_printed_in_the_job(new_project, remote_env, built_images):
    project = new_project("""
        out.txt:
            echo "hello from $$(python -c 'import sys; print(sys.prefix)')"; echo "a warning on stderr" >&2; echo ok > $@
    """)
    assert project.build("--remote", env=remote_env, timeout=420) == {"out.txt": "built"}, project.last_proc.stderr
    remember(project.last_proc.stderr, built_images)
    assert project.last_report["targets"][0]["where"]["executor"] == "batch"
    proc = project.bb("log", "out.txt", env=remote_env, check=0)
    # /opt/bb is the environment image's Python: the recipe ran in the job
    assert "hello from /opt/bb" in proc.stdout, (proc.stdout, proc.stderr)
    assert "a warning on stderr" in proc.stdout, (proc.stdout, proc.stderr)


# ---- 5. requirements and the environment image ----------------------------------------------

def test_a_requirements_change_builds_a_new_image_and_the_same_requirements_none(new_project, remote_env, built_images):
    project = new_project("""
        answer.txt: data.txt
            python -c 'import bbtinypkg; print(bbtinypkg.ANSWER)' > $@; cat data.txt >> $@
    """)
    project.write("data.txt", "one\n")

    def build():
        """(image ref, whether it built one, stderr, bb's source digest or None if it changed during the run)"""
        source = bb_source_digest()
        report = project.build("--remote", env=remote_env, timeout=420)
        err = project.last_proc.stderr
        refs = set(remember(err, built_images))
        assert report == {"answer.txt": "built"}, err
        assert len(refs) == 1, err
        return refs.pop(), re.search(r"image \S+: building", err) is not None, err, (source if source == bb_source_digest() else None)

    first, *_ = build()  # the module's image (built here if this test runs first)
    assert project.read("answer.txt") == "tiny 0.1\none\n"

    make_wheel(project.root / "wheels", "bbtinypkg", "0.2", "ANSWER = 'tiny 0.2'\n")
    project.write("requirements.txt", "--find-links ./wheels\nbbtinypkg==0.2\n")
    second, built_second, err, source = build()
    assert built_second and second != first, err
    assert project.read("answer.txt") == "tiny 0.2\none\n"  # the job ran in the new image

    for attempt in range(3):  # work to do, the same requirements (and the same bb)
        project.write("data.txt", f"run {attempt}\n")
        third, built_third, err, now = build()
        if now is not None and now == source:
            break
        second, source = third, now  # bb's own source changed under the test: a new image was due; again
    assert not built_third and third == second, err
    assert f"image {second}: up to date" in err
    assert project.read("answer.txt") == f"tiny 0.2\nrun {attempt}\n"


# ---- 6. the RUNNABLE limit ------------------------------------------------------------------

def _transition(endpoint: str, path: str, payload: dict) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/state-manager/{path}", data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def test_a_job_stuck_in_runnable_is_terminated_and_reported(new_project, batch_env, docker_client, docker_cleanup, remote_env, built_images):
    """moto has no capacity model: its job thread walks SUBMITTED, PENDING,
    RUNNABLE, STARTING through its state manager (moto/batch/models.py,
    Job.run; moto/moto_api/_internal/managed_state_model.py). With a 'time'
    transition each state lasts N seconds; once the test sees the job
    RUNNABLE it switches to a 'manual' transition that needs more advance()
    calls than the job thread ever makes, so the job stays RUNNABLE for good,
    as a job no compute environment can take does on AWS."""
    project = new_project("""
        big.txt:
            echo never > $@
    """, extra_settings="runnable_timeout = 3s")
    endpoint = batch_env["endpoint"]
    before = {j["jobId"] for j in jobs_in(batch_env)}
    bg = None
    job_id = None
    try:
        _transition(endpoint, "set-transition", {"model_name": "batch::job", "transition": {"progression": "time", "seconds": 3}})
        bg = Background(project, "build", "--remote", env=remote_env)

        def runnable():
            assert bg.alive(), f"bb exited early ({bg.proc.returncode}):\n{bg.stderr()}"
            for j in jobs_in(batch_env):
                if j["jobId"] not in before and j["jobName"].startswith("bb-"):
                    assert j["status"] in ("SUBMITTED", "PENDING", "RUNNABLE"), f"moto moved the job past RUNNABLE before the test held it: {j}"
                    if j["status"] == "RUNNABLE":
                        return j
            return None

        held = wait_for("the job to be RUNNABLE", runnable, 420, every=0.1)
        _transition(endpoint, "set-transition", {"model_name": "batch::job", "transition": {"progression": "manual", "times": 1_000_000}})
        job_id = docker_cleanup.job(held["jobId"])
        t0 = time.monotonic()
        code = bg.wait(timeout=60)
        seconds = time.monotonic() - t0
        err = bg.stderr()
        remember(err, built_images)
        assert code == 1, err
        assert "stuck in RUNNABLE" in err and f"queue '{batch_env['queue']}'" in err, err
        assert seconds < 30, f"bb took {seconds:.1f} s to give up on a job RUNNABLE with runnable_timeout = 3s"
        # bb terminated it: moto has bb's reason on the job (moto's RUNNABLE loop
        # only acts on it once the job leaves RUNNABLE)
        assert job(batch_env, job_id).get("statusReason") == "bb: stuck in RUNNABLE", job(batch_env, job_id)
    finally:
        _transition(endpoint, "unset-transition", {"model_name": "batch::job"})
        if bg is not None:
            bg.close()
    if job_id:
        ended = wait_for("the terminated job to end", lambda: (j := job(batch_env, job_id))["status"] in ("SUCCEEDED", "FAILED") and j, 30)
        assert ended["status"] == "FAILED", ended
        wait_for(f"the container of job {job_id} to be removed", lambda: not containers_of(docker_client, job_id), 20)
    assert not project.exists("big.txt")


# ---- 7. -k ----------------------------------------------------------------------------------

def test_keep_going_brings_home_the_other_targets_when_one_fails_remotely(new_project, remote_env, built_images):
    project = new_project("""
        good.txt:
            sleep 2; echo good > $@
        bad.txt:
            echo "bad fails"; exit 3
        after.txt: good.txt
            cat good.txt > $@; echo after >> $@
    """)
    report = project.build("-k", "--remote", "good.txt", "bad.txt", "after.txt", env=remote_env, check=1, timeout=420)
    err = project.last_proc.stderr
    remember(err, built_images)
    assert report == {"good.txt": "built", "bad.txt": "failed", "after.txt": "built"}, err
    assert project.read("good.txt") == "good\n"
    assert project.read("after.txt") == "good\nafter\n"
    assert not project.exists("bad.txt")
    assert "exit code 3" in err and "bad fails" in err, err
