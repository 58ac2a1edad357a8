"""The one place a Docker SDK client is built (the docker runtime, image builds, benchmarks),
and the engine's errors as the runtime's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
import requests
from django.conf import settings
from docker.errors import APIError, DockerException

from ..base import RuntimeFailure, RuntimeUnavailable


def build_client() -> docker.DockerClient:
    """A Docker SDK client for KUBEFUNCTION_DOCKER_URL (or DOCKER_HOST and the rest of the
    environment when it is empty), with the API timeout in seconds; asks the engine its API
    version, so it fails here when the engine does not answer."""
    timeout = settings.KUBEFUNCTION_DOCKER_TIMEOUT
    if settings.KUBEFUNCTION_DOCKER_URL:
        return docker.DockerClient(base_url=settings.KUBEFUNCTION_DOCKER_URL, timeout=timeout)
    return docker.from_env(timeout=timeout)


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Turn SDK errors into the runtime's: the engine being down or failing (5xx) may pass, so
    `RuntimeUnavailable`; a request the engine refuses (4xx) will not, so `RuntimeFailure`."""
    try:
        yield
    except APIError as exc:
        detail = exc.explanation or str(exc)
        if exc.status_code is None or exc.status_code >= 500:
            raise RuntimeUnavailable(f"the Docker engine failed to {action}: {detail}") from exc
        raise RuntimeFailure(f"the Docker engine refused to {action}: {detail}") from exc
    except (requests.exceptions.RequestException, DockerException, OSError) as exc:
        raise RuntimeUnavailable(f"the Docker engine did not answer ({action}): {exc}") from exc
