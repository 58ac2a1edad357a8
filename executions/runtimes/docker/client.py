"""The Docker engine's errors as the runtime's. (Its client is built in one place for the
docker runtime, image builds and benchmarks: `kubefunction.docker_client`.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import requests
from docker.errors import APIError, DockerException

from ..base import RuntimeFailure, RuntimeUnavailable


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
