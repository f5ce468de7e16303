"""The environment image remote jobs run in: built from a base image, bb and
the project's requirements, tagged by the hash of what went into it, pushed
only when the registry lacks that tag.

    spec = ImageSpec(base="bb-test/bookworm-py:a408acc89b96", requirements="requirements.txt")
    ref = ensure_image(spec, root, registry="127.0.0.1:15001")   # or "ecr", or "local"

What enters the tag (`image_inputs`): the base reference, the requirements
file's bytes and the bytes of local files and folders it points at (`-r`,
`-c`, `--find-links`, paths, `file:` URLs), the system packages, the user's
Dockerfile and its build context, the platform, bb's version and the digest of
bb's own source (its package folder and build metadata). The project's code
never goes into the image: recipes' code travels as inputs through the store,
so editing code never changes the tag. A base reference is taken as written:
name bases by content (a hash tag or `@sha256:` digest), as a mutable tag that
is rebuilt under the same name would not give a new image tag.

How the image is made:

1. A wheelhouse is made on this machine, in `<root>/.bb/images/<tag>/`:
   `pip wheel -r requirements` first, then bb itself with its dependencies
   constrained to the versions the requirements chose (two steps, so that a
   lock file with `--hash` lines keeps pip's hash checking). When the image's
   Python differs from the one running bb (version, architecture, libc), the
   wheels are fetched for the image instead with `pip download
   --only-binary=:all: --platform ... --python-version ... --abi ...`, and a
   package without a wheel for the image fails with a message that says so.
   The image's Python is asked once per base image id (a throwaway container)
   and remembered in `<root>/.bb/images/probes/`.
2. The image is built with the Docker engine from a generated Dockerfile
   (`render_dockerfile`): FROM the base, the optional `apt-get install` of
   the system packages (this one step needs the base image's apt sources to
   be reachable from the build container; nothing else uses the network),
   PATH/WORKDIR /work/CMD `python -m buildsys.worker` (the base's ENTRYPOINT
   is cleared), the tag's label, the wheelhouse, and one venv at /opt/bb
   installed with `pip --no-index` from the wheelhouse only, checked by
   importing the worker. Nothing is pulled from the internet: the base must
   be in the local Docker store or be named with the registry that keeps it.
   With the user's own Dockerfile, that is built first as given (its folder
   is the build context, after its .dockerignore) into a local
   `<name>-user:<tag>` image, and the same steps follow FROM it.
3. `host:port` registries: pushed there (plain HTTP on loopback, as Docker
   does); `ecr`: the repository is created if missing, the engine logs in
   with ECR's token, and the image goes to the repository's URI; `local`:
   kept in the local Docker store, not pushed. Each push's stream is read to
   the end and any error in it raised: the docker SDK does not raise them.

Builds of one tag in one project take a lock (`.bb/images/<tag>.lock`), so
two bb processes never build the same image twice at once.

docker and boto3 are imported only when an image is built or a registry asked.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import io
import json
import os
import platform as _platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import STATE_DIR, __version__
from ..digest import hash_bytes, hash_file
from ..errors import BBError

# Bump when the generated Dockerfile or the wheelhouse recipe changes: it
# enters every tag.
IMAGE_SCHEMA = 1
VENV = "/opt/bb"
WORKDIR = "/work"
WORKER_COMMAND = ("python", "-m", "buildsys.worker")
LABEL_TAG = "bb.tag"
LABEL_VERSION = "bb.version"
LABEL_STAGE = "bb.stage"
TAG_LENGTH = 32
# A fixed date for the wheels bb builds (bb's own, and sdists), so that the
# same sources give the same wheel bytes and Docker's COPY cache can hit.
SOURCE_DATE_EPOCH = "315532800"
# Files beside bb's package that shape its wheel (they enter the tag).
_BUILD_METADATA = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in")
# Files a build may need but that do not change the code (not in the tag).
_BUILD_EXTRAS = re.compile(r"(README|LICEN[CS]E|COPYING|NOTICE|AUTHORS)(\..*)?", re.I)
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", STATE_DIR, ".tox", ".nox", ".venv", ".mypy_cache",
              ".pytest_cache", "node_modules"}
_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?")
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
_REPOSITORY = re.compile(r"[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*")
_REGISTRY = re.compile(r"(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d+)?|\[[0-9a-fA-F:]+\](:\d+)?)"
                       r"(?P<prefix>(/[a-z0-9]+([._-]+[a-z0-9]+)*)*)")
_DOCKER_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "arm": "armv7l",
                "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class ImageSpec:
    """What the environment image is made of. Paths are relative to the
    project root."""

    base: str                               # base image reference; never pulled from the internet
    requirements: str = ""                  # requirements or lock file (pip -r), or ""
    system_packages: tuple[str, ...] = ()   # Debian packages to apt-get install (needs the apt mirror at build time)
    dockerfile: str = ""                    # the user's own Dockerfile instead of `base` (bb is installed into it)
    platform: str = "linux/amd64"

    def __post_init__(self):
        if isinstance(self.system_packages, str):
            object.__setattr__(self, "system_packages", tuple(self.system_packages.split()))
        else:
            object.__setattr__(self, "system_packages", tuple(self.system_packages))


# ---- the tag ------------------------------------------------------------------------

def image_tag(spec: ImageSpec, root: str) -> str:
    """The hash of everything that goes into the image (see `image_inputs`)."""
    inputs = image_inputs(spec, root)
    return hash_bytes(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode())[:TAG_LENGTH]


def image_inputs(spec: ImageSpec, root: str) -> dict:
    """What the tag is the hash of, as a JSON-able dict: `bb why` material when
    an image is rebuilt. Holds no absolute path of this machine."""
    _check_spec(spec)
    root_path = Path(root).resolve()
    inputs: dict = {
        "schema": IMAGE_SCHEMA,
        "base": spec.base if not spec.dockerfile else "",
        "platform": spec.platform,
        "system_packages": sorted(set(spec.system_packages)),
        "bb": {"version": __version__, "source": _bb_source().digest},
        "requirements": None,
        "dockerfile": None,
    }
    if spec.requirements:
        req = _project_file(root_path, spec.requirements, "requirements file")
        inputs["requirements"] = {"digest": hash_file(str(req)), "local": _requirement_refs(req, root_path)}
    if spec.dockerfile:
        ctx, rel, files = _user_context(spec, root_path)
        inputs["dockerfile"] = {
            "digest": hash_file(str(ctx / rel)),
            "name": rel,
            "context": {f: (hash_file(str(ctx / f)) if (ctx / f).is_file() else "") for f in files},
        }
    return inputs


def _check_spec(spec: ImageSpec) -> None:
    if not spec.dockerfile and not spec.base:
        raise BBError("The environment image has no base image.",
                      hint="Name a local base image (for example one made from Debian packages with "
                           "mmdebstrap and `docker import`), or give your own Dockerfile.")
    if not _PLATFORM.fullmatch(spec.platform or ""):
        raise BBError(f"The image platform '{spec.platform}' is not of the form os/arch, such as linux/amd64.")
    bad = [p for p in spec.system_packages if not _DEBIAN_PACKAGE.fullmatch(p)]
    if bad:
        raise BBError(f"Not a Debian package name: {', '.join(repr(p) for p in bad)}.",
                      hint="System packages are names such as 'libgomp1' or 'curl=7.88.1-10'.")


def _project_file(root: Path, rel: str, what: str) -> Path:
    path = (root / rel) if not os.path.isabs(rel) else Path(rel)
    if not path.is_file():
        raise BBError(f"The {what} '{rel}' of the environment image does not exist (looked for {path}).",
                      hint="Paths in the image settings are relative to the project root.")
    return path


def _tree_digests(top: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath) / name
            if path.is_file():
                out[path.relative_to(top).as_posix()] = hash_file(str(path))
    return out


def _path_digest(path: Path) -> str:
    if path.is_dir():
        return "tree:" + hash_bytes(json.dumps(_tree_digests(path), sort_keys=True).encode())
    return hash_file(str(path))


def _requirement_refs(req: Path, root: Path, _seen: set | None = None) -> dict[str, str]:
    """Digests of the local files and folders a requirements file points at,
    keyed by the text that names them, nested files included. A remote URL or
    a package name adds nothing: only a lock file pins those."""
    seen = _seen if _seen is not None else set()
    if req in seen:
        return {}
    seen.add(req)
    refs: dict[str, str] = {}

    def local(text: str, *, relative_to_file: bool) -> Path | None:
        if "://" in text and not text.startswith("file:"):
            return None
        if text.startswith("file:"):
            text = urllib.request.url2pathname(urllib.parse.urlparse(text).path)
        text = os.path.expanduser(text)
        candidates = [req.parent / text] if relative_to_file else []
        candidates.append(root / text)
        for c in candidates:
            if c.exists():
                return c
        return None

    def note(key: str, text: str, *, relative_to_file: bool, nested: bool = False) -> None:
        path = local(text, relative_to_file=relative_to_file) if text else None
        if path is None:
            return
        refs[key] = _path_digest(path)
        if nested and path.is_file():
            for k, v in _requirement_refs(path.resolve(), root, seen).items():
                refs[f"{key} > {k}"] = v

    text = re.sub(r"\\\n", " ", req.read_text(errors="replace"))
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if not line:
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            i += 1
            option, value = _option(tok)
            if option and value is None:  # the value is the next token
                value = tokens[i] if i < len(tokens) else ""
                i += 1
            if option in ("-r", "-c"):
                note(f"{option} {value}", value, relative_to_file=True, nested=True)
            elif option in ("-f", "-e"):
                note(f"{option} {value}", value, relative_to_file=option == "-f")
            elif tok.startswith("-"):
                continue
            elif tok.startswith(("file:", ".", "/", "~")) or tok.endswith(_ARCHIVES):
                note(tok, tok, relative_to_file=False)
    return refs


_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2")
_OPTIONS = {"-r": "-r", "--requirement": "-r", "-c": "-c", "--constraint": "-c",
            "-f": "-f", "--find-links": "-f", "-e": "-e", "--editable": "-e"}


def _option(tok: str) -> tuple[str, str | None]:
    """A requirements-file option that names a file or folder, as ("-r", value):
    value None when it is the next token; ("", None) for anything else."""
    name, eq, value = tok.partition("=")
    if name.startswith("--"):
        return (_OPTIONS[name], value if eq else None) if name in _OPTIONS else ("", None)
    if tok[:2] in _OPTIONS:
        return _OPTIONS[tok[:2]], (tok[2:] or None)
    return "", None


# ---- bb's own source ---------------------------------------------------------------

@dataclass(frozen=True)
class _BBSource:
    path: Path          # a project folder, or a wheel file
    package: str        # the package folder relative to the project folder ("" for a wheel)
    digest: str


def _is_bb_project(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*["\']buildsys["\']', pyproject.read_text(errors="replace")):
        return True
    setup = folder / "setup.cfg"
    return setup.is_file() and re.search(r"(?m)^name\s*=\s*buildsys\s*$", setup.read_text(errors="replace")) is not None


@functools.lru_cache(maxsize=1)
def _bb_source() -> _BBSource:
    """Where bb's own code comes from, to build the wheel that goes into the
    image: the checkout the running package lives in (an editable or develop
    install), else what the installed distribution's direct_url.json names (a
    local folder or wheel). Found and hashed once per process: the code a
    running bb has loaded does not change under it either."""
    import buildsys

    package_dir = Path(buildsys.__file__).resolve().parent
    for folder in (package_dir.parent, package_dir.parent.parent):
        if _is_bb_project(folder) and (folder / package_dir.relative_to(folder) / "__init__.py").is_file():
            return _dir_source(folder, package_dir.relative_to(folder).as_posix())
    import importlib.metadata as md

    try:
        direct = md.distribution("buildsys").read_text("direct_url.json")
    except md.PackageNotFoundError:
        direct = None
    if direct:
        url = json.loads(direct).get("url", "")
        if url.startswith("file:"):
            path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
            if path.is_file() and path.suffix == ".whl":
                return _BBSource(path, "", hash_file(str(path)))
            if path.is_dir() and _is_bb_project(path):
                for rel in ("buildsys", "src/buildsys"):
                    if (path / rel / "__init__.py").is_file():
                        return _dir_source(path, rel)
    raise BBError("Cannot find bb's own source to put bb into the environment image.",
                  hint="Install bb from a checkout (pip install -e <checkout>) or from a wheel file, "
                       "so that its source can be built into a wheel for the image.")


def _dir_source(folder: Path, package: str) -> _BBSource:
    files = {name: hash_file(str(folder / name)) for name in _BUILD_METADATA if (folder / name).is_file()}
    for rel, digest in _tree_digests(folder / package).items():
        files[f"{package}/{rel}"] = digest
    return _BBSource(folder, package, hash_bytes(json.dumps(files, sort_keys=True).encode()))


def _stage_source(src: _BBSource, dest: Path) -> Path:
    """Copy of the files bb's wheel is built from, so that building it leaves
    no build/ or egg-info in the checkout (symlinks become files)."""
    dest.mkdir(parents=True)
    for entry in src.path.iterdir():
        if entry.is_file() and (entry.name in _BUILD_METADATA or _BUILD_EXTRAS.fullmatch(entry.name)):
            shutil.copy2(entry, dest / entry.name)
    shutil.copytree(src.path / src.package, dest / src.package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


# ---- the user's Dockerfile ---------------------------------------------------------

def _user_context(spec: ImageSpec, root: Path) -> tuple[Path, str, list[str]]:
    """The folder the user's Dockerfile is built in and the files sent with it
    (after .dockerignore): all of them enter the tag, as any may be copied into
    the image."""
    dockerfile = _project_file(root, spec.dockerfile, "Dockerfile")
    ctx = dockerfile.parent
    ignore = ctx / ".dockerignore"
    if ctx == root and not ignore.is_file():
        raise BBError(f"The Dockerfile '{spec.dockerfile}' sits at the project root without a .dockerignore, so "
                      "its build context would be the whole project, and every edit of code or data would "
                      "change the environment image.",
                      hint="Move it into a folder of its own (for example env/Dockerfile), or add a .dockerignore "
                           "beside it that leaves out code and data.")
    patterns = []
    if ignore.is_file():
        lines = (line.strip() for line in ignore.read_text().splitlines())
        patterns = [line for line in lines if line and not line.startswith("#")]
    patterns += [STATE_DIR, ".git"]
    docker = _import_docker()
    rel = dockerfile.relative_to(ctx).as_posix()
    files = sorted(docker.utils.build.exclude_paths(str(ctx), patterns, dockerfile=rel))
    return ctx, rel, files


# ---- the Dockerfile bb generates ---------------------------------------------------

def render_dockerfile(base: str, system_packages=(), tag: str = "") -> str:
    """The Dockerfile of the environment image, FROM `base` (the user's image
    when they give a Dockerfile). With Docker's legacy builder every step is a
    layer commit (seconds each on fuse-overlayfs), and a step's cache is lost
    once a step before it changes, so the steps that do not depend on the
    wheels (apt, the settings) come first and stay cached; the tag's label,
    the wheelhouse and the venv come last."""
    lines = [f"# Generated by bb {__version__}: the environment image{' ' + tag if tag else ''}.", f"FROM {base}"]
    if system_packages:
        lines.append("RUN apt-get update \\\n"
                     " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                     + " ".join(sorted(set(system_packages))) + " \\\n"
                     " && rm -rf /var/lib/apt/lists/*")
    lines += [
        f"ENV PATH={VENV}/bin:$PATH VIRTUAL_ENV={VENV} PYTHONUNBUFFERED=1",
        f"WORKDIR {WORKDIR}",
        "ENTRYPOINT []",
        "CMD " + json.dumps(list(WORKER_COMMAND)),
    ]
    if tag:
        lines.append(f"LABEL {LABEL_TAG}={tag} {LABEL_VERSION}={__version__}")
    lines += [
        "COPY wheelhouse /wheelhouse",
        # python3 is still the base's here: /opt/bb/bin, first on PATH, does not exist yet.
        f"RUN python3 -m venv {VENV} \\\n"
        f" && {VENV}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check"
        f" --find-links /wheelhouse /wheelhouse/*.whl \\\n"
        f" && {VENV}/bin/python -c 'import {WORKER_COMMAND[2]}' \\\n"
        " && rm -rf /wheelhouse",
    ]
    return "\n".join(lines) + "\n"


# ---- ensure_image -------------------------------------------------------------------

def ensure_image(spec: ImageSpec, root: str, registry: str, repository: str = "bb-env", *,
                 region: str = "", progress=print) -> str:
    """The full reference jobs should run, building and pushing the image only
    when the registry lacks its tag.

    registry: "host:port[/prefix]" (a plain distribution registry, asked over
    its HTTP API), "ecr" (the account's ECR through boto3; `region`, else
    boto3's default), or "local"/"" (the local Docker store, no push)."""
    root_path = Path(root).resolve()
    if not _REPOSITORY.fullmatch(repository or ""):
        raise BBError(f"The image repository name '{repository}' is not valid: use lower-case letters, digits, "
                      "'.', '_', '-' and '/'.")
    tag = image_tag(spec, root_path)
    mode = (registry or "").strip()
    if mode in ("", "local"):
        target: _Target = _Local(repository)
    elif mode == "ecr":
        target = _Ecr(repository, region)
    else:
        target = _Registry(mode, repository)
    ref = target.reference(tag)
    if target.has(tag):
        progress(f"image {ref}: up to date")
        return ref
    state = root_path / STATE_DIR / "images"
    state.mkdir(parents=True, exist_ok=True)
    with _locked(state / f"{tag}.lock"):
        if target.has(tag):  # another bb made it while we waited
            progress(f"image {ref}: up to date")
            return ref
        client = _docker_client()
        if _local_image(client, ref, tag) is None:
            _build(client, spec, root_path, tag, ref, state, progress)
        target.push(client, ref, tag, progress)
    return ref


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Target:
    def reference(self, tag: str) -> str:
        raise NotImplementedError

    def has(self, tag: str) -> bool:
        raise NotImplementedError

    def push(self, client, ref: str, tag: str, progress) -> None:
        raise NotImplementedError


class _Local(_Target):
    def __init__(self, repository: str):
        self.repository = repository

    def reference(self, tag):
        return f"{self.repository}:{tag}"

    def has(self, tag):
        return _local_image(_docker_client(), self.reference(tag), tag) is not None

    def push(self, client, ref, tag, progress):
        pass


class _Registry(_Target):
    """A distribution (v2) registry at host:port, such as a loopback one."""

    def __init__(self, address: str, repository: str):
        if "://" in address:
            raise BBError(f"Write the registry as host:port, without a scheme: '{address}'.")
        m = _REGISTRY.fullmatch(address)
        if not m:
            raise BBError(f"The registry '{address}' is not 'ecr', 'local' or a host:port address.")
        self.host = m["host"]
        self.path = (m["prefix"].strip("/") + "/" if m["prefix"] else "") + repository
        hostname = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host[1:].split("]")[0]
        self.loopback = hostname in ("localhost", "::1") or hostname.startswith("127.")

    def reference(self, tag):
        return f"{self.host}/{self.path}:{tag}"

    def has(self, tag):
        found = _registry_has(self.host, self.path, tag, loopback=self.loopback)
        if found is None:  # the registry wants a login: ask through the engine, which has the user's
            return _engine_has(_docker_client(), self.reference(tag))
        return found

    def push(self, client, ref, tag, progress):
        _push(client, ref, None, progress)
        if _registry_has(self.host, self.path, tag, loopback=self.loopback) is False:
            raise BBError(f"The registry {self.host} accepted the push of {ref} but does not list it.",
                          hint="Check the registry's storage and logs.")


class _Ecr(_Target):
    """The account's ECR, through boto3 (region and credentials as boto3 finds them)."""

    def __init__(self, repository: str, region: str):
        boto3, botocore = _import_boto3()
        self.repository = repository
        try:
            self.ecr = boto3.client("ecr", region_name=region or None)
            try:  # describe first: once the repository exists, no ecr:CreateRepository permission is needed
                repo = self.ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
            except botocore.exceptions.ClientError as e:
                if _aws_code(e) != "RepositoryNotFoundException":
                    raise
                try:
                    repo = self.ecr.create_repository(repositoryName=repository)["repository"]
                except botocore.exceptions.ClientError as e2:
                    if _aws_code(e2) != "RepositoryAlreadyExistsException":  # made meanwhile by another bb
                        raise
                    repo = self.ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
        except botocore.exceptions.BotoCoreError as e:
            raise BBError(f"ECR cannot be reached to hold the environment image: {e}",
                          hint="Set the region (registry region setting or AWS_DEFAULT_REGION) and credentials.") from e
        except botocore.exceptions.ClientError as e:
            raise BBError(f"ECR refused to create or describe the repository '{repository}': {e}") from e
        self.uri = repo["repositoryUri"]

    def reference(self, tag):
        return f"{self.uri}:{tag}"

    def has(self, tag):
        _, botocore = _import_boto3()
        try:
            images = self.ecr.describe_images(repositoryName=self.repository, imageIds=[{"imageTag": tag}])
        except botocore.exceptions.ClientError as e:
            if _aws_code(e) == "ImageNotFoundException":
                return False
            raise BBError(f"ECR could not be asked for the image {self.reference(tag)}: {e}") from e
        except botocore.exceptions.BotoCoreError as e:
            raise BBError(f"ECR could not be asked for the image {self.reference(tag)}: {e}") from e
        return bool(images.get("imageDetails"))

    def push(self, client, ref, tag, progress):
        _, botocore = _import_boto3()
        docker = _import_docker()
        try:
            data = self.ecr.get_authorization_token()["authorizationData"][0]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise BBError(f"ECR gave no login token to push {ref}: {e}") from e
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        endpoint = data["proxyEndpoint"]
        try:
            client.login(username=username, password=password, registry=endpoint, reauth=True)
        except docker.errors.APIError as e:
            raise BBError(f"The Docker engine could not log in to ECR at {endpoint}: {_api_text(e)}",
                          hint="Check the credentials' ecr:GetAuthorizationToken and push permissions.") from e
        _push(client, ref, {"username": username, "password": password}, progress)


def _aws_code(error) -> str:
    return error.response.get("Error", {}).get("Code", "")


# ---- registries -------------------------------------------------------------------

def _registry_has(host: str, path: str, tag: str, *, loopback: bool) -> bool | None:
    """Whether a v2 registry holds the tag: True, False, or None when it wants
    a login. Loopback registries speak plain HTTP (Docker's default insecure
    range); others HTTPS, then HTTP as Docker does for insecure registries."""
    handlers = [urllib.request.ProxyHandler({})] if loopback else []
    opener = urllib.request.build_opener(*handlers)
    url_path = f"/v2/{path}/manifests/{urllib.parse.quote(tag)}"
    last = None
    for scheme in (("http",) if loopback else ("https", "http")):
        req = urllib.request.Request(f"{scheme}://{host}{url_path}", method="HEAD",
                                     headers={"Accept": ", ".join(_MANIFEST_TYPES)})
        try:
            with opener.open(req, timeout=15):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            if e.code == 401:
                return None
            raise BBError(f"The registry {host} answered {e.code} {e.reason} when asked for {path}:{tag}.",
                          hint="Check that it is a Docker distribution (v2) registry and that the repository "
                               "name is allowed.") from e
        except (urllib.error.URLError, OSError) as e:
            last = e
            continue
    reason = getattr(last, "reason", last)
    raise BBError(f"The registry {host} does not answer ({reason}).",
                  hint="Start it, or check the registry setting; 'local' keeps the image in the local Docker "
                       "store without a registry.")


def _engine_has(client, ref: str) -> bool:
    docker = _import_docker()
    try:
        client.api.inspect_distribution(ref)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as e:
        text = _api_text(e)
        if "manifest unknown" in text or "not found" in text.lower():
            return False
        raise BBError(f"The registry of {ref} wants a login the Docker engine does not have: {text}",
                      hint="Log in with `docker login` to that registry.") from e


def _push(client, ref: str, auth_config, progress) -> str:
    docker = _import_docker()
    repo, tag = _split_ref(ref)
    progress(f"image {ref}: pushing")
    t0 = time.monotonic()
    sent = existed = 0
    digest = ""
    try:
        for item in client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth_config):
            if item.get("error") or item.get("errorDetail"):
                message = item.get("error") or item["errorDetail"].get("message", "")
                raise BBError(f"The registry rejected the push of {ref}: {message.strip()}",
                              hint="Check that the registry is writable and that this machine may push to it.")
            status = item.get("status", "")
            if status == "Pushed":
                sent += 1
            elif status == "Layer already exists":
                existed += 1
            digest = (item.get("aux") or {}).get("Digest", digest)
    except docker.errors.APIError as e:
        raise BBError(f"The push of {ref} failed: {_api_text(e)}") from e
    progress(f"image {ref}: pushed in {time.monotonic() - t0:.1f} s ({sent} layers sent, {existed} already there)")
    return digest


def _split_ref(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        return ref, "latest"
    return repo, tag


# ---- Docker -----------------------------------------------------------------------

def _import_docker():
    try:
        import docker
        import docker.utils.build  # noqa: F401 - exclude_paths, create_archive
    except ImportError as e:
        raise BBError("The docker Python package is missing; bb needs it to build the environment image.",
                      hint="pip install docker") from e
    return docker


def _import_boto3():
    try:
        import boto3
        import botocore.exceptions
    except ImportError as e:
        raise BBError("boto3 is missing; bb needs it for ECR.", hint="pip install boto3") from e
    return boto3, botocore


_CLIENT = None


def _docker_client():
    """One client per process. Long reads: a silent pip step may take minutes."""
    global _CLIENT
    if _CLIENT is not None:
        return _CLIENT
    docker = _import_docker()
    try:
        client = docker.from_env(timeout=3600)
        client.ping()
    except Exception as e:  # noqa: BLE001 - whatever the cause, the engine is not there
        raise BBError(f"The Docker engine does not answer ({e}).",
                      hint="bb builds the environment image with Docker: start the engine (dockerd), or set "
                           "DOCKER_HOST to it.") from e
    _CLIENT = client
    return client


def _api_text(e) -> str:
    return str(getattr(e, "explanation", None) or e).strip()


def _local_image(client, ref: str, tag: str | None = None) -> dict | None:
    """The local image `ref`, or None; with `tag`, only one bb built for that tag."""
    docker = _import_docker()
    try:
        info = client.api.inspect_image(ref)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as e:
        raise BBError(f"The Docker engine could not inspect {ref}: {_api_text(e)}") from e
    if tag is not None and ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_TAG) != tag:
        return None
    return info


def _has_registry_host(ref: str) -> bool:
    first, slash, _ = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def _ensure_base(client, base: str, progress) -> None:
    """The base must be local; a base named with its registry is pulled from
    there, a bare name never (it would mean Docker Hub)."""
    if _local_image(client, base) is not None:
        return
    if not _has_registry_host(base):
        raise BBError(f"The base image '{base}' is not in the local Docker store, and bb never pulls a name "
                      "without a registry host (that would go to Docker Hub).",
                      hint="Build it first (for example a Debian rootfs made with mmdebstrap, loaded with "
                           "`docker import rootfs.tar NAME:TAG`), `docker load` it, or name it with the "
                           "registry that holds it (host:port/name:tag).")
    docker = _import_docker()
    repo, tag = _split_ref(base)
    progress(f"image base {base}: pulling")
    try:
        for item in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if item.get("error"):
                raise BBError(f"The base image '{base}' could not be pulled: {item['error']}",
                              hint="Push it to that registry first, or build it locally.")
    except docker.errors.APIError as e:
        raise BBError(f"The base image '{base}' could not be pulled: {_api_text(e)}",
                      hint="Push it to that registry first, or build it locally.") from e


def _dockerfile_parents(text: str) -> list[str]:
    """The images a Dockerfile's FROM lines name, leaving out `scratch`, its own
    stages and names built from ARGs (those the engine resolves, and pulls if
    it must)."""
    parents, stages = [], set()
    for m in re.finditer(r"(?im)^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", text):
        name, alias = m[1], m[2]
        if name.lower() != "scratch" and name.lower() not in stages and "$" not in name:
            parents.append(name)
        if alias:
            stages.add(alias.lower())
    return parents


def _build(client, spec: ImageSpec, root: Path, tag: str, ref: str, state: Path, progress) -> None:
    work = state / tag
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    log.write_text("")
    t0 = time.monotonic()
    if spec.dockerfile:
        ctx, rel, files = _user_context(spec, root)
        base = f"{_split_ref(ref)[0].rsplit('/', 1)[-1]}-user:{tag}"
        if _local_image(client, base, tag) is None:
            for parent in _dockerfile_parents((ctx / rel).read_text(errors="replace")):
                _ensure_base(client, parent, progress)
            progress(f"image {ref}: building {spec.dockerfile} as {base}")
            docker = _import_docker()
            with docker.utils.build.create_archive(root=str(ctx), files=files) as context:
                _run_build(client, context, rel, base, spec.platform, {LABEL_TAG: tag}, log, progress)
    else:
        base = spec.base
        _ensure_base(client, base, progress)
    progress(f"image {ref}: building from {base}")
    probe = _probe(client, base, spec.platform, state / "probes")
    wheelhouse = _make_wheelhouse(spec, root, probe, work, progress)
    dockerfile = render_dockerfile(base, spec.system_packages, tag)
    (work / "Dockerfile").write_text(dockerfile)
    with _context_tar(dockerfile, wheelhouse) as context:
        _run_build(client, context, "Dockerfile", ref, spec.platform, None, log, progress)
    progress(f"image {ref}: built in {time.monotonic() - t0:.1f} s")


def _context_tar(dockerfile: str, wheelhouse: Path):
    """The build context: the Dockerfile and the wheelhouse, with fixed times
    and owners so the same wheels give the same COPY layer."""
    f = tempfile.TemporaryFile()

    def info(name: str, size: int = 0, *, folder: bool = False) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        ti.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
        ti.mode = 0o755 if folder else 0o644
        ti.size = size
        return ti

    with tarfile.open(fileobj=f, mode="w") as tar:
        data = dockerfile.encode()
        tar.addfile(info("Dockerfile", len(data)), io.BytesIO(data))
        tar.addfile(info("wheelhouse", folder=True))
        for wheel in sorted(wheelhouse.iterdir()):
            with open(wheel, "rb") as src:
                tar.addfile(info(f"wheelhouse/{wheel.name}", wheel.stat().st_size), src)
    f.seek(0)
    return f


def _run_build(client, context, dockerfile: str, ref: str, platform: str, labels: dict | None, log: Path,
               progress) -> str:
    """One `docker build` through the engine API (the legacy builder: its cache
    is the local intermediate images), its log streamed to `log`; Step lines
    go to progress. Raises BBError with the log's last lines on a failure."""
    docker = _import_docker()
    tail: list[str] = []
    error = ""
    image_id = ""
    try:
        stream = client.api.build(fileobj=context, custom_context=True, dockerfile=dockerfile, tag=ref, rm=True,
                                  forcerm=True, pull=False, platform=platform, labels=labels, decode=True)
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"=== docker build {ref} (platform {platform})\n")
            for item in stream:
                text = item.get("stream") or ""
                if "status" in item:
                    text = f"{item['status']} {item.get('progress', '')}".rstrip() + "\n"
                if text:
                    out.write(text)
                    for line in text.splitlines():
                        if line.strip():
                            tail.append(line.rstrip())
                        if line.startswith("Step "):
                            progress(f"  {line.strip()}")
                    del tail[:-30]
                if item.get("error") or item.get("errorDetail"):
                    error = item.get("error") or item["errorDetail"].get("message", "")
                    out.write(f"ERROR: {error}\n")
                image_id = (item.get("aux") or {}).get("ID", image_id)
    except docker.errors.APIError as e:
        error = _api_text(e)
    if error:
        raise BBError(f"Building the environment image {ref} failed: {error.strip()}",
                      hint=f"The whole build log is in {log}.",
                      detail="Last lines of the build log:\n" + "\n".join("  " + line for line in tail[-20:]))
    return image_id


# ---- the image's Python ------------------------------------------------------------

_PROBE = ("import importlib.util as u, json, platform, sys, sysconfig; print(json.dumps({"
          "'implementation': sys.implementation.name, 'version': list(sys.version_info[:2]),"
          "'soabi': sysconfig.get_config_var('SOABI') or '', 'machine': platform.machine(),"
          "'libc': list(platform.libc_ver()), 'venv': u.find_spec('venv') is not None,"
          "'ensurepip': u.find_spec('ensurepip') is not None}))")


def _host_python() -> dict:
    return {"implementation": sys.implementation.name, "version": list(sys.version_info[:2]),
            "soabi": sysconfig.get_config_var("SOABI") or "", "machine": _platform.machine(),
            "libc": list(_platform.libc_ver())}


def _probe(client, image: str, platform: str, cache: Path) -> dict:
    """The Python of `image` (version, ABI, machine, libc, venv), asked once per
    image id in a throwaway container without network."""
    docker = _import_docker()
    info = _local_image(client, image)
    image_id = (info or {}).get("Id", "").replace(":", "-")
    path = cache / f"{image_id}-{platform.replace('/', '-')}.json"
    if image_id and path.is_file():
        return json.loads(path.read_text())
    try:
        out = client.containers.run(image, entrypoint=["python3", "-c", _PROBE], remove=True, platform=platform,
                                    network_disabled=True, labels={LABEL_STAGE: "probe"})
        found = json.loads(out.decode().strip().splitlines()[-1])
    except docker.errors.ContainerError as e:
        raise BBError(f"The image {image} has no working python3 (running it exited {e.exit_status}).",
                      hint="bb installs itself into a venv made by the image's python3: use a base with "
                           "python3 and python3-venv.") from e
    except docker.errors.APIError as e:
        raise BBError(f"The image {image} could not be started for platform {platform}: {_api_text(e)}",
                      hint="A platform other than this machine's needs emulation (binfmt/qemu) in the engine.") from e
    except (ValueError, IndexError) as e:
        raise BBError(f"The image {image}'s python3 did not describe itself: {e}") from e
    if not (found.get("venv") and found.get("ensurepip")):
        raise BBError(f"The image {image}'s Python {'.'.join(map(str, found['version']))} cannot make a venv "
                      "(no venv or ensurepip module).",
                      hint="On Debian and Ubuntu install python3-venv into the base image.")
    cache.mkdir(parents=True, exist_ok=True)
    if image_id:
        path.write_text(json.dumps(found))
    return found


def _wheels_fit(host: dict, image: dict) -> bool:
    """Whether wheels pip picks for this Python install in the image's: same
    interpreter and version, machine and libc, and the image's libc not older."""
    def ver(v: str) -> tuple:
        return tuple(int(x) for x in re.findall(r"\d+", v)[:2])

    return (host["implementation"] == image["implementation"] and list(host["version"]) == list(image["version"])
            and host["machine"] == image["machine"] and host["libc"][0] == image["libc"][0]
            and ver(image["libc"][1] or "0") >= ver(host["libc"][1] or "0"))


def target_flags(image: dict) -> list[str]:
    """pip download options that fetch wheels for the image's Python instead of
    this one's: binary only, for its version, ABI and platform tags."""
    if image["implementation"] != "cpython":
        raise BBError(f"The image's Python is {image['implementation']}, not the one running bb, and bb can fetch "
                      "wheels for another Python only for CPython.",
                      hint="Use a base image whose Python matches the one running bb.")
    major, minor = image["version"]
    machine = image["machine"]
    kind, libc_version = image["libc"][0], image["libc"][1]
    nums = [int(x) for x in re.findall(r"\d+", libc_version)[:2]]
    platforms = []
    if kind == "glibc" and len(nums) == 2:
        platforms += [f"manylinux_{nums[0]}_{m}_{machine}" for m in range(nums[1], 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        platforms += [f"{name}_{machine}" for m, name in legacy.items() if m <= nums[1]]
    elif nums:
        platforms += [f"musllinux_{nums[0]}_{m}_{machine}" for m in range(nums[1] if len(nums) > 1 else 0, -1, -1)]
    if not platforms:
        raise BBError(f"Cannot tell which wheels fit the image (libc {kind or 'unknown'} {libc_version}).",
                      hint="Use a base image whose Python matches the one running bb.")
    flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", f"{major}.{minor}",
             "--abi", f"cp{major}{minor}"]
    for p in platforms:
        flags += ["--platform", p]
    return flags


# ---- the wheelhouse ---------------------------------------------------------------

def _make_wheelhouse(spec: ImageSpec, root: Path, image: dict, work: Path, progress) -> Path:
    """<work>/wheelhouse: wheels of the requirements, then of bb with its
    dependencies held to the versions the requirements chose. Made in a
    scratch folder and renamed, so a folder that exists is complete."""
    dest = work / "wheelhouse"
    if dest.is_dir():
        return dest
    scratch = work / f"wheelhouse.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    log = work / "wheelhouse.log"
    log.write_text("")
    t0 = time.monotonic()
    fit = _wheels_fit(_host_python(), image)
    flags = [] if fit else target_flags(image)
    if not fit:
        here = f"{sys.version_info[0]}.{sys.version_info[1]} on {_platform.machine()}"
        progress(f"  wheels for the image's Python {'.'.join(map(str, image['version']))} on {image['machine']} "
                 f"(binary only): this machine runs {here}")
    src = _bb_source()
    with tempfile.TemporaryDirectory(prefix="bb-wheel-") as tmp:
        bb = str(src.path) if not src.package else str(_stage_source(src, Path(tmp) / "src"))
        if spec.requirements:
            req = str(_project_file(root, spec.requirements, "requirements file"))
            if fit:
                _pip(["wheel", "--wheel-dir", str(scratch), "-r", req], root, log, "the requirements")
            else:
                _pip(["download", "--dest", str(scratch), *flags, "-r", req], root, log, "the requirements",
                     cross=image)
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in _wheel_versions(scratch)))
        held = ["--find-links", str(scratch), "-c", str(constraints)]
        if fit:
            _pip(["wheel", "--wheel-dir", str(scratch), *held, bb], root, log, "bb and its dependencies")
        else:
            if src.package:
                own = Path(tmp) / "own"
                _pip(["wheel", "--no-deps", "--wheel-dir", str(own), bb], root, log, "bb")
                bb = str(next(own.glob("*.whl")))
            _pip(["download", "--dest", str(scratch), *flags, *held, bb], root, log, "bb's dependencies", cross=image)
            if not (scratch / Path(bb).name).exists():
                shutil.copy2(bb, scratch / Path(bb).name)
    for extra in list(scratch.iterdir()):
        if not extra.name.endswith(".whl"):  # pip download keeps sdists only when told; never ship them
            extra.unlink() if extra.is_file() else shutil.rmtree(extra)
    os.replace(scratch, dest)
    wheels = list(dest.iterdir())
    size = sum(w.stat().st_size for w in wheels)
    progress(f"  wheelhouse: {len(wheels)} wheels, {size / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s")
    return dest


def _wheel_versions(folder: Path) -> list[tuple[str, str]]:
    out = []
    for wheel in sorted(folder.glob("*.whl")):
        parts = wheel.name[:-4].split("-")
        if len(parts) >= 5:
            out.append((parts[0].replace("_", "-").lower(), parts[1]))
    return out


def _pip(args: list[str], cwd: Path, log: Path, what: str, *, cross: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    with open(log, "ab") as out:
        out.write(("$ " + shlex.join(cmd) + "\n").encode())
        out.flush()
        try:
            rc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env).returncode
        except OSError as e:
            raise BBError(f"pip could not be started to make the image's wheels: {e}") from e
    if rc == 0:
        return
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-15:]
    hint = f"The whole pip log is in {log}."
    if cross:
        hint = (f"The image's Python ({'.'.join(map(str, cross['version']))}, {cross['machine']}, "
                f"{' '.join(cross['libc'])}) is not the one running bb, so only published wheels for it can be "
                "used, and one is missing. Use a base image whose Python matches this machine's, or pin "
                "versions that publish such wheels. " + hint)
    raise BBError(f"pip failed to make the wheels of {what} for the environment image (exit {rc}).", hint=hint,
                  detail="Last lines of pip's output:\n" + "\n".join("  " + line for line in lines))
