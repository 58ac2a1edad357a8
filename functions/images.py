"""Container images of function versions: render the Dockerfile, build, push, pin by digest.

Only the Docker SDK is used (never the `docker` CLI), through the one client the platform builds
(`kubefunction.docker_client`). The image's layout and user are `image_contract`, which the
runtimes that run images follow too (templates/functions/Dockerfile). Tags are content
addressed — a digest of everything that goes into the image — so registering the same source
again reuses the image already in the registry instead of building it again.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import docker
from django.conf import settings
from django.template.loader import render_to_string
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from kubefunction.docker_client import build_client

from . import image_contract, runner
from . import requirements as reqs
from .artifacts import read_members
from .build_logs import BoundedLog
from .specs import FunctionSpec

RUNNER_SOURCE = Path(runner.__file__).read_bytes()
# The conventions package the runner loads from beside itself (functions/conventions).
CONVENTIONS_SOURCES = {
    f"conventions/{path.name}": path.read_bytes()
    for path in sorted((Path(runner.__file__).parent / "conventions").glob("*.py"))}
REPOSITORY_PREFIX = "kubefunction"
MIB = 1024 * 1024


class ImageBuildFailed(Exception):
    """The image could not be built or pushed; the message says why (shown on the version)."""


@dataclass(frozen=True)
class BuiltImage:
    image: str  # repository@sha256:… — what runtimes pull and run
    tag: str  # repository:content-tag
    installed: str  # name==version lines ("" when reused: the earlier build recorded them)
    reused: bool  # found in the registry: nothing was built


def repository(function_name: str) -> str:
    return f"{settings.KUBEFUNCTION_REGISTRY}/{REPOSITORY_PREFIX}/{function_name}"


def render_dockerfile(spec: FunctionSpec) -> str:
    return render_to_string("functions/Dockerfile", {
        "base_image": settings.KUBEFUNCTION_BASE_IMAGE, "function": spec.function_name,
        "version": spec.version_number, "sha256": spec.sha256,
        "requirements": spec.requirements.strip(), "runner": image_contract.RUNNER,
        "conventions": image_contract.CONVENTIONS,
        "source_dir": image_contract.SOURCE_DIR, "deps_dir": image_contract.DEPS_DIR,
        "user": image_contract.FUNCTION_USER,
    })


def image_target(client: docker.DockerClient) -> reqs.Target:
    """What the image's pip installs for: the base image's Python and glibc (settings) on the
    engine's architecture."""
    machine = client.info().get("Architecture") or "x86_64"
    return reqs.Target(python_version=settings.KUBEFUNCTION_IMAGE_PYTHON_VERSION,
                       glibc_version=settings.KUBEFUNCTION_IMAGE_GLIBC_VERSION, machine=machine)


def write_context(out: IO[bytes], files: dict[str, bytes], wheelhouse: Path | None = None) -> None:
    """Write a build context tar: `files` by name, and the wheelhouse's wheels under wheels/."""
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            archive.addfile(info, io.BytesIO(files[name]))
        for wheel in sorted(wheelhouse.iterdir()) if wheelhouse else ():
            info = tarfile.TarInfo(f"wheels/{wheel.name}")
            info.size, info.mode, info.mtime = wheel.stat().st_size, 0o644, 0
            with wheel.open("rb") as handle:
                archive.addfile(info, handle)
    out.seek(0)


def _context_files(spec: FunctionSpec, dockerfile: str, requirements_file: Path | None
                   ) -> dict[str, bytes]:
    """Dockerfile, runner, the requirements pip reads (our rendering) and the source under src/."""
    files = {"Dockerfile": dockerfile.encode(), "runner.py": RUNNER_SOURCE,
             **CONVENTIONS_SOURCES}
    if requirements_file is not None:
        files["requirements.txt"] = requirements_file.read_bytes()
    for path, content in read_members(spec.source_name, spec.read_source()).items():
        files[f"src/{path}"] = content
    return files


def content_tag(spec: FunctionSpec, base_image_id: str) -> str:
    """Digest of everything that shapes the image: same inputs, same tag.

    The version number is left out, so uploading earlier code again reuses its image (whose
    version label then names the version that first built it).
    """
    dockerfile = render_dockerfile(replace(spec, version_number=0))
    target = (f"{settings.KUBEFUNCTION_IMAGE_PYTHON_VERSION}-"
              f"{settings.KUBEFUNCTION_IMAGE_GLIBC_VERSION}")  # chooses the wheels
    digest = hashlib.sha256()
    for part in (dockerfile.encode(), RUNNER_SOURCE, *CONVENTIONS_SOURCES.values(),
                 spec.sha256.encode(),
                 spec.requirements.strip().encode(), base_image_id.encode(), target.encode()):
        digest.update(hashlib.sha256(part).digest())
    return "src-" + digest.hexdigest()[:32]


def _auth() -> dict | None:
    if settings.KUBEFUNCTION_REGISTRY_USERNAME:
        return {"username": settings.KUBEFUNCTION_REGISTRY_USERNAME,
                "password": settings.KUBEFUNCTION_REGISTRY_PASSWORD}
    return None


def _registry_digest(client: docker.DockerClient, reference: str) -> str | None:
    """The digest the registry holds for `reference`, or None when it has no such tag."""
    try:
        return client.images.get_registry_data(reference, auth_config=_auth()).id
    except (NotFound, ImageNotFound):
        return None
    except APIError as exc:
        if exc.status_code in (404, 500) and "not found" in str(exc).lower():
            return None
        raise


class LogSink:
    """Collects build output (bounded: `BoundedLog`) and hands it to `on_log` at most every
    `interval` seconds."""

    def __init__(self, on_log: Callable[[str], None] | None = None,
                 interval: float = 0.5) -> None:
        self.log = BoundedLog()
        self.on_log, self.interval, self.flushed = on_log, interval, 0.0

    def write(self, text: str) -> None:
        self.log.write(text)
        if self.on_log and time.monotonic() - self.flushed >= self.interval:
            self.flush()

    def flush(self) -> None:
        self.flushed = time.monotonic()
        if self.on_log:
            self.on_log(self.text)

    @property
    def text(self) -> str:
        return self.log.text


def build_image(spec: FunctionSpec, *, on_log: Callable[[str], None] | None = None,
                client: docker.DockerClient | None = None) -> tuple[BuiltImage, str]:
    """Build and push the version's image, or reuse the registry's copy. Returns (image, log).

    The requirements' wheels are fetched on this host (no package code runs: see
    `functions.requirements`) and installed inside the build, which has no network. Everything
    is bounded by KUBEFUNCTION_BUILD_TIMEOUT_SECONDS. Raises `ImageBuildFailed` with the log so
    far when anything fails.
    """
    deadline = reqs.build_deadline()
    sink = LogSink(on_log)
    try:
        client = client or build_client()
        base = client.images.get(settings.KUBEFUNCTION_BASE_IMAGE)
    except ImageNotFound as exc:
        raise ImageBuildFailed(
            f"base image {settings.KUBEFUNCTION_BASE_IMAGE} is missing: run `make services` "
            "(or set KUBEFUNCTION_BASE_IMAGE)") from exc
    except DockerException as exc:
        raise ImageBuildFailed(f"the Docker engine is unreachable: {exc}") from exc
    dockerfile = render_dockerfile(spec)
    repo = repository(spec.function_name)
    tag = content_tag(spec, base.id)
    try:
        existing = _registry_digest(client, f"{repo}:{tag}")
    except DockerException as exc:
        raise ImageBuildFailed(f"the registry {settings.KUBEFUNCTION_REGISTRY} is "
                               f"unreachable: {exc}") from exc
    if existing:
        sink.write(f"{repo}:{tag} is already in the registry ({existing}): nothing to build.\n")
        return BuiltImage(image=f"{repo}@{existing}", tag=f"{repo}:{tag}", installed="",
                          reused=True), sink.text
    with tempfile.TemporaryDirectory(prefix="kf-build-") as workdir:
        try:
            wheels = _fetch(client, spec, Path(workdir), sink, deadline)
            requirements_file = Path(workdir) / "requirements.txt" if wheels is not None else None
            with tempfile.TemporaryFile(dir=workdir) as context:
                write_context(context, _context_files(spec, dockerfile, requirements_file),
                              Path(workdir) / "wheels" if wheels else None)
                sink.write(f"building {repo}:{tag} from {settings.KUBEFUNCTION_BASE_IMAGE} "
                           "(no network)\n")
                run_build(client, context=context, reference=f"{repo}:{tag}", sink=sink,
                          deadline=deadline)
            digest = _push(client, repo, tag, sink)
        except ImageBuildFailed as exc:
            sink.write(f"\n{exc}\n")
            raise ImageBuildFailed(sink.text) from exc
        except DockerException as exc:
            sink.write(f"\nthe Docker engine failed: {exc}\n")
            raise ImageBuildFailed(sink.text) from exc
    sink.write(f"pushed {repo}:{tag} as {repo}@{digest}\n")
    return BuiltImage(image=f"{repo}@{digest}", tag=f"{repo}:{tag}",
                      installed=reqs.installed_list(wheels or ()), reused=False), sink.text


def _fetch(client: docker.DockerClient, spec: FunctionSpec, workdir: Path, sink: LogSink,
           deadline: float) -> tuple[str, ...] | None:
    """The wheels of the requirements, saved in workdir/wheels; None without requirements."""
    if not spec.requirements.strip():
        return None
    target = image_target(client)
    sink.write(f"fetching wheels for {target.describe()} from "
               f"{settings.KUBEFUNCTION_PIP_INDEX_URL} (wheels only)\n")
    fetched = reqs.fetch_wheels(requirements=spec.requirements, wheelhouse=workdir / "wheels",
                                workdir=workdir, target=target, deadline=deadline)
    sink.write(fetched.log.rstrip() + "\n")
    if not fetched.ok:
        raise ImageBuildFailed("fetching the requirements' wheels failed")
    return fetched.wheels


def build_limits() -> dict:
    """`container_limits` of every step of an image build."""
    limits = {"memory": settings.KUBEFUNCTION_BUILD_MEMORY_MB * MIB,
              "memswap": settings.KUBEFUNCTION_BUILD_MEMORY_MB * MIB,
              "cpushares": settings.KUBEFUNCTION_BUILD_CPU_SHARES}
    if settings.KUBEFUNCTION_BUILD_CPUSET:
        limits["cpusetcpus"] = settings.KUBEFUNCTION_BUILD_CPUSET
    return limits


def run_build(client: docker.DockerClient, *, context: IO[bytes], reference: str,
              sink: LogSink, deadline: float) -> None:
    """The one place an image is built: from a context tar, with no network (`network_mode`
    "none": the steps reach neither the host nor anything else), the build limits, and the
    deadline. Raises `ImageBuildFailed` with the reason."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageBuildFailed(reqs.build_timeout_message())
    # The read timeout bounds a silent step; the check below bounds a chatty one. Leaving the
    # stream closes the connection, which makes the engine cancel the build and its container.
    stream = client.api.build(
        fileobj=context, custom_context=True, tag=reference, rm=True, forcerm=True, pull=False,
        decode=True, network_mode="none", container_limits=build_limits(),
        timeout=max(1.0, remaining),
    )
    try:
        for chunk in stream:
            if time.monotonic() > deadline:
                raise ImageBuildFailed(reqs.build_timeout_message())
            if "stream" in chunk:
                sink.write(chunk["stream"])
            elif "error" in chunk:
                raise ImageBuildFailed(f"build failed: {chunk['error'].strip()}")
    except ImageBuildFailed:
        raise
    except Exception as exc:  # a read timeout (urllib3's, requests', the socket's) at the deadline
        if time.monotonic() >= deadline - 0.5:
            raise ImageBuildFailed(reqs.build_timeout_message()) from exc
        raise
    finally:
        stream.close()
    if time.monotonic() > deadline:
        raise ImageBuildFailed(reqs.build_timeout_message())


def _push(client: docker.DockerClient, repo: str, tag: str, sink: LogSink) -> str:
    sink.write(f"pushing {repo}:{tag}\n")
    digest = None
    for chunk in client.images.push(repo, tag=tag, stream=True, decode=True,
                                    auth_config=_auth()):
        if "error" in chunk:
            raise ImageBuildFailed(f"push to {settings.KUBEFUNCTION_REGISTRY} failed: "
                                   f"{chunk['error'].strip()}")
        digest = (chunk.get("aux") or {}).get("Digest", digest)
    if not digest:
        raise ImageBuildFailed(f"the registry did not report a digest for {repo}:{tag}")
    sink.flush()
    return digest
