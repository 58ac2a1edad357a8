"""The one place a Docker SDK client is built: the docker runtime (`executions.runtimes.docker`),
image builds (`functions.images`) and the benchmarks all use `build_client`."""

from __future__ import annotations

import docker
from django.conf import settings


def build_client() -> docker.DockerClient:
    """A Docker SDK client for KUBEFUNCTION_DOCKER_URL (or DOCKER_HOST and the rest of the
    environment when it is empty), with the API timeout in seconds; asks the engine its API
    version, so it fails here when the engine does not answer."""
    timeout = settings.KUBEFUNCTION_DOCKER_TIMEOUT
    if settings.KUBEFUNCTION_DOCKER_URL:
        return docker.DockerClient(base_url=settings.KUBEFUNCTION_DOCKER_URL, timeout=timeout)
    return docker.from_env(timeout=timeout)
