"""The Docker benchmark: a raw container of the base image (the floor) against the docker runtime.

The floor is what `docker run --rm --network none BASE python3 -c pass` costs through the SDK
(`containers.run(..., remove=True)`: create, start, wait, logs, remove). Against it: a cold
invocation of a trivial function (one hardened one-shot container, from `invoke()` to the
outcome), the first invocation on a new warm container, and warm invocations (an idle pooled
container answering over its socket). Floor and cold samples alternate, so a busy machine
weighs on both alike. No database, broker or worker is involved: this measures the runtime.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import docker
from django.conf import settings

from executions.runtimes.base import InvocationContext
from executions.runtimes.docker.runtime import DockerRuntime
from executions.runtimes.warm_pool import PoolLimits
from functions import images
from functions.specs import FunctionSpec
from kubefunction.docker_client import build_client
from kubefunction.stats import percentile

BENCH_SOURCE = b"def handle(event):\n    return event\n"


@dataclass
class DockerFigures:
    floor: float  # median seconds of the raw container run
    cold: float  # median seconds of a one-shot invocation
    cold_warm_pool: float  # median seconds of the first invocation on a new warm container
    warm_p50: float
    warm_p95: float
    samples: int
    warm_samples: int
    image: str
    stdlib_bytecode: bool  # the base image ships compiled standard-library modules


def bench_image() -> str:
    """The trivial function's image, built by the platform's own pipeline (`functions.images`,
    reused from the registry when already built): the bench runs what users run."""
    built, _ = images.build_image(_spec(""))
    return built.image


def has_stdlib_bytecode(client: docker.DockerClient) -> bool:
    """True when the base image ships the standard library's bytecode (json's, as a sample)."""
    out = client.containers.run(
        settings.KUBEFUNCTION_BASE_IMAGE, ["python3", "-c", (
            "import importlib.util as u, os; "
            "print(os.path.exists(u.find_spec('json').cached))")],
        remove=True, network_mode="none")
    return out.strip() == b"True"


def _spec(image: str) -> FunctionSpec:
    return FunctionSpec(version_id=-1, function_name="bench-echo", version_number=1,
                        sha256=hashlib.sha256(BENCH_SOURCE).hexdigest(), source_name="handler.py",
                        read_source=lambda: BENCH_SOURCE, image=image, timeout_seconds=30)


def _timed_invoke(runtime: DockerRuntime, spec: FunctionSpec, payload: object) -> tuple[float,
                                                                                         bool]:
    context = InvocationContext(execution_id="bench", task_id="bench",
                                deadline=time.time() + spec.timeout_seconds)
    started = time.perf_counter()
    outcome = runtime.invoke(spec, payload, context)
    elapsed = time.perf_counter() - started
    if outcome.status != "succeeded" or outcome.output != payload:
        raise RuntimeError(f"the bench function failed: {outcome}")
    return elapsed, outcome.cold


def run_docker_bench(*, samples: int = 20, warm_samples: int = 200) -> DockerFigures:
    client = build_client()
    base = settings.KUBEFUNCTION_BASE_IMAGE
    image = bench_image()
    spec = _spec(image)
    bytecode = has_stdlib_bytecode(client)
    floor, cold, cold_pool, warm = [], [], [], []
    one_shot = DockerRuntime(PoolLimits(size=0, per_key=0, idle_seconds=0))
    pooled = DockerRuntime(PoolLimits(size=1, per_key=1, idle_seconds=600))
    try:
        # One of each first, unmeasured: the engine's caches are warm after.
        client.containers.run(base, ["python3", "-c", "pass"], remove=True, network_mode="none")
        _timed_invoke(one_shot, spec, 0)
        for index in range(samples):
            started = time.perf_counter()
            client.containers.run(base, ["python3", "-c", "pass"], remove=True,
                                  network_mode="none")
            floor.append(time.perf_counter() - started)
            cold.append(_timed_invoke(one_shot, spec, index)[0])
            pooled.release(spec)  # so the next call starts a new warm container
            elapsed, was_cold = _timed_invoke(pooled, spec, index)
            if not was_cold:
                raise RuntimeError("a released warm container answered again")
            cold_pool.append(elapsed)
        for index in range(warm_samples):
            elapsed, was_cold = _timed_invoke(pooled, spec, {"n": index})
            if was_cold:
                raise RuntimeError("the warm container was not reused")
            warm.append(elapsed)
    finally:
        one_shot.close()
        pooled.close()
        client.close()
    return DockerFigures(
        floor=percentile(floor, 0.5), cold=percentile(cold, 0.5),
        cold_warm_pool=percentile(cold_pool, 0.5), warm_p50=percentile(warm, 0.5),
        warm_p95=percentile(warm, 0.95), samples=samples, warm_samples=warm_samples,
        image=image, stdlib_bytecode=bytecode)
