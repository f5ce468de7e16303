"""The base image for remote (Batch) job containers, built from Debian packages.

No container registry can be pulled from on the machines this project is
developed and tested on, so the image is made here: mmdebstrap builds a
bookworm rootfs (python3, python3-venv, ca-certificates) from the machine's
own apt sources, and `docker import` turns it into an image.

    ensure_base_image() -> "bb-test/bookworm-py:<hash>"

The tag is a short hash of everything that goes into the image (packages,
suite, variant, apt options, the bytes of the apt sources file and VERSION
below), so a changed input gives a new tag and an existing tag is reused at
once. The rootfs tar is made in a scratch folder under the cache folder
($BB_TEST_CACHE, else $XDG_CACHE_HOME/bb-test, else ~/.cache/bb-test) and
deleted after the import.

As a command: `python3 tests/infra/base_image.py` builds the image if needed
and prints its reference (`--rebuild` builds it again even if it exists).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Bump when the way the image is made changes (it enters the tag).
VERSION = 1

REPOSITORY = "bb-test/bookworm-py"
LABEL = "bb-test"
LABEL_VALUE = "base"
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Snapshot mirrors carry old Release dates; mmdebstrap does not read the
# host's apt.conf.d, so these are passed explicitly (notes, P22).
APT_OPTS = ('Acquire::Check-Valid-Until "false"', 'Acquire::Check-Date "false"')
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BaseImageError(RuntimeError):
    """The base image could not be built; the message says what to do."""


def cache_dir() -> Path:
    if os.environ.get("BB_TEST_CACHE"):
        return Path(os.environ["BB_TEST_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "bb-test"


def sources_file() -> Path:
    """The machine's own apt sources: the file mmdebstrap is given as MIRROR.

    $BB_TEST_APT_SOURCES overrides; else debian.sources, else the first
    deb822 *.sources file, else /etc/apt/sources.list."""
    override = os.environ.get("BB_TEST_APT_SOURCES")
    if override:
        path = Path(override)
        if not path.is_file():
            raise BaseImageError(f"BB_TEST_APT_SOURCES={override}: no such file")
        return path
    d = Path("/etc/apt/sources.list.d")
    candidates = sorted(d.glob("*.sources")) if d.is_dir() else []
    preferred = [p for p in candidates if p.name == "debian.sources"]
    for path in preferred + candidates:
        if path.is_file() and path.stat().st_size:
            return path
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file() and legacy.stat().st_size:
        return legacy
    raise BaseImageError("no apt sources file found (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); "
                         "set BB_TEST_APT_SOURCES to one")


def inputs_hash(sources: Path | None = None) -> str:
    sources = sources or sources_file()
    spec = {
        "version": VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": sorted(PACKAGES),
        "apt_opts": list(APT_OPTS),
        "path": PATH_ENV,
        "sources_sha256": hashlib.sha256(sources.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def image_ref(sources: Path | None = None) -> str:
    return f"{REPOSITORY}:{inputs_hash(sources)}"


def _docker_client():
    try:
        import docker
    except ImportError as e:
        raise BaseImageError("the docker SDK is missing: pip install -e '.[test]'") from e
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means: no engine
        raise BaseImageError(f"the Docker engine does not answer ({e}); start dockerd") from e
    return client


def _exists(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _log(msg: str) -> None:
    print(f"[base_image] {msg}", file=sys.stderr, flush=True)


def _build_rootfs(sources: Path, tar: Path, tmp: Path, log: Path) -> None:
    exe = shutil.which("mmdebstrap")
    if not exe:
        raise BaseImageError("mmdebstrap is not installed: apt-get install -y mmdebstrap")
    cmd = [exe, f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES)]
    cmd += [f"--aptopt={opt}" for opt in APT_OPTS]
    cmd += [SUITE, str(tar), str(sources)]
    env = dict(os.environ, TMPDIR=str(tmp))
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not tar.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise BaseImageError(f"mmdebstrap exited {rc} (command: {' '.join(cmd)}); last output:\n{tail}")


def _import(client, tar: Path, ref: str) -> str:
    repository, tag = ref.rsplit(":", 1)
    changes = [
        f"ENV PATH={PATH_ENV}",
        'CMD ["/bin/bash"]',
        f"LABEL {LABEL}={LABEL_VALUE}",
    ]
    if not tar.is_file():  # the SDK would take a missing path for a URL
        raise BaseImageError(f"rootfs tar {tar} is missing")
    out = client.api.import_image(src=str(tar), repository=repository, tag=tag, changes=changes)
    for line in str(out).splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("error"):
            raise BaseImageError(f"docker import failed: {item['error']}")
    image = client.images.get(ref)
    if image.labels.get(LABEL) != LABEL_VALUE:
        raise BaseImageError(f"imported {ref} but it lacks the label {LABEL}={LABEL_VALUE}")
    return image.id


def ensure_base_image(*, rebuild: bool = False) -> str:
    """Return the reference of the base image, building it if it is missing.

    Reuses an existing image with the same tag (well under a second). A build
    takes about two minutes; concurrent callers wait on a lock file rather than
    building twice."""
    sources = sources_file()
    ref = image_ref(sources)
    client = _docker_client()
    if not rebuild and _exists(client, ref):
        return ref

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild and _exists(client, ref):  # someone else built it meanwhile
            return ref
        scratch = cache / f"base-image-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "tmp").mkdir(parents=True)
        try:
            tar = scratch / "rootfs.tar"
            t0 = time.monotonic()
            _log(f"building {ref}: mmdebstrap {SUITE} ({', '.join(PACKAGES)}) from {sources} ...")
            _build_rootfs(sources, tar, scratch / "tmp", scratch / "mmdebstrap.log")
            t1 = time.monotonic()
            _log(f"rootfs {tar.stat().st_size / 1e6:.0f} MB in {t1 - t0:.1f} s; docker import ...")
            image_id = _import(client, tar, ref)
            _log(f"imported {ref} ({image_id[:19]}) in {time.monotonic() - t1:.1f} s")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return ref


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build again even if the image exists")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        ref = ensure_base_image(rebuild=args.rebuild)
    except BaseImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _log(f"ready in {time.monotonic() - t0:.1f} s")
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
