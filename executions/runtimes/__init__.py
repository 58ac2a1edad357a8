"""Runtimes: where an invocation runs. `get_runtime(name)` returns one shared instance per name.

    base.py            the interface (`Runtime`) and the plain values it answers with
                       (`InvocationContext`, `Outcome`); what it runs is a `functions.specs`
                       `FunctionSpec`, in an image laid out as `functions.image_contract` says
    wire.py            the host side of the runner's protocol (`functions.runner`): the request,
                       the answer's frame, an `Exchange` and the `Outcome` it makes
    warm_pool.py       the warm pool of runners and the one invoke loop over it (local, docker)
    host.py            folders a worker process owns on its host, and whether it is alive
    local/             runtime.py, process.py (one runner child process), sandbox.py (bubblewrap)
    docker/            runtime.py, client.py (the engine's errors as the runtime's; the client
                       is `kubefunction.docker_client`), container.py (the hardened container
                       spec), oneshot.py and warm.py (its two modes)
    kubernetes/        runtime.py, client.py (the API, the Role's permissions), manifests.py,
                       jobs.py (cold mode), warm.py (warm mode), informer.py (warm mode's
                       watches), podcall.py (a call to a warm pod), outcomes.py (a Job's end)
"""

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
            # Imported by name on first use: a worker that runs only local functions never
            # imports the Docker SDK or the Kubernetes client (and their start-up cost).
            _instances[name] = import_string(RUNTIMES[name])()
        return _instances[name]


def close_runtimes() -> None:
    """Stop what the runtimes built in this process hold (warm processes, containers)."""
    for runtime in list(_instances.values()):
        runtime.close()
