"""The settings block: where the store lives and how remote work is done.

Validated here, when the Batchfile is read, so a typo fails before any work.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from buildsys.errors import BatchfileError, did_you_mean
from buildsys.lang.model import Setting


def _string(value, where, name):
    if isinstance(value, tuple):
        raise BatchfileError(f"setting '{name}' takes one value, not a list.", where=where)
    return value


def _words(pattern: str, what: str):
    """A validator of a list of words (or one string of them), each matching `pattern`."""

    def check(value, where, name):
        items = value if isinstance(value, tuple) else tuple(value.split())
        for item in items:
            if not re.fullmatch(pattern, item):
                raise BatchfileError(f"setting '{name}': '{item}' is not {what}.", where=where)
        return items

    return check


_names = _words(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name")
_packages = _words(r"[a-z0-9][a-z0-9+.\-]*(=[A-Za-z0-9.+~:\-]+)?", "a Debian package name")


def _cache_url(value, where, name):
    value = _string(value, where, name)
    if value and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", value):
        raise BatchfileError(
            f"setting '{name}': '{value}' is not a shared cache location.",
            where=where,
            hint="Write it as s3://bucket/prefix (bucket names are lowercase letters, digits, '.' and '-').",
        )
    return value


def _choice(options: tuple[str, ...], what: str, hint: str):
    """A validator of one value among `options`."""

    def check(value, where, name):
        value = _string(value, where, name)
        if value not in options:
            raise BatchfileError(f"setting '{name}': '{value}' is not {what}.", where=where, hint=hint)
        return value

    return check


_cache_mode = _choice(("read-write", "read-only"), "a cache mode", "Use read-write or read-only.")
_executor = _choice(("batch", "docker"), "a remote executor", "Use batch (AWS Batch) or docker (this machine's Docker Engine).")


def _region(value, where, name):
    value = _string(value, where, name)
    if value and not re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d", value):
        raise BatchfileError(f"setting '{name}': '{value}' is not an AWS region (such as us-east-1).", where=where)
    return value


def _positive_int(value, where, name):
    value = _string(value, where, name)
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < 1:
        raise BatchfileError(f"setting '{name}': '{value}' is not a positive whole number.", where=where)
    return int(value)


def _platform(value, where, name):
    value = _string(value, where, name)
    if not re.fullmatch(r"linux/(amd64|arm64|arm/v7|386|ppc64le|s390x)", value):
        raise BatchfileError(f"setting '{name}': '{value}' is not a platform such as linux/amd64 or linux/arm64.", where=where)
    return value


def _duration(value, where, name):
    from buildsys import units

    value = _string(value, where, name)
    seconds = units.duration(value, "smhd", bare=True)
    if seconds is None or seconds <= 0:
        raise BatchfileError(f"setting '{name}': '{value}' is not a duration such as 30m or 2h.", where=where)
    return seconds


KNOWN = {
    "store": _string,  # local store folder (default .bb)
    "cache": _cache_url,  # shared cache, such as s3://bucket/prefix
    "cache_mode": _cache_mode,  # read-write (default) or read-only: use the shared cache but never write to it
    "endpoint": _string,  # S3-compatible endpoint URL (else AWS_ENDPOINT_URL or AWS itself)
    "image": _string,  # the base image remote work runs in (bb builds the environment image from it)
    "requirements": _string,  # requirements or lock file; its digest enters every key
    "registry": _string,  # container registry to push the image to
    "queue": _string,  # AWS Batch job queue
    "job_role": _string,  # IAM role ARN the remote jobs run as (their only credentials)
    "platform": _platform,  # the environment image's platform (default linux/amd64)
    "dockerfile": _string,  # your own Dockerfile for the environment image (bb is added to it)
    "system_packages": _packages,  # Debian packages installed in the environment image
    "executor": _executor,  # where --remote sends work: batch (default) or docker
    "runnable_timeout": _duration,  # a remote job waiting this long for a machine is reported, not waited on
    "region": _region,  # AWS region
    "env": _names,  # environment variables every recipe sees (they enter the keys)
    "secrets": _names,  # environment variables every recipe sees, never keyed nor stored
    "shell": _string,  # shell that runs recipes (default /bin/sh)
    "jobs": _positive_int,  # default for -j
}


@dataclass(frozen=True)
class Settings:
    """The settings block, checked, defaults filled in."""

    store: str = ""
    cache: str = ""
    cache_mode: str = "read-write"
    endpoint: str = ""
    image: str = ""
    requirements: str = ""
    registry: str = ""
    queue: str = ""
    job_role: str = ""
    platform: str = "linux/amd64"
    dockerfile: str = ""
    system_packages: tuple[str, ...] = field(default=())
    executor: str = "batch"
    runnable_timeout: float = 1800.0
    region: str = ""
    env: tuple[str, ...] = field(default=())
    secrets: tuple[str, ...] = field(default=())
    shell: str = "/bin/sh"
    jobs: int = 0


def resolve(settings: tuple[Setting, ...], expand) -> Settings:
    """Validate settings; `expand` interpolates variables in their values."""
    values, where = {}, {}
    for s in settings:
        if s.name not in KNOWN:
            raise BatchfileError(
                f"unknown setting '{s.name}'.",
                where=s.location,
                hint=did_you_mean(s.name, KNOWN) or "Known settings: " + ", ".join(KNOWN) + ".",
            )
        raw = tuple(expand(v, s.location) for v in s.value) if isinstance(s.value, tuple) else expand(s.value, s.location)
        values[s.name] = KNOWN[s.name](raw, s.location, s.name)
        where[s.name] = s.location
    both = [n for n in values.get("secrets", ()) if n in values.get("env", ())]
    if both:
        later = max(where["env"], where["secrets"], key=lambda w: (w.file, w.line))
        raise BatchfileError(
            f"'{both[0]}' is in both settings 'env' and 'secrets'.",
            where=later,
            hint="An env variable's value enters every key and is recorded; a secret's never is. Keep it in one of them.",
        )
    return Settings(**values)
