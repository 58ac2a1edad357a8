"""The Kubernetes benchmark: the kubernetes runtime on the fake API server against `docker run`,
and its warm mode against the docker runtime's.

The floor is a raw `docker run --rm` of the function's own image through the SDK with the very
command, environment, user and limits the Job's pod gets (`containers.run(..., remove=True)`),
its request file bind-mounted read-only where the Job's Secret volume would be. Against it, on
the fake API server with its docker kubelet (every pod a container of that image, without
network):

- cold: `KubernetesRuntime.invoke` in Job mode (create, watch, log, delete), alternating with the
  floor, from `invoke()` to the outcome;
- warm: the same runtime in Deployment mode. The first invocation scales the Deployment from zero
  and waits for its pod's readiness (a container started, its runner imported and answering the
  readinessProbe); the others reuse that pod: POST /invoke to the pod IP, which the docker
  kubelet tunnels into the container (tests/kube/tunnel.py). Every request the fake API server
  receives meanwhile is counted (`warm_api_requests`).
- the docker runtime's warm invocations of the same image (an idle pooled container answering
  over its socket), alternating with the warm Kubernetes ones in rounds;
- through the platform (`platform` > 0): the same function registered twice, on the kubernetes
  runtime in warm mode and on the docker runtime, built by the platform, dispatched one at a
  time through a Celery worker subprocess (`metrics.bench.worker_process`) pointed at this fake
  API server, dispatched → finished as `make bench` times it; warm Kubernetes against warm
  docker there is the goal (`WARM_GOAL`).

The fake server and its kubelets live in the test tree (tests/kube/); they are imported lazily,
so this module needs a source checkout with tests/ (the platform image leaves tests/ out).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
from django.test import override_settings

from executions.runtimes.base import InvocationContext, Runtime
from executions.runtimes.docker.runtime import DockerRuntime
from executions.runtimes.kubernetes.manifests import REQUEST_DIR, REQUEST_KEY, job_manifest
from executions.runtimes.kubernetes.runtime import KubernetesRuntime
from executions.runtimes.warm_pool import PoolLimits
from executions.runtimes.wire import runner_request
from functions.images import build_image
from functions.specs import FunctionSpec
from kubefunction.docker_client import build_client
from kubefunction.stats import percentile

BENCH_SOURCE = b"def handle(event):\n    return event\n"
WARM_GOAL = 1.2  # warm p50 within 1.2x the docker runtime's warm p50
ROUNDS = 4  # warm Kubernetes and warm docker invocations alternate in this many rounds
PLATFORM_ROUND = 20  # through the platform, they alternate every this many dispatches


@dataclass
class KubeFigures:
    floor: float  # median seconds of `docker run --rm` of the image with the pod's command
    cold: float  # median seconds of a Job invocation (docker kubelet)
    warm_first: float  # seconds of the first warm invocation (Deployment scaled from zero)
    warm_p50: float  # warm invocations reusing the Deployment's pod (a docker container)
    warm_p95: float
    warm_api_requests: int  # requests the fake API server received during those
    docker_warm_p50: float  # the docker runtime's warm invocations of the same image
    docker_warm_p95: float
    samples: int
    warm_samples: int
    image: str
    # through the platform, dispatched -> finished (None when not measured)
    platform_samples: int = 0
    platform_kube_p50: float | None = None
    platform_kube_p95: float | None = None
    platform_kube_api_requests: int = 0  # received by the fake API server meanwhile
    platform_docker_p50: float | None = None
    platform_docker_p95: float | None = None


def _spec(image: str = "") -> FunctionSpec:
    return FunctionSpec(version_id=-2, function_name="bench-kube", version_number=1,
                        sha256=hashlib.sha256(BENCH_SOURCE).hexdigest(), source_name="handler.py",
                        read_source=lambda: BENCH_SOURCE, image=image, timeout_seconds=30,
                        memory_mb=128)


def _context(spec: FunctionSpec) -> InvocationContext:
    return InvocationContext(execution_id=str(uuid.uuid4()), task_id="bench",
                             deadline=time.time() + spec.timeout_seconds)


def _timed_invoke(runtime: Runtime, spec: FunctionSpec, payload: object) -> tuple[float, bool]:
    started = time.perf_counter()
    outcome = runtime.invoke(spec, payload, _context(spec))
    elapsed = time.perf_counter() - started
    if outcome.status != "succeeded" or outcome.output != payload:
        raise RuntimeError(f"the bench function failed: {outcome}")
    return elapsed, outcome.cold


def _warm_series(runtime: Runtime, spec: FunctionSpec, count: int, first: int) -> list[float]:
    """`count` warm invocations; a cold one is a failure of the bench."""
    times = []
    for index in range(first, first + count):
        elapsed, was_cold = _timed_invoke(runtime, spec, {"n": index})
        if was_cold:
            raise RuntimeError(f"the {runtime.name} runtime did not reuse its warm runner")
        times.append(elapsed)
    return times


def _floor_run(client: docker.DockerClient, spec: FunctionSpec, payload: object) -> float:
    """`docker run --rm` of the image with the command, env, user and limits of the Job's pod,
    the request where the pod's Secret volume puts it."""
    context = _context(spec)
    request, nonce = runner_request(spec, payload, context)
    pod = job_manifest(spec, "floor", context)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    memory = 1024 * 1024 * spec.memory_mb
    with tempfile.TemporaryDirectory(prefix="kubefunction-bench-") as folder:
        Path(folder).chmod(0o755)
        (Path(folder) / REQUEST_KEY).write_bytes(request)
        (Path(folder) / REQUEST_KEY).chmod(0o444)
        started = time.perf_counter()
        out = client.containers.run(
            spec.image, entrypoint=container["command"], working_dir=container["workingDir"],
            environment={e["name"]: e["value"] for e in container["env"]},
            user=f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
            network_mode="none", read_only=True, tmpfs={"/tmp": "rw,nosuid,size=64m"},
            volumes={folder: {"bind": REQUEST_DIR, "mode": "ro"}},
            cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit=memory,
            memswap_limit=memory, init=True, remove=True, stdout=True, stderr=True)
        elapsed = time.perf_counter() - started
    if nonce.encode() not in out:  # the runner's framed answer carries the nonce
        raise RuntimeError(f"the floor container did not answer: {out[-300:]!r}")
    return elapsed


def _platform_trigger(runtime: str):
    """A trigger of the bench function registered on `runtime` (by a superuser, who may use any
    runtime), its version built by the worker."""
    from django.contrib.auth import get_user_model

    from functions.models import Function
    from functions.selectors import version_wait
    from functions.services import function_register
    from triggers.models import Trigger
    from triggers.services import trigger_create

    user, _ = get_user_model().objects.get_or_create(username="bench-kube",
                                                     defaults={"is_superuser": True})
    name = f"bench-kube-{runtime}"
    function = Function.objects.filter(name=name).first()
    if function is None:
        function = function_register(name=name, owner=user, filename="handler.py",
                                     data=BENCH_SOURCE, runtime=runtime).function
    version = version_wait(version=function.versions.order_by("-pk").first(), timeout=300)
    if version.status != "ready":
        raise RuntimeError(f"the bench function did not build for {runtime}: "
                           f"{version.build_log[-500:]}")
    trigger = Trigger.objects.filter(name=name).first() or trigger_create(
        name=name, function=function, user=user)
    return Trigger.objects.select_related("function__active_version").get(pk=trigger.pk)


def _platform_series(trigger, count: int) -> list[float]:
    """`count` dispatches of the trigger one at a time, dispatched -> finished each."""
    from celery.result import AsyncResult

    from executions.models import Execution
    from executions.services import execution_dispatch
    from kubefunction.celery import app

    times, task_ids = [], []
    for n in range(count):
        started = time.perf_counter()
        task_id = execution_dispatch(trigger=trigger, payload={"n": n}).task_id
        AsyncResult(task_id, app=app).get(timeout=60, interval=0.001)
        times.append(time.perf_counter() - started)
        task_ids.append(task_id)
    failed = Execution.objects.filter(task_id__in=task_ids).exclude(status="succeeded")
    if failed.exists():
        raise RuntimeError(f"bench executions did not succeed: {list(failed[:3])}")
    return times


def _through_the_platform(fake, count: int) -> dict:
    """Warm kubernetes (on `fake`) and warm docker through a worker, alternating in rounds."""
    import os

    from metrics.bench import worker_process

    worker_env = {"KUBEFUNCTION_KUBECONFIG": str(fake.kubeconfig_path),
                  "KUBEFUNCTION_KUBE_NAMESPACE": fake.namespace,
                  "KUBEFUNCTION_KUBE_MODE": "warm", "KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS": "0",
                  "KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS": "1"}
    saved = {key: os.environ.get(key) for key in worker_env}
    os.environ.update(worker_env)  # what the worker subprocess inherits
    kube, docker_times, requests = [], [], 0
    try:
        with worker_process():
            triggers = {runtime: _platform_trigger(runtime) for runtime in ("kubernetes",
                                                                            "docker")}
            for trigger in triggers.values():  # each worker child's first call is cold
                _platform_series(trigger, 10)
            for done in range(0, count, PLATFORM_ROUND):  # short rounds: the load drifts
                size = min(PLATFORM_ROUND, count - done)
                before = fake.request_count()
                kube += _platform_series(triggers["kubernetes"], size)
                requests += fake.request_count() - before
                docker_times += _platform_series(triggers["docker"], size)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {"platform_samples": count, "platform_kube_p50": percentile(kube, 0.5),
            "platform_kube_p95": percentile(kube, 0.95), "platform_kube_api_requests": requests,
            "platform_docker_p50": percentile(docker_times, 0.5),
            "platform_docker_p95": percentile(docker_times, 0.95)}


def run_kube_bench(*, samples: int = 10, warm_samples: int = 200,
                   platform: int = 0) -> KubeFigures:
    from tests.kube.fixtures import running_fake_kube  # the test tree (see the docstring)

    client = build_client()
    floor, cold, warm, docker_warm = [], [], [], []
    requests = 0
    through: dict = {}
    docker_runtime = DockerRuntime(PoolLimits(size=1, per_key=1, idle_seconds=600))
    try:
        built, _ = build_image(_spec(), client=client)
        spec = _spec(built.image)
        with tempfile.TemporaryDirectory(prefix="kubefunction-bench-") as folder, \
                running_fake_kube(Path(folder), "docker") as fake, override_settings(
                    KUBEFUNCTION_KUBECONFIG=str(fake.kubeconfig_path),
                    KUBEFUNCTION_KUBE_NAMESPACE=fake.namespace, KUBEFUNCTION_KUBE_MODE="cold",
                    KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS=0, KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS=1):
            runtime = KubernetesRuntime()
            try:
                _floor_run(client, spec, 0)  # one of each first, unmeasured
                _timed_invoke(runtime, spec, 0)
                for index in range(samples):
                    floor.append(_floor_run(client, spec, index))
                    cold.append(_timed_invoke(runtime, spec, index)[0])
                with override_settings(KUBEFUNCTION_KUBE_MODE="warm"):
                    warm_first, was_cold = _timed_invoke(runtime, spec, -1)
                    if not was_cold:
                        raise RuntimeError("the first warm invocation found a ready pod")
                    _timed_invoke(docker_runtime, spec, -1)  # its warm container started
                    per_round = max(1, warm_samples // ROUNDS)
                    for first in range(0, warm_samples, per_round):
                        count = min(per_round, warm_samples - first)
                        before = fake.request_count()
                        warm += _warm_series(runtime, spec, count, first)
                        requests += fake.request_count() - before
                        docker_warm += _warm_series(docker_runtime, spec, count, first)
                    runtime.release(spec)
            finally:
                runtime.close()
            if platform > 0:
                through = _through_the_platform(fake, platform)
    finally:
        docker_runtime.close()
        client.close()
    return KubeFigures(
        floor=percentile(floor, 0.5), cold=percentile(cold, 0.5), warm_first=warm_first,
        warm_p50=percentile(warm, 0.5), warm_p95=percentile(warm, 0.95),
        warm_api_requests=requests, docker_warm_p50=percentile(docker_warm, 0.5),
        docker_warm_p95=percentile(docker_warm, 0.95), samples=samples,
        warm_samples=warm_samples, image=spec.image, **through)
