"""Whether a Docker engine, the registry and the base image are here (else Docker tests skip)."""

from __future__ import annotations

import urllib.request
from functools import cache

import pytest
from django.conf import settings

SKIP_MESSAGE = "no Docker engine: run `make services` to enable the Docker tests"


@cache
def engine_problem() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get(settings.KUBEFUNCTION_BASE_IMAGE)
        urllib.request.urlopen(f"http://{settings.KUBEFUNCTION_REGISTRY}/v2/", timeout=5)
    except Exception as exc:  # any missing piece means: skip, and say how to enable
        return f"{SKIP_MESSAGE} ({type(exc).__name__}: {exc})"
    return None


needs_docker = pytest.mark.skipif(engine_problem() is not None, reason=engine_problem() or "")


def registry_repositories() -> set[str]:
    """Every repository in the registry's catalog (following its pagination)."""
    import json
    import re

    names: set[str] = set()
    path = "/v2/_catalog?n=1000"
    while path:
        url = f"http://{settings.KUBEFUNCTION_REGISTRY}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            names.update(json.load(response)["repositories"] or [])
            link = re.match(r"<([^>]+)>", response.headers.get("Link", ""))
        path = link.group(1) if link else None
    return names
