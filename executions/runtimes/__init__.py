"""Runtimes: where an invocation runs. `get_runtime(name)` returns one shared instance per name."""

from __future__ import annotations

import threading

from django.utils.module_loading import import_string

from .base import Runtime

RUNTIMES = {
    "local": "executions.runtimes.local.runtime.LocalRuntime",
    "docker": "executions.runtimes.docker.runtime.DockerRuntime",
    "kubernetes": "executions.runtimes.kubernetes.runtime.KubernetesRuntime",
}

_instances: dict[str, Runtime] = {}
_lock = threading.Lock()


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`, built once per process."""
    runtime = _instances.get(name)
    if runtime is not None:
        return runtime
    if name not in RUNTIMES:
        known = ", ".join(sorted(RUNTIMES))
        raise ValueError(f"unknown runtime '{name}' (known: {known})")
    with _lock:
        if name not in _instances:
            _instances[name] = import_string(RUNTIMES[name])()
        return _instances[name]


def close_runtimes() -> None:
    """Stop what the runtimes built in this process hold (warm processes, containers)."""
    for runtime in list(_instances.values()):
        runtime.close()
