"""The docker runtime: each invocation in a hardened container, cold or from a warm pool."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import requests
from django.conf import settings
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from functions.specs import FunctionSpec, PrepareResult
from kubefunction.docker_client import build_client

from ..base import InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable
from ..host import pid_alive, remove_stale_folders
from ..warm_pool import PooledRuntime, PoolLimits, WarmPool
from ..wire import exchange_outcome, late_outcome, max_frame_bytes, runner_request
from .client import engine_errors
from .container import LABEL, MANAGED_LABEL, OWNER_LABEL, Limits, owner_id
from .oneshot import run_once
from .warm import WarmContainer

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
T = TypeVar("T")


def folders_dir() -> Path:
    """Where the host folders mounted into containers live (request files, warm sockets)."""
    return Path(settings.KUBEFUNCTION_WORK_DIR) / "docker"


def pool_key(spec: FunctionSpec) -> tuple:
    """Containers are interchangeable only if everything that shaped them at start is equal."""
    return (spec.version_id, spec.image, spec.handler, spec.mode, spec.convention,
            spec.memory_mb, spec.network,
            tuple(sorted(spec.env.items())))


def _pool_limits() -> PoolLimits:
    return PoolLimits(
        size=settings.KUBEFUNCTION_DOCKER_WARM_POOL_SIZE,
        per_key=settings.KUBEFUNCTION_DOCKER_WARM_POOL_PER_VERSION,
        idle_seconds=settings.KUBEFUNCTION_DOCKER_WARM_IDLE_SECONDS,
    )


def _limits() -> Limits:
    # A log file holds at least one whole frame (JSON escaping may grow the output's text, and
    # the log driver adds its own), so the frame of a one-shot container is never rotated away.
    frame = settings.KUBEFUNCTION_MAX_OUTPUT_BYTES + 2 * settings.KUBEFUNCTION_MAX_LOG_BYTES
    return Limits(cpus=settings.KUBEFUNCTION_DOCKER_CPUS,
                  pids=settings.KUBEFUNCTION_DOCKER_PIDS_LIMIT,
                  log_max_bytes=max(8 * MIB, 4 * frame),
                  network=settings.KUBEFUNCTION_DOCKER_NETWORK)


def cleanup_orphans(client: docker.DockerClient) -> int:
    """Remove the runtime's containers whose worker process is gone; returns how many.

    A container belongs to the process named in its `io.kubefunction.owner` label (host:pid).
    Only containers of this host are judged (an engine may serve several hosts); those of live
    processes, and any without an owner, are left alone. The host folders those workers
    mounted go too.
    """
    host = socket.gethostname()
    removed = 0
    found = client.api.containers(all=True, filters={"label": f"{MANAGED_LABEL}=true"})
    for container in found:
        owner = (container.get("Labels") or {}).get(OWNER_LABEL, "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            client.api.remove_container(container["Id"], force=True)
            removed += 1
        except NotFound:
            pass
    remove_stale_folders(folders_dir())
    return removed


class DockerRuntime(PooledRuntime):
    """Runs each invocation in a container of the version's image (`spec.image`).

    Every container is hardened the same way (see `container.create_container`): no
    network unless the function asks for one, read-only root with a 64 MiB noexec /tmp, user
    10001, no capabilities, no-new-privileges, memory (no swap), CPU and pids limits, bounded
    logs, the function's environment only, labelled with the worker that owns it.

    With the warm pool on (KUBEFUNCTION_DOCKER_WARM_POOL_SIZE > 0), an invocation takes an idle
    container of the same version or starts one (`cold`), and a container that answered returns
    to the pool: bounded per version and in total, removed after an idle time. With it off,
    every invocation gets a one-shot container that reads its request from a read-only mounted
    file, writes its frame to stdout and is removed. A timeout kills and removes the container.

    `close()` removes the containers this process started (and runs at exit); a worker that
    ended without it leaves containers that `cleanup_orphans` removes when the next worker on
    the host first reaches the engine.
    """

    name = "docker"
    runs_images = True

    def __init__(self, pool_limits: PoolLimits | None = None) -> None:
        """`pool_limits` fixes the warm pool's limits (for benchmarks); by default they come from
        the settings, read at each use."""
        self._pool_limits = (lambda: pool_limits) if pool_limits is not None else _pool_limits
        self._pool = WarmPool(self._pool_limits)
        self._client: docker.DockerClient | None = None
        self._client_pid = 0
        self._lock = threading.Lock()

    # --- the engine --------------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        """The SDK client, built once per process (a forked child builds its own); the first
        one also removes the orphans of dead workers."""
        pid = os.getpid()
        if self._client is not None and self._client_pid == pid:
            return self._client
        with self._lock:
            if self._client is None or self._client_pid != pid:
                with engine_errors("connect"):
                    client = build_client()
                try:
                    removed = cleanup_orphans(client)
                    if removed:
                        logger.info("removed %d containers of workers that are gone", removed)
                except (APIError, DockerException, requests.exceptions.RequestException,
                        OSError) as exc:
                    logger.warning("could not look for orphaned containers: %s", exc)
                self._client, self._client_pid = client, pid
        return self._client

    @property
    def api(self) -> Any:
        return self.client().api

    def remove_orphans(self) -> int:
        """Remove the containers (and host folders) of this host's dead workers."""
        return cleanup_orphans(self.client())

    # --- images ------------------------------------------------------------------------------

    def _image_present(self, image: str) -> bool:
        try:
            with engine_errors("look for the function's image"):
                self.api.inspect_image(image)
        except RuntimeFailure as exc:
            if isinstance(exc.__cause__, NotFound):
                return False
            raise
        return True

    def _pull(self, spec: FunctionSpec) -> str:
        """Pull the version's image (by digest); returns a line for the log."""
        auth = None
        username = getattr(settings, "KUBEFUNCTION_REGISTRY_USERNAME", "")
        if username:
            auth = {"username": username,
                    "password": getattr(settings, "KUBEFUNCTION_REGISTRY_PASSWORD", "")}
        started = time.monotonic()
        try:
            self.client().images.pull(spec.image, auth_config=auth)
        except (ImageNotFound, NotFound) as exc:
            raise RuntimeFailure(f"the image {spec.image} of {spec.function_name} "
                                 f"v{spec.version_number} is not in the registry: "
                                 f"{exc.explanation or exc}") from exc
        except APIError as exc:
            detail = exc.explanation or str(exc)
            if exc.status_code and exc.status_code < 500 or "manifest unknown" in detail:
                raise RuntimeFailure(f"the image {spec.image} cannot be pulled: {detail}") from exc
            raise RuntimeUnavailable(f"pulling {spec.image} failed: {detail}") from exc
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(f"pulling {spec.image} failed: {exc}") from exc
        return f"pulled {spec.image} in {time.monotonic() - started:.1f} s"

    def _require_image(self, spec: FunctionSpec) -> None:
        if not spec.image:
            raise RuntimeFailure(f"{spec.function_name} v{spec.version_number} has no image "
                                 "yet: build it for the docker runtime first")

    def needs_prepare(self, spec: FunctionSpec) -> bool:
        """True unless the version's image is set and already on this engine."""
        return not spec.image or not self._image_present(spec.image)

    def prepare(self, spec: FunctionSpec) -> PrepareResult:
        """Make sure the version's image is on this engine, pulling it by digest if needed.

        The image itself is built and pushed by `functions.images`; this runtime only runs it.
        """
        try:
            self._require_image(spec)
            if self._image_present(spec.image):
                return PrepareResult(ok=True, log=f"{spec.image} is present")
            return PrepareResult(ok=True, log=self._pull(spec))
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            return PrepareResult(ok=False, log=str(exc))

    def _with_image(self, spec: FunctionSpec, start: Callable[[], T], deadline: float) -> T:
        """`start()`; if the engine lacks the image, pull it and start again."""
        try:
            return start()
        except RuntimeFailure as exc:
            if not isinstance(exc.__cause__, ImageNotFound):
                raise
        self._pull(spec)
        if time.monotonic() >= deadline:
            raise RuntimeUnavailable(f"pulled {spec.image}, but the invocation's deadline "
                                     "passed meanwhile; the next attempt will find it")
        return start()

    # --- invoke ------------------------------------------------------------------------------

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        self._require_image(spec)
        budget = context.deadline - time.time()
        if budget <= 0:
            return late_outcome()
        deadline = time.monotonic() + budget
        request, nonce = runner_request(spec, payload, context)
        limits = _limits()
        pool = self._pool_limits()
        if pool.size <= 0 or pool.per_key <= 0:
            labels = {**_version_labels(spec), f"{LABEL}.execution": context.execution_id}
            exchange = self._with_image(spec, lambda: run_once(
                self.api, spec, request, nonce, deadline, parent=folders_dir(), labels=labels,
                limits=limits, max_log_bytes=settings.KUBEFUNCTION_MAX_LOG_BYTES,
                max_frame_bytes=max_frame_bytes()), deadline)
            cold = True
        else:
            key = pool_key(spec)
            exchange, cold = self._exchange_pooled(
                key, lambda: self._start(spec, key, limits, deadline), request, nonce, deadline)
        return exchange_outcome(exchange, spec, cold=cold, budget=budget, unit="container")

    def _start(self, spec: FunctionSpec, key: tuple, limits: Limits,
               deadline: float) -> WarmContainer:
        labels = {**_version_labels(spec), f"{LABEL}.pool": _key_digest(key)}
        return self._with_image(spec, lambda: WarmContainer.start(
            self.api, spec, parent=folders_dir(), labels=labels, limits=limits), deadline)

    # --- the rest of the interface -----------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        base = settings.KUBEFUNCTION_BASE_IMAGE
        try:
            client = self.client()
            with engine_errors("answer a ping"):
                client.ping()
                version = client.version()
            present = self._image_present(base)
        except (RuntimeUnavailable, RuntimeFailure) as exc:
            return False, f"docker runtime: {exc}"
        engine = (f"Docker engine {version.get('Version', '?')} "
                  f"(API {version.get('ApiVersion', '?')}) at {client.api.base_url}")
        if not present:
            return False, (f"docker runtime: {engine}; the base image {base} is missing: "
                           "run `make services` (or set KUBEFUNCTION_BASE_IMAGE)")
        return True, (f"docker runtime: {engine}; base image {base} present; "
                      f"{self.warm_count} warm containers")

    def close(self) -> None:
        """Remove every container this process started (idle or busy)."""
        super().close()
        if self._client is None or self._client_pid != os.getpid():
            return
        try:
            left = self._client.api.containers(all=True, filters={
                "label": [f"{MANAGED_LABEL}=true", f"{OWNER_LABEL}={owner_id()}"]})
            for container in left:
                self._client.api.remove_container(container["Id"], force=True)
        except (APIError, DockerException, requests.exceptions.RequestException) as exc:
            logger.warning("could not remove this worker's containers: %s", exc)


def _version_labels(spec: FunctionSpec) -> dict[str, str]:
    return {f"{LABEL}.function": spec.function_name,
            f"{LABEL}.version": str(spec.version_number)}


def _key_digest(key: tuple) -> str:
    return hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:16]

