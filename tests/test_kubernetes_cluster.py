"""The Kubernetes runtime's contract, against the fake API server and, opt-in, a real cluster.

Every test here runs once per target of the `target` fixture:

- "fake": the fake API server with its docker kubelet (tests/kube/), always;
- "cluster": a real cluster, when KUBEFUNCTION_TEST_KUBECONFIG (or KUBECONFIG) names a
  kubeconfig whose API server answers. Each run works in a namespace of its own
  (`kf-test-<random>`), deleted at the end. The cluster must be able to pull the contract
  function's image: KUBEFUNCTION_TEST_IMAGE names one it can (see docs/kubernetes.md: the
  test tags the image it builds as `kubefunction-test/contract:v1`, which `kind load
  docker-image` or `minikube image load` hand to the cluster); without it, the image pushed
  to KUBEFUNCTION_REGISTRY is used.

The contract: a Job of a trivial image runs and its output comes back; a missing image fails
fast with ErrImagePull; a deadline ends `timed_out`, a busy loop (even one that ignores SIGTERM)
within deadline + MARGIN, cold and warm, its pod deleted without waiting for the grace period;
a memory hog ends OOMKilled (MemoryError); a redelivered invocation that meets 409 adopts the Job
of the first attempt instead of running the function again; a warm Deployment scales up from
zero and back, its idle pods gone at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass

import pytest

from executions.runtimes.base import InvocationContext
from executions.runtimes.kubernetes.manifests import job_manifest, job_name, request_secret
from executions.runtimes.kubernetes.runtime import KubernetesRuntime
from executions.runtimes.wire import runner_request
from functions.specs import FunctionSpec
from tests.runtimes import runtime_under
from tests.waiting import wait_until

CONTRACT_SOURCE = b"""\
import signal, time

def handle(event):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while event.get("busy"):
        pass
    if event.get("hog"):
        held = [bytearray(1024 * 1024) for _ in range(event["hog"])]
    return event
"""
# The documented bound: past its deadline a function ends timed_out within this many seconds.
MARGIN = 5.0
LOCAL_TAG = "kubefunction-test/contract:v1"
HOW_TO = ("set KUBEFUNCTION_TEST_KUBECONFIG (or KUBECONFIG) to a cluster's kubeconfig to run "
          "the Kubernetes contract against it (docs/kubernetes.md, 'The real-cluster suite')")


@dataclass
class Target:
    name: str
    kubeconfig: str
    namespace: str
    image: str
    start_seconds: float  # how long a pod may take to start (pull, schedule) on this target


def cluster_kubeconfig() -> str:
    return os.environ.get("KUBEFUNCTION_TEST_KUBECONFIG") or os.environ.get("KUBECONFIG", "")


def cluster_problem(kubeconfig: str) -> str | None:
    """Why the cluster cannot be used (None when its API server answers)."""
    if not kubeconfig:
        return f"no cluster: {HOW_TO}"
    from kubernetes import client, config

    try:
        api = config.new_client_from_config(config_file=kubeconfig)
        try:
            client.VersionApi(api).get_code(_request_timeout=5, _preload_content=False)
        finally:
            api.close()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip, saying why
        return f"the cluster of {kubeconfig} does not answer ({exc}); {HOW_TO}"
    return None


def spec(image: str, **overrides) -> FunctionSpec:
    values = {"version_id": -3, "function_name": "contract", "version_number": 1,
              "sha256": hashlib.sha256(CONTRACT_SOURCE).hexdigest(),
              "source_name": "handler.py", "read_source": lambda: CONTRACT_SOURCE,
              "image": image, "timeout_seconds": 60, "memory_mb": 64}
    values.update(overrides)
    return FunctionSpec(**values)


def context(seconds: float, execution_id: str | None = None) -> InvocationContext:
    return InvocationContext(execution_id=execution_id or str(uuid.uuid4()), task_id="contract",
                             deadline=time.time() + seconds)


@pytest.fixture(scope="module")
def contract_image() -> str:
    """The contract function's image, built and pushed by the platform's pipeline."""
    from tests.docker_engine import engine_problem

    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    import docker

    from functions import images

    built, _ = images.build_image(spec(""))
    with contextlib.closing(docker.from_env()) as client:  # for `kind load` / `minikube image load`
        client.images.get(built.image).tag(*LOCAL_TAG.split(":"))
    return built.image


@contextlib.contextmanager
def cluster_namespace(kubeconfig: str):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    name = f"kf-test-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name,
                                        "labels": {"app.kubernetes.io/part-of": "kubefunction"}}},
                          _request_timeout=10)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            core.delete_namespace(name, propagation_policy="Background", _request_timeout=10)
        api.close()


@pytest.fixture(scope="module", params=["fake", "cluster"])
def target(request, tmp_path_factory, contract_image):
    if request.param == "fake":
        from tests.kube.fixtures import running_fake_kube

        with running_fake_kube(tmp_path_factory.mktemp("fake-kube"), "docker") as fake:
            yield Target("fake", str(fake.kubeconfig_path), fake.namespace, contract_image, 10)
        return
    kubeconfig = cluster_kubeconfig()
    problem = cluster_problem(kubeconfig)
    if problem:
        pytest.skip(problem)
    image = os.environ.get("KUBEFUNCTION_TEST_IMAGE") or contract_image
    with cluster_namespace(kubeconfig) as namespace:
        yield Target("cluster", kubeconfig, namespace, image, 120)


@pytest.fixture
def runtime(target, settings):
    yield from runtime_under(
        settings, KubernetesRuntime, KUBEFUNCTION_KUBECONFIG=target.kubeconfig,
        KUBEFUNCTION_KUBE_NAMESPACE=target.namespace, KUBEFUNCTION_KUBE_MODE="cold",
        KUBEFUNCTION_KUBE_START_GRACE=int(target.start_seconds),
        KUBEFUNCTION_KUBE_WATCH_SECONDS=5, KUBEFUNCTION_KUBE_TIMEOUT=10)


def jobs_left(runtime: KubernetesRuntime, target: Target, seconds: float = 30) -> list[str]:
    """The contract Jobs still in the namespace once deletion had `seconds` to finish."""
    end = time.monotonic() + seconds
    while True:
        names = [job.metadata.name for job in runtime.kube.batch.list_namespaced_job(
            target.namespace, label_selector="kubefunction.io/function=contract",
            _request_timeout=10).items]
        if not names or time.monotonic() > end:
            return names
        time.sleep(0.2)


def test_job_runs_and_its_output_comes_back(target, runtime):
    outcome = runtime.invoke(spec(target.image), {"n": 7, "text": "héllo"},
                             context(60 + target.start_seconds))
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {"n": 7, "text": "héllo"} and outcome.cold
    assert jobs_left(runtime, target) == []


def test_missing_image_fails_fast_with_err_image_pull(target, runtime):
    repository = target.image.split("@", 1)[0].rsplit(":", 1)[0]
    missing = f"{repository}@sha256:{'0' * 64}"
    started = time.monotonic()
    outcome = runtime.invoke(spec(missing), {}, context(300))
    assert (outcome.status, outcome.error_type) == ("failed", "ImagePullError"), outcome
    assert ("ErrImagePull" in outcome.error or "ImagePullBackOff" in outcome.error), outcome
    assert time.monotonic() - started < target.start_seconds  # not left hanging to the deadline
    assert jobs_left(runtime, target) == []


def test_deadline_ends_timed_out(target, runtime):
    function = spec(target.image, timeout_seconds=3)
    started = time.monotonic()
    outcome = runtime.invoke(function, {"sleep": 60}, context(3))
    assert (outcome.status, outcome.error_type) == ("timed_out", "Timeout"), outcome
    assert time.monotonic() - started < 3 + target.start_seconds + 15
    assert jobs_left(runtime, target) == []


def pods_left(runtime: KubernetesRuntime, target: Target) -> list[str]:
    return [pod.metadata.name for pod in runtime.kube.core.list_namespaced_pod(
        target.namespace, label_selector="kubefunction.io/function=contract",
        _request_timeout=10).items]


@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_busy_loop_past_its_deadline_is_timed_out_on_time(target, runtime, settings,
                                                          ignore_sigterm):
    """`while True: pass` with a 3 s timeout: timed_out at the deadline, not after the grace
    period (30 s here, as the default; it must not be waited for)."""
    settings.KUBEFUNCTION_KUBE_GRACE_SECONDS = 30
    function = spec(target.image, timeout_seconds=3)
    started = time.monotonic()
    outcome = runtime.invoke(function, {"busy": True, "ignore_sigterm": ignore_sigterm},
                             context(3))
    took = time.monotonic() - started
    assert (outcome.status, outcome.error_type) == ("timed_out", "Timeout"), outcome
    assert took < 3 + MARGIN, took
    ended = time.monotonic()
    assert jobs_left(runtime, target) == [] and wait_until(
        lambda: pods_left(runtime, target) == [], 5)
    assert time.monotonic() - ended < 5  # the pod did not linger for its 30 s


def test_memory_hog_is_oomkilled(target, runtime):
    outcome = runtime.invoke(spec(target.image, memory_mb=64), {"hog": 512},
                             context(60 + target.start_seconds))
    assert (outcome.status, outcome.error_type) == ("failed", "MemoryError"), outcome
    assert "64 MiB" in outcome.error
    assert jobs_left(runtime, target) == []


def test_warm_scales_up_from_zero_and_back(target, runtime, settings):
    """Warm mode: the first invocation scales the Deployment up from zero (cold), the next is
    served warm, a busy loop past its deadline is timed_out on time and its pod replaced, and
    an idle Deployment scales back to zero with its pods gone at once (the idle runner exits
    on SIGTERM, a 30 s grace period is not waited for)."""
    from executions.runtimes.kubernetes.manifests import LAST_USED, timestamp, warm_name

    settings.KUBEFUNCTION_KUBE_MODE = "warm"
    settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS = 0
    settings.KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS = 1
    settings.KUBEFUNCTION_KUBE_GRACE_SECONDS = 30
    function = spec(target.image, timeout_seconds=3)
    name = warm_name(function)
    try:
        first = runtime.invoke(function, {"n": 1}, context(3 + target.start_seconds))
        assert first.status == "succeeded" and first.cold and first.output == {"n": 1}, first
        second = runtime.invoke(function, {"n": 2}, context(3))
        assert second.status == "succeeded" and not second.cold, second
        started = time.monotonic()
        busy = runtime.invoke(function, {"busy": True, "ignore_sigterm": True}, context(3))
        assert (busy.status, busy.error_type) == ("timed_out", "Timeout"), busy
        assert time.monotonic() - started < 3 + MARGIN
        again = runtime.invoke(function, {"n": 3}, context(3 + target.start_seconds))
        assert again.status == "succeeded", again  # a new pod serves
        runtime.kube.apps.patch_namespaced_deployment(name, target.namespace, {"metadata": {
            "annotations": {LAST_USED: timestamp(time.time() - 3600)}}}, _request_timeout=10)
        started = time.monotonic()
        assert runtime.warm.scale_idle() == [name]
        assert wait_until(lambda: pods_left(runtime, target) == [], 10)
        assert time.monotonic() - started < 10  # not the 30 s grace period
        assert runtime.kube.apps.read_namespaced_deployment(
            name, target.namespace, _request_timeout=10).spec.replicas == 0
    finally:
        runtime.release(function)


def test_redelivery_adopts_the_first_attempts_job(target, runtime):
    """The first attempt created its Job and died; the redelivered task meets 409, adopts that
    Job and returns its answer (the first attempt's payload), never running a second Job."""
    function = spec(target.image)
    execution = context(60 + target.start_seconds)
    first, _ = runner_request(function, {"attempt": 1}, execution)
    name = job_name(function.function_name, execution.execution_id)
    created = runtime.kube.batch.create_namespaced_job(
        target.namespace, job_manifest(function, name, execution), _preload_content=False,
        _request_timeout=10)
    job = json.loads(created.data)
    runtime.kube.core.create_namespaced_secret(target.namespace, request_secret(job, first),
                                          _request_timeout=10)
    outcome = runtime.invoke(function, {"attempt": 2}, execution)
    assert outcome.status == "succeeded" and outcome.output == {"attempt": 1}, outcome
    # A second Job would have answered {"attempt": 2}: the first one's, adopted, answered.
    assert job["metadata"]["uid"] and jobs_left(runtime, target) == []


def test_skipped_without_a_cluster_says_how_to_enable_it(tmp_path):
    assert "KUBEFUNCTION_TEST_KUBECONFIG" in cluster_problem("")
    missing = str(tmp_path / "nowhere.yaml")
    assert "does not answer" in cluster_problem(missing)
    assert "KUBEFUNCTION_TEST_KUBECONFIG" in cluster_problem(missing)
