"""`--remote`: the environment image and the remote executor, from the
settings, checked up front with clear errors before anything is built."""
from __future__ import annotations

from buildsys.errors import UsageError

REPOSITORY = "bb-env"


def _backend(ctx, backend: str) -> str:
    return backend or ctx.graph.settings.executor


def environment_image(ctx, backend: str):
    """The image spec and the name that keys remote actions: a digest of
    what the environment is made of (base, requirements, system packages,
    platform, Dockerfile), never the registry's address, nor bb's own
    version (the image's tag covers bb too, so a new bb builds a new image,
    but results made with the older one stay valid)."""
    import json

    from buildsys.digest import hash_bytes
    from buildsys.remote.image import ImageSpec, image_inputs

    s = ctx.graph.settings
    if not (s.image or s.dockerfile):
        raise UsageError(
            "--remote needs a base image to build the environment image from.",
            hint="Set 'image = <a Debian-based image with python3>' (or 'dockerfile = Dockerfile') in the Batchfile's settings.",
        )
    spec = ImageSpec(base=s.image, requirements=s.requirements, system_packages=s.system_packages, dockerfile=s.dockerfile, platform=s.platform)
    inputs = image_inputs(spec, ctx.root)
    inputs.pop("bb", None)
    return spec, f"{REPOSITORY}-environment:{hash_bytes(json.dumps(inputs, sort_keys=True, separators=(',', ':')).encode())[:32]}"


def remote_executor(ctx, backend: str, spec, ui):
    from buildsys.remote.image import ensure_image

    s = ctx.graph.settings
    backend = _backend(ctx, backend)
    store = getattr(ctx.store, "remote", None)
    if backend == "docker":
        from buildsys.remote.docker import DockerExecutor

        image = ensure_image(spec, ctx.root, s.registry if s.registry not in ("", "ecr") else "local", REPOSITORY, region=s.region, progress=ui.note)
        return DockerExecutor(image, str(store.url) if store is not None else ctx.store.root)
    from buildsys.remote.batch import BatchExecutor

    if store is None:
        raise UsageError(
            "--remote on AWS Batch needs a shared cache in S3: jobs read their inputs from it and write their results to it.",
            hint="Set 'cache = s3://bucket/prefix' in the settings (or BB_CACHE, --cache).",
        )
    if getattr(ctx.store, "read_only", False):
        raise UsageError("--remote cannot use a read-only shared cache: the jobs write their results to it.", hint="Drop --cache-read-only (or cache_mode = read-only).")
    if not s.queue:
        raise UsageError("--remote on AWS Batch needs a job queue.", hint="Set 'queue = <your AWS Batch job queue>' in the settings.")
    if not s.registry:
        raise UsageError("--remote on AWS Batch needs a registry to push the environment image to.", hint="Set 'registry = ecr' (or host:port of your registry) in the settings.")
    image = ensure_image(spec, ctx.root, s.registry, REPOSITORY, region=s.region, progress=ui.note)
    return BatchExecutor(
        image=image, queue=s.queue, store=ctx.store, region=s.region, job_role=s.job_role,
        platform=s.platform, runnable_timeout=s.runnable_timeout,
    )
