"""The environment image (buildsys/remote/image.py): tagged by what goes into
it, built with the real Docker engine from the test base image (Debian, made
by tests/infra), pushed to a real loopback registry, run with `docker run`.

Nothing is downloaded for the project's own requirements: they name a tiny
wheel written by hand into the project's ./wheels folder. bb's own
dependencies come from pip's usual index (or its cache).

Every image, tag and container made here is removed by reference at the end;
nothing is removed by pattern. Timings are printed (pytest -s shows them).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.wheels import make_wheel

from buildsys.errors import BBError
from buildsys.remote import image
from buildsys.remote.image import ImageSpec, ensure_image, image_tag

pytestmark = pytest.mark.timeout(900)

RUN_ID = uuid.uuid4().hex[:8]


def make_project(root: Path, version: str = "0.1") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    make_wheel(root / "wheels", "bbtinypkg", version, f"ANSWER = 'tiny {version}'\n")
    (root / "requirements.txt").write_text(f"--find-links ./wheels\nbbtinypkg=={version}\n")
    (root / "src").mkdir(exist_ok=True)
    (root / "src" / "pipeline.py").write_text("def step():\n    return 1\n")
    (root / "Batchfile").write_text("out.txt: src/pipeline.py\n    python src/pipeline.py > out.txt\n")
    return root


class Progress(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def building(self) -> list[str]:
        return [m for m in self if m.startswith("image ") and ": building" in m]

    def pushing(self) -> list[str]:
        return [m for m in self if m.startswith("image ") and m.endswith(": pushing")]


def docker_run(ref: str, *command: str) -> str:
    proc = subprocess.run(["docker", "run", "--rm", ref, *command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"docker run {ref} {command} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def report(what: str, seconds: float) -> None:
    print(f"\n[timing] {what}: {seconds:.3f} s", flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the tag: no Docker needed ------------------------------------------------------

def test_tag_follows_requirements_and_their_wheels_not_code(tmp_path):
    root = make_project(tmp_path / "proj")
    spec = ImageSpec(base="bb-test/base:x", requirements="requirements.txt")
    tag = image_tag(spec, str(root))
    assert len(tag) == image.TAG_LENGTH and tag == image_tag(spec, str(root))

    (root / "src" / "pipeline.py").write_text("def step():\n    return 2  # edited\n")
    (root / "Batchfile").write_text("# edited\n")
    (root / "data.csv").write_text("a,b\n1,2\n")
    assert image_tag(spec, str(root)) == tag, "editing code or data must not change the image"

    (root / "requirements.txt").write_text("--find-links ./wheels\nbbtinypkg==0.1\n# a comment\n")
    tag2 = image_tag(spec, str(root))
    assert tag2 != tag, "the requirements' bytes enter the tag"

    make_wheel(root / "wheels", "bbtinypkg", "0.1", "ANSWER = 'rebuilt with other bytes'\n")
    assert image_tag(spec, str(root)) != tag2, "a local wheel the requirements point at enters the tag"


def test_local_files_named_by_requirements_enter_the_tag(tmp_path):
    root = tmp_path / "proj"
    (root / "reqs").mkdir(parents=True)
    make_wheel(root / "vendor", "bbother", "1.0", "X = 1\n")
    (root / "reqs" / "base.txt").write_text("-c constraints.txt\n./vendor/bbother-1.0-py3-none-any.whl\n")
    (root / "reqs" / "constraints.txt").write_text("bbother==1.0\n")
    (root / "localpkg").mkdir()
    (root / "localpkg" / "setup.py").write_text("# a local project\n")
    (root / "requirements.txt").write_text(
        "-r reqs/base.txt  # nested\n--find-links=vendor\nfile:localpkg\n"
        "requests==2.31.0 --hash=sha256:0123\n-e\n")
    spec = ImageSpec(base="b:x", requirements="requirements.txt")
    refs = image.image_inputs(spec, str(root))["requirements"]["local"]
    assert set(refs) == {"-r reqs/base.txt", "-r reqs/base.txt > -c constraints.txt",
                         "-r reqs/base.txt > ./vendor/bbother-1.0-py3-none-any.whl", "-f vendor", "file:localpkg"}
    tag = image_tag(spec, str(root))
    for path, text in (("reqs/constraints.txt", "bbother>=1.0\n"), ("localpkg/setup.py", "# edited\n")):
        old = (root / path).read_text()
        (root / path).write_text(text)
        assert image_tag(spec, str(root)) != tag, path
        (root / path).write_text(old)
        assert image_tag(spec, str(root)) == tag


def test_tag_covers_base_packages_platform_but_not_their_order(tmp_path):
    root = make_project(tmp_path / "proj")
    spec = ImageSpec(base="bb-test/base:x", requirements="requirements.txt", system_packages=("jq", "curl"))
    tag = image_tag(spec, str(root))
    assert image_tag(ImageSpec(base="bb-test/base:x", requirements="requirements.txt",
                               system_packages=("curl", "jq")), str(root)) == tag
    for other in (ImageSpec(base="bb-test/base:y", requirements="requirements.txt", system_packages=("jq", "curl")),
                  ImageSpec(base="bb-test/base:x", requirements="requirements.txt", system_packages=("jq",)),
                  ImageSpec(base="bb-test/base:x", requirements="requirements.txt", system_packages=("jq", "curl"),
                            platform="linux/arm64"),
                  ImageSpec(base="bb-test/base:x", system_packages=("jq", "curl"))):
        assert image_tag(other, str(root)) != tag, other
    inputs = image.image_inputs(spec, str(root))
    assert str(tmp_path) not in json.dumps(inputs), "no absolute path of this machine enters the tag"


def test_tag_follows_bb_source_but_not_its_readme(tmp_path):
    src = image._bb_source()
    assert src.package and (src.path / src.package / "__init__.py").is_file()
    copy = image._stage_source(src, tmp_path / "bb")
    (copy / "README.md").write_text("readme\n")
    first = image._dir_source(copy, src.package).digest
    (copy / "README.md").write_text("readme, edited\n")
    assert image._dir_source(copy, src.package).digest == first
    with open(copy / src.package / "errors.py", "a") as f:
        f.write("\n# an edit of bb itself\n")
    assert image._dir_source(copy, src.package).digest != first


def test_user_dockerfile_context_enters_the_tag(tmp_path):
    root = make_project(tmp_path / "proj")
    (root / "env").mkdir()
    (root / "env" / "Dockerfile").write_text("FROM bb-test/base:x\nCOPY marker.txt /etc/marker.txt\n")
    (root / "env" / "marker.txt").write_text("one\n")
    spec = ImageSpec(base="", dockerfile="env/Dockerfile")
    tag = image_tag(spec, str(root))
    (root / "src" / "pipeline.py").write_text("# edited\n")
    assert image_tag(spec, str(root)) == tag
    (root / "env" / "marker.txt").write_text("two\n")
    assert image_tag(spec, str(root)) != tag


def test_clear_errors_without_docker(tmp_path):
    root = make_project(tmp_path / "proj")
    with pytest.raises(BBError, match=r"requirements file 'missing\.txt'.*does not exist"):
        image_tag(ImageSpec(base="b:x", requirements="missing.txt"), str(root))
    (root / "Dockerfile").write_text("FROM b:x\n")
    with pytest.raises(BBError, match="without a .dockerignore") as err:
        image_tag(ImageSpec(base="", dockerfile="Dockerfile"), str(root))
    assert "env/Dockerfile" in err.value.render()
    with pytest.raises(BBError, match="Not a Debian package name"):
        image_tag(ImageSpec(base="b:x", system_packages=("jq; rm -rf /",)), str(root))
    port = _free_port()  # nothing listens there
    with pytest.raises(BBError, match=rf"registry 127\.0\.0\.1:{port} does not answer"):
        ensure_image(ImageSpec(base="b:x"), str(root), f"127.0.0.1:{port}", progress=lambda m: None)
    with pytest.raises(BBError, match="without a scheme"):
        ensure_image(ImageSpec(base="b:x"), str(root), f"http://127.0.0.1:{port}", progress=lambda m: None)


def test_docker_engine_not_reachable(tmp_path, monkeypatch):
    pytest.importorskip("docker")
    root = make_project(tmp_path / "proj")
    monkeypatch.setattr(image, "_CLIENT", None)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(BBError, match="Docker engine does not answer") as err:
        ensure_image(ImageSpec(base="b:x", requirements="requirements.txt"), str(root), "local",
                     progress=lambda m: None)
    assert "start the engine" in err.value.render()


def test_wheels_for_another_python_are_fetched_binary_only():
    image312 = {"implementation": "cpython", "version": [3, 12], "machine": "x86_64", "libc": ["glibc", "2.36"]}
    assert not image._wheels_fit(image._host_python() | {"version": [3, 11]}, image312)
    flags = image.target_flags(image312)
    assert flags[:7] == ["--only-binary=:all:", "--implementation", "cp", "--python-version", "3.12", "--abi", "cp312"]
    platforms = flags[flags.index("--platform") + 1::2]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert "manylinux2014_x86_64" in platforms and "manylinux1_x86_64" in platforms
    older_libc = {**image._host_python(), "libc": ["glibc", "2.17"]}
    assert not image._wheels_fit(image._host_python() | {"libc": ["glibc", "2.36"]}, older_libc)
    with pytest.raises(BBError, match="only for CPython"):
        image.target_flags({**image312, "implementation": "pypy"})


def test_importing_buildsys_imports_neither_docker_nor_boto3():
    code = ("import sys, buildsys, buildsys.remote, buildsys.remote.image; "
            "print(sorted(m for m in ('docker', 'boto3', 'botocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- real Docker and a real registry ------------------------------------------------

class Built:
    """The project, the spec and what the first (cold) ensure_image did."""

    def __init__(self, root: Path, spec: ImageSpec, repository: str, ref: str, progress: Progress, seconds: float):
        self.root, self.spec, self.repository = root, spec, repository
        self.ref, self.progress, self.seconds = ref, progress, seconds


@pytest.fixture(scope="module")
def images_made(docker_client, registry):
    """References this module made, removed at its end (and their registry tags)."""
    from infra.fixtures import remove_docker_objects

    made: list[str] = []
    yield made
    for ref in made:
        address, _, rest = ref.partition("/")
        if address == registry.address:
            repo, _, tag = rest.rpartition(":")
            registry.delete(repo, tag)
    remove_docker_objects(docker_client, images=list(reversed(made)))


@pytest.fixture(scope="module")
def built(tmp_path_factory, base_image, registry, images_made) -> Built:
    root = make_project(tmp_path_factory.mktemp("image") / "proj")
    repository = f"bb-test/env-{RUN_ID}"
    spec = ImageSpec(base=base_image, requirements="requirements.txt", system_packages=("jq",))
    progress = Progress()
    images_made.append(f"{registry.address}/{repository}:{image_tag(spec, str(root))}")
    t0 = time.monotonic()
    ref = ensure_image(spec, str(root), registry.address, repository, progress=progress)
    seconds = time.monotonic() - t0
    report("cold ensure_image (wheelhouse, build with apt, push)", seconds)
    print("\n".join(progress), flush=True)
    return Built(root, spec, repository, ref, progress, seconds)


def test_cold_build_holds_bb_requirements_and_system_packages(built, registry):
    tag = image_tag(built.spec, str(built.root))
    assert built.ref == f"{registry.address}/{built.repository}:{tag}"
    assert len(built.progress.building()) == 1 and len(built.progress.pushing()) == 1
    out = docker_run(built.ref, "python", "-c",
                     "import buildsys, bbtinypkg, sys; print(buildsys.__version__, bbtinypkg.ANSWER, sys.prefix)")
    assert out.split() == [image.__version__, "tiny", "0.1", "/opt/bb"]
    assert docker_run(built.ref, "jq", "--version").startswith("jq-")
    assert tag in registry.tags(built.repository)

    import docker

    info = docker.from_env().api.inspect_image(built.ref)["Config"]
    assert info["Cmd"] == list(image.WORKER_COMMAND)
    assert info["WorkingDir"] == image.WORKDIR
    assert info["Labels"][image.LABEL_TAG] == tag
    assert not info.get("Entrypoint")
    # The wheelhouse stays on the client, keyed by the tag.
    assert any((built.root / ".bb" / "images" / tag / "wheelhouse").glob("bbtinypkg-0.1-*.whl"))


def test_second_ensure_neither_builds_nor_pushes(built, registry, monkeypatch):
    def no_docker():
        raise AssertionError("a no-op ensure_image must not talk to Docker")

    monkeypatch.setattr(image, "_docker_client", no_docker)
    progress = Progress()
    t0 = time.monotonic()
    ref = ensure_image(built.spec, str(built.root), registry.address, built.repository, progress=progress)
    report("no-op ensure_image (tag + registry HEAD)", time.monotonic() - t0)
    assert ref == built.ref
    assert progress == [f"image {ref}: up to date"]


def test_code_edit_keeps_the_image(built, registry):
    (built.root / "src" / "pipeline.py").write_text("def step():\n    return 3  # edited\n")
    progress = Progress()
    ref = ensure_image(built.spec, str(built.root), registry.address, built.repository, progress=progress)
    assert ref == built.ref and progress == [f"image {ref}: up to date"]


def test_tag_gone_from_registry_is_pushed_again_without_building(built, registry):
    repo_tag = built.ref.partition("/")[2]
    assert registry.delete(built.repository, repo_tag.rpartition(":")[2])
    assert image._registry_has(registry.address, built.repository, repo_tag.rpartition(":")[2], loopback=True) is False
    progress = Progress()
    ref = ensure_image(built.spec, str(built.root), registry.address, built.repository, progress=progress)
    assert ref == built.ref
    assert progress.building() == [] and len(progress.pushing()) == 1
    assert image._registry_has(registry.address, built.repository, repo_tag.rpartition(":")[2], loopback=True) is True


def test_requirements_change_builds_a_new_image(built, registry, images_made):
    old_tag = image_tag(built.spec, str(built.root))
    make_wheel(built.root / "wheels", "bbtinypkg", "0.2", "ANSWER = 'tiny 0.2'\n")
    (built.root / "requirements.txt").write_text("--find-links ./wheels\nbbtinypkg==0.2\n")
    new_tag = image_tag(built.spec, str(built.root))
    assert new_tag != old_tag
    images_made.append(f"{registry.address}/{built.repository}:{new_tag}")
    progress = Progress()
    t0 = time.monotonic()
    ref = ensure_image(built.spec, str(built.root), registry.address, built.repository, progress=progress)
    report("ensure_image after a requirements change (build + push)", time.monotonic() - t0)
    print("\n".join(progress), flush=True)
    assert ref.endswith(f":{new_tag}") and ref != built.ref
    assert len(progress.building()) == 1 and len(progress.pushing()) == 1
    # The steps before the wheelhouse (apt, settings) came from the build cache.
    log = (built.root / ".bb" / "images" / new_tag / "build.log").read_text()
    assert log.count("Using cache") >= 5, log
    assert docker_run(ref, "python", "-c", "import bbtinypkg; print(bbtinypkg.ANSWER)").strip() == "tiny 0.2"
    assert {old_tag, new_tag} <= set(registry.tags(built.repository))
    # The old image is still there, unchanged, for jobs that still name it.
    assert docker_run(built.ref, "python", "-c", "import bbtinypkg; print(bbtinypkg.ANSWER)").strip() == "tiny 0.1"


def test_push_rejected_by_a_read_only_registry(built, images_made, tmp_path):
    from infra import registry as infra_registry

    port = _free_port()
    (tmp_path / "storage").mkdir()
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"  maintenance:\n    readonly:\n      enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen([infra_registry._executable(), "serve", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    reg = infra_registry.Registry(proc, port, tmp_path)
    try:
        assert infra_registry._wait_ready(proc, reg.url, 20), reg.log_text()
        spec = built.spec
        images_made.append(f"{reg.address}/{built.repository}:{image_tag(spec, str(built.root))}")
        with pytest.raises(BBError, match="rejected the push") as err:
            ensure_image(spec, str(built.root), reg.address, built.repository, progress=lambda m: None)
        print("\n" + err.value.render())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_missing_base_image_is_named_with_the_way_to_make_it(tmp_path, docker_client):
    root = make_project(tmp_path / "proj")
    spec = ImageSpec(base=f"bb-test/no-such-base-{RUN_ID}:x", requirements="requirements.txt")
    with pytest.raises(BBError, match="is not in the local Docker store") as err:
        ensure_image(spec, str(root), "local", f"bb-test/env-{RUN_ID}", progress=lambda m: None)
    assert "docker import" in err.value.render()
    (root / "env").mkdir()
    (root / "env" / "Dockerfile").write_text(f"FROM {spec.base} AS first\nFROM first\n")
    with pytest.raises(BBError, match="is not in the local Docker store, and bb never pulls"):
        ensure_image(ImageSpec(base="", dockerfile="env/Dockerfile"), str(root), "local", f"bb-test/env-{RUN_ID}",
                     progress=lambda m: None)


def test_build_error_shows_the_last_lines_of_the_log(tmp_path, base_image, docker_cleanup):
    root = make_project(tmp_path / "proj")
    (root / "env").mkdir()
    (root / "env" / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo 'about to fail' && exit 3\n")
    spec = ImageSpec(base="", dockerfile="env/Dockerfile")
    tag = image_tag(spec, str(root))
    docker_cleanup.image(f"env-{RUN_ID}-user:{tag}")
    with pytest.raises(BBError, match="Building the environment image .* failed") as err:
        ensure_image(spec, str(root), "local", f"bb-test/env-{RUN_ID}", progress=lambda m: None)
    text = err.value.render()
    assert "about to fail" in text and "build.log" in text


def test_user_dockerfile_gets_bb_installed_locally(tmp_path, base_image, docker_cleanup):
    root = make_project(tmp_path / "proj")
    (root / "env").mkdir()
    (root / "env" / "Dockerfile").write_text(
        f"FROM {base_image}\nCOPY marker.txt /etc/bb-marker.txt\nENTRYPOINT [\"/bin/false\"]\n")
    (root / "env" / "marker.txt").write_text("from the user's Dockerfile\n")
    spec = ImageSpec(base="", requirements="requirements.txt", dockerfile="env/Dockerfile")
    repository = f"bb-test/env-{RUN_ID}"
    tag = image_tag(spec, str(root))
    docker_cleanup.image(f"{repository}:{tag}")
    docker_cleanup.image(f"env-{RUN_ID}-user:{tag}")
    progress = Progress()
    t0 = time.monotonic()
    ref = ensure_image(spec, str(root), "local", repository, progress=progress)
    report("cold ensure_image with a user Dockerfile (two builds, no push)", time.monotonic() - t0)
    assert ref == f"{repository}:{tag}"
    assert progress.pushing() == []
    out = docker_run(ref, "sh", "-c",
                     "cat /etc/bb-marker.txt; python -c 'import buildsys, bbtinypkg; print(bbtinypkg.ANSWER)'")
    assert out.split("\n")[:2] == ["from the user's Dockerfile", "tiny 0.1"]
    again = Progress()
    assert ensure_image(spec, str(root), "local", repository, progress=again) == ref
    assert again == [f"image {ref}: up to date"]


def test_ecr_mode_finds_the_tag_without_building(tmp_path, moto_endpoint, monkeypatch):
    """ECR through boto3 (moto here): the repository is created if missing and a
    tag ECR lists is used as it is. moto's ECR is no registry (notes, P21), so a
    push to it is never attempted in the tests."""
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(image, "_docker_client", lambda: pytest.fail("ECR had the tag: Docker is not needed"))
    root = make_project(tmp_path / "proj")
    spec = ImageSpec(base="bb-test/base:x", requirements="requirements.txt")
    tag = image_tag(spec, str(root))
    repository = f"bb-test/ecr-{RUN_ID}"
    ecr = boto3.client("ecr", region_name="us-east-1")
    ecr.create_repository(repositoryName=repository)  # ensure_image must accept an existing repository
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                           "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()}, "layers": []}
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    uri = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]["repositoryUri"]
    progress = Progress()
    ref = ensure_image(spec, str(root), "ecr", repository, region="us-east-1", progress=progress)
    assert ref == f"{uri}:{tag}"
    assert progress == [f"image {ref}: up to date"]
    ecr.delete_repository(repositoryName=repository, force=True)

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    # A repository that does not exist yet is created; the tag is missing, so
    # the next step would be Docker (stopped here: nothing is pushed to moto).
    fresh = f"bb-test/ecr-new-{RUN_ID}"
    monkeypatch.setattr(image, "_docker_client", stop)
    with pytest.raises(Stop):
        ensure_image(spec, str(root), "ecr", fresh, region="us-east-1", progress=lambda m: None)
    assert ecr.describe_repositories(repositoryNames=[fresh])["repositories"][0]["repositoryName"] == fresh
    ecr.delete_repository(repositoryName=fresh, force=True)
