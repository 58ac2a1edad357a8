"""Container images of function versions: render the Dockerfile, build, push, pin by digest.

Only the Docker SDK is used (never the `docker` CLI). Tags are content addressed — a digest of
everything that goes into the image — so registering the same source again reuses the image
already in the registry instead of building it again.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import docker
from django.conf import settings
from django.template.loader import render_to_string
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from executions.runtimes.base import FunctionSpec

from . import runner
from .artifacts import read_members

RUNNER_SOURCE = Path(runner.__file__).read_bytes()
INSTALLED_BEGIN = "--- kubefunction: installed packages ---"
INSTALLED_END = "--- kubefunction: end of installed packages ---"
REPOSITORY_PREFIX = "kubefunction"


class ImageBuildFailed(Exception):
    """The image could not be built or pushed; the message says why (shown on the version)."""


@dataclass(frozen=True)
class BuiltImage:
    image: str  # repository@sha256:… — what runtimes pull and run
    tag: str  # repository:content-tag
    installed: str  # name==version lines ("" when reused: the earlier build recorded them)
    reused: bool  # found in the registry: nothing was built


def docker_client() -> docker.DockerClient:
    """A Docker SDK client from the environment (DOCKER_HOST or the local socket)."""
    return docker.from_env(timeout=60)


def repository(function_name: str) -> str:
    return f"{settings.KUBEFUNCTION_REGISTRY}/{REPOSITORY_PREFIX}/{function_name}"


def render_dockerfile(spec: FunctionSpec) -> str:
    return render_to_string("functions/Dockerfile", {
        "base_image": settings.KUBEFUNCTION_BASE_IMAGE, "function": spec.function_name,
        "version": spec.version_number, "sha256": spec.sha256,
        "requirements": spec.requirements.strip(), "installed_begin": INSTALLED_BEGIN,
        "installed_end": INSTALLED_END,
    })


def _context(spec: FunctionSpec, dockerfile: str) -> bytes:
    """The build context as a tar: Dockerfile, runner, requirements and the source under src/."""
    files = {"Dockerfile": dockerfile.encode(), "runner.py": RUNNER_SOURCE}
    if spec.requirements.strip():
        files["requirements.txt"] = spec.requirements.strip().encode() + b"\n"
    for path, content in read_members(spec.source_name, spec.read_source()).items():
        files[f"src/{path}"] = content
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            archive.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def content_tag(spec: FunctionSpec, base_image_id: str) -> str:
    """Digest of everything that shapes the image: same inputs, same tag.

    The version number is left out, so uploading earlier code again reuses its image (whose
    version label then names the version that first built it).
    """
    dockerfile = render_dockerfile(replace(spec, version_number=0))
    digest = hashlib.sha256()
    for part in (dockerfile.encode(), RUNNER_SOURCE, spec.sha256.encode(),
                 spec.requirements.strip().encode(), base_image_id.encode()):
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


def _installed(log: str) -> str:
    if INSTALLED_BEGIN not in log:
        return ""
    # The markers also appear in the echoed RUN line: the printed list follows the last one.
    block = log.rsplit(INSTALLED_BEGIN, 1)[1].split(INSTALLED_END, 1)[0]
    return "\n".join(line.strip() for line in block.splitlines() if "==" in line)


class _LogSink:
    """Collects build output and hands it to `on_log` at most every `interval` seconds."""

    def __init__(self, on_log: Callable[[str], None] | None, interval: float = 0.5) -> None:
        self.parts: list[str] = []
        self.on_log, self.interval, self.flushed = on_log, interval, 0.0

    def write(self, text: str) -> None:
        self.parts.append(text)
        if self.on_log and time.monotonic() - self.flushed >= self.interval:
            self.flush()

    def flush(self) -> None:
        self.flushed = time.monotonic()
        if self.on_log:
            self.on_log(self.text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def build_image(spec: FunctionSpec, *, on_log: Callable[[str], None] | None = None,
                client: docker.DockerClient | None = None) -> tuple[BuiltImage, str]:
    """Build and push the version's image, or reuse the registry's copy. Returns (image, log).

    Raises `ImageBuildFailed` with the log so far when anything fails.
    """
    sink = _LogSink(on_log)
    try:
        client = client or docker_client()
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
    try:
        _build(client, spec, dockerfile, f"{repo}:{tag}", sink)
        digest = _push(client, repo, tag, sink)
    except ImageBuildFailed as exc:
        sink.write(f"\n{exc}\n")
        raise ImageBuildFailed(sink.text) from exc
    except DockerException as exc:
        sink.write(f"\nthe Docker engine failed: {exc}\n")
        raise ImageBuildFailed(sink.text) from exc
    sink.write(f"pushed {repo}:{tag} as {repo}@{digest}\n")
    return BuiltImage(image=f"{repo}@{digest}", tag=f"{repo}:{tag}",
                      installed=_installed(sink.text), reused=False), sink.text


def _build(client: docker.DockerClient, spec: FunctionSpec, dockerfile: str, reference: str,
           sink: _LogSink) -> None:
    sink.write(f"building {reference} from {settings.KUBEFUNCTION_BASE_IMAGE}\n")
    stream = client.api.build(
        fileobj=io.BytesIO(_context(spec, dockerfile)), custom_context=True, tag=reference,
        rm=True, forcerm=True, pull=False, decode=True, network_mode="host",
        timeout=settings.KUBEFUNCTION_BUILD_TIMEOUT,
    )
    for chunk in stream:
        if "stream" in chunk:
            sink.write(chunk["stream"])
        elif "error" in chunk:
            raise ImageBuildFailed(f"build failed: {chunk['error'].strip()}")


def _push(client: docker.DockerClient, repo: str, tag: str, sink: _LogSink) -> str:
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
