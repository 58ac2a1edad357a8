"""The kubernetes runtime against the fake API server (scripted kubelet, and the docker one)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid

import pytest

from executions.runtimes import RUNTIMES
from executions.runtimes.base import InvocationContext, RuntimeFailure, RuntimeUnavailable
from executions.runtimes.kubernetes.client import COLD_PERMISSIONS, PERMISSIONS
from executions.runtimes.kubernetes.manifests import job_manifest, job_name
from executions.runtimes.kubernetes.runtime import KubernetesRuntime
from functions.specs import FunctionSpec
from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture
from tests.runtimes import runtime_under

IMAGE = "127.0.0.1:5000/kubefunction/hello@sha256:" + "a" * 64


def make_spec(**overrides) -> FunctionSpec:
    values = {"version_id": 1, "function_name": "hello", "version_number": 3, "sha256": "0" * 64,
              "source_name": "handler.py", "read_source": lambda: b"", "image": IMAGE,
              "timeout_seconds": 5, "memory_mb": 128, "env": {"GREETING": "hi"}}
    values.update(overrides)
    return FunctionSpec(**values)


def context(seconds: float = 5, execution_id: str | None = None) -> InvocationContext:
    return InvocationContext(execution_id=execution_id or str(uuid.uuid4()), task_id="t-1",
                             deadline=time.time() + seconds)


@pytest.fixture
def runtime(fake_kube, settings):  # noqa: F811 - pytest fixtures are passed by name
    yield from runtime_under(
        settings, KubernetesRuntime, KUBEFUNCTION_KUBECONFIG=str(fake_kube.kubeconfig_path),
        KUBEFUNCTION_KUBE_NAMESPACE=fake_kube.namespace, KUBEFUNCTION_KUBE_START_GRACE=3,
        KUBEFUNCTION_KUBE_WATCH_SECONDS=2, KUBEFUNCTION_KUBE_TIMEOUT=5)


def gone(fake) -> bool:
    return fake.wait_for(lambda: fake.objects("jobs") == [] and fake.objects("pods") == [])


def test_registered_and_named():
    assert RUNTIMES["kubernetes"].endswith("KubernetesRuntime")
    name = job_name("My_Function.With.A-Very-Long-Name-" + "x" * 80, "0123abcd-ef45-6789")
    assert name.startswith("kf-my-function-with-a-very-long-name-") and name.endswith(
        "-0123abcdef45")
    assert len(name) <= 63
    retry = job_name("My_Function.With.A-Very-Long-Name-" + "x" * 80, "0123abcd-ef45-6789", 12)
    assert retry.endswith("-0123abcdef45-12") and len(retry) <= 63


def test_manifest_is_hardened():
    spec = make_spec(env={"KUBEFUNCTION_REQUEST": "forged", "A": "1"})
    job = job_manifest(spec, "kf-hello-x", context())
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 5
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "request", "mountPath": "/var/run/kubefunction/request", "readOnly": True}]
    assert pod["volumes"][0]["emptyDir"]
    # the request comes from the Job's own Secret, never from the spec
    assert pod["volumes"][1]["secret"]["secretName"] == "kf-hello-x"
    assert pod["terminationGracePeriodSeconds"] == 2
    assert container["resources"]["limits"]["memory"] == "128Mi"
    assert container["resources"]["requests"]["memory"] == "128Mi"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBEFUNCTION_REQUEST"] == "forged" and env["A"] == "1"  # the function's own
    assert "--request-file" in container["command"]
    labels = job["metadata"]["labels"]
    assert labels["kubefunction.io/function"] == "hello"
    assert labels["kubefunction.io/version"] == "3"
    assert labels["app.kubernetes.io/managed-by"] == "kubefunction"
    # the default-deny NetworkPolicy of k8s/base selects function pods on this label
    assert job["spec"]["template"]["metadata"]["labels"]["io.kubefunction.managed"] == "true"


def test_success_returns_the_output_and_cleans_up(fake_kube, runtime):  # noqa: F811
    fake_kube.script("succeed", output={"sum": 3}, logs="printed\n")
    outcome = runtime.invoke(make_spec(), {"a": 1}, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {"sum": 3} and "printed" in outcome.logs and outcome.cold
    assert gone(fake_kube)
    calls = set(fake_kube.api_calls)
    assert ("create", "jobs") in calls and ("watch", "pods") in calls
    assert ("get", "pods/log") in calls and ("delete", "jobs") in calls
    assert ("get", "pods") not in calls  # watched, never polled


def test_the_request_reaches_the_pod(fake_kube, runtime):  # noqa: F811
    fake_kube.script("succeed")  # echoes the event
    outcome = runtime.invoke(make_spec(), {"echo": [1, 2]}, context())
    assert outcome.output == {"echo": [1, 2]}


@pytest.mark.parametrize("script, options, status, error_type, exit_code", [
    ("fail", {"error_type": "KeyError", "error": "'x'", "code": 1}, "failed", "KeyError", 1),
    ("exit", {"code": 3, "logs": "Segfault-ish\n"}, "failed", "ProcessExited", 3),
    ("oom", {}, "failed", "MemoryError", 137),
    ("waiting", {"reason": "ErrImagePull"}, "failed", "ImagePullError", None),
    ("waiting", {"reason": "ImagePullBackOff"}, "failed", "ImagePullError", None),
    ("crashloop", {}, "failed", "CrashLoopBackOff", 1),
])
def test_failures(fake_kube, runtime, script, options, status, error_type,  # noqa: F811
                  exit_code):
    fake_kube.script(script, **options)
    started = time.monotonic()
    outcome = runtime.invoke(make_spec(), {}, context(seconds=10))
    assert time.monotonic() - started < 3  # failed fast, not at the deadline
    assert (outcome.status, outcome.error_type, outcome.exit_code) == (
        status, error_type, exit_code), outcome
    if script == "exit":
        assert "Segfault-ish" in outcome.logs and "code 3" in outcome.error
    if script == "oom":
        assert "128 MiB" in outcome.error
    if script == "waiting":
        assert options["reason"] in outcome.error and IMAGE in outcome.error
    assert gone(fake_kube)


def test_deadline_exceeded_is_timed_out(fake_kube, runtime):  # noqa: F811
    fake_kube.script("hang")
    started = time.monotonic()
    outcome = runtime.invoke(make_spec(timeout_seconds=1), {}, context(seconds=1))
    assert outcome.status == "timed_out" and outcome.error_type == "Timeout", outcome
    assert time.monotonic() - started < 3
    assert gone(fake_kube)


def test_eviction_is_retried(fake_kube, runtime):  # noqa: F811
    fake_kube.script("evict")
    execution = context()
    with pytest.raises(RuntimeUnavailable, match="Evicted"):
        runtime.invoke(make_spec(), {}, execution)
    assert gone(fake_kube)  # deleted, so the retry can create the Job again
    fake_kube.script("succeed", output="second")
    assert runtime.invoke(make_spec(), {}, execution).output == "second"


@pytest.mark.parametrize("verb, resource", [
    ("create", "jobs"), ("watch", "pods"), ("list", "pods"), ("get", "pods/log")])
def test_api_500_is_unavailable(fake_kube, runtime, verb, resource):  # noqa: F811
    fake_kube.fail(verb, resource)
    with pytest.raises(RuntimeUnavailable, match="500"):
        runtime.invoke(make_spec(), {}, context())


def test_redelivery_adopts_the_existing_job(fake_kube, runtime):  # noqa: F811
    """A worker dies after creating the Job: the redelivered task meets 409, adopts the Job
    and reads the first attempt's answer; exactly one Job ever exists."""
    execution = context()
    fake_kube.script("succeed", output="once", delay=0.3)
    fake_kube.script("succeed", output="twice")  # what a second Job would answer
    fake_kube.fail("watch", "pods")  # the first attempt loses the API after creating its Job
    with pytest.raises(RuntimeUnavailable):
        runtime.invoke(make_spec(), {"n": 1}, execution)
    assert len(fake_kube.objects("jobs")) == 1  # left running for the retry
    outcome = runtime.invoke(make_spec(), {"n": 1}, execution)
    assert outcome.status == "succeeded" and outcome.output == "once", outcome
    assert fake_kube.api_calls.count(("create", "jobs")) == 2
    created = [e for e in fake_kube.cluster.history if e.plural == "jobs" and e.type == "ADDED"]
    assert len(created) == 1
    assert gone(fake_kube)


def test_a_retry_gets_a_job_of_its_own(fake_kube, runtime):  # noqa: F811
    """Attempt 2 of an execution whose attempt 1 left its (failed) Job behind runs in a new Job
    and reads its own answer, not attempt 1's."""
    first = context()
    fake_kube.script("succeed", output="attempt 1", delay=0.3)
    fake_kube.script("succeed", output="attempt 2")
    fake_kube.fail("watch", "pods")  # attempt 1 loses the API after creating its Job
    with pytest.raises(RuntimeUnavailable):
        runtime.invoke(make_spec(), {}, first)
    retry = InvocationContext(execution_id=first.execution_id, task_id=first.task_id,
                              deadline=time.time() + 5, attempt=2)
    outcome = runtime.invoke(make_spec(), {}, retry)
    assert outcome.status == "succeeded" and outcome.output == "attempt 2", outcome
    names = {e.obj["metadata"]["name"] for e in fake_kube.cluster.history
             if e.plural == "jobs" and e.type == "ADDED"}
    assert names == {job_name("hello", first.execution_id),
                     job_name("hello", first.execution_id, attempt=2)}
    assert len(names) == 2


def test_another_executions_job_is_not_adopted(fake_kube, runtime):  # noqa: F811
    first = str(uuid.uuid4())
    second = first[:13] + "0000-0000-000000000000"  # same first 12 characters, same Job name
    fake_kube.script("hang")
    fake_kube.fail("watch", "pods")
    with pytest.raises(RuntimeUnavailable):
        runtime.invoke(make_spec(), {}, context(execution_id=first))
    with pytest.raises(RuntimeFailure, match="another execution"):
        runtime.invoke(make_spec(), {}, context(execution_id=second))


def test_unauthorized_is_a_failure(fake_kube, runtime, tmp_path, settings):  # noqa: F811
    config = json.loads(fake_kube.kubeconfig_path.read_text())
    config["users"][0]["user"]["token"] = "wrong"
    path = tmp_path / "bad-kubeconfig"
    path.write_text(json.dumps(config))
    settings.KUBEFUNCTION_KUBECONFIG = str(path)
    with pytest.raises(RuntimeFailure, match="401"):
        KubernetesRuntime().invoke(make_spec(), {}, context())
    ok, detail = KubernetesRuntime().health()
    assert not ok and "401" in detail


# --- the docker kubelet: the version's real image runs as a Job --------------------------------

HANDLER = r"""
import os

def handle(event, context):
    if event.get("allocate"):
        chunks = [bytearray(1024 * 1024) for _ in range(event["allocate"])]
    if event.get("exit"):
        os.write(2, b"going down\n")
        os._exit(event["exit"])
    print("hello from the pod")
    writable = os.access("/", os.W_OK)
    return {"event": event, "uid": os.getuid(), "root_writable": writable,
            "request_env": os.environ.get("KUBEFUNCTION_REQUEST"),
            "greeting": os.environ.get("GREETING"), "execution": context.execution_id}
"""


def handler_image(function_name: str, handler: str) -> str:
    """The image `functions.images` builds for a zip holding `handler` as handler.py (the test
    is skipped without a Docker engine)."""
    from tests.docker_engine import engine_problem

    if engine_problem():
        pytest.skip(engine_problem())
    import hashlib

    from functions import images
    from tests.archives import make_zip

    data = make_zip({"handler.py": handler})
    spec = make_spec(function_name=function_name, source_name="code.zip",
                     read_source=lambda: data, sha256=hashlib.sha256(data).hexdigest(), image="")
    built, _ = images.build_image(spec)
    return built.image


@pytest.fixture(scope="module")
def built_image():
    return handler_image("kube-docker", HANDLER)


@pytest.mark.parametrize("fake_kube", ["docker"], indirect=True)
def test_docker_kubelet_runs_the_image_as_a_job(fake_kube, runtime, built_image):  # noqa: F811
    spec = make_spec(function_name="kube-docker", image=built_image, timeout_seconds=20,
                     memory_mb=64)
    execution = context(seconds=20)
    outcome = runtime.invoke(spec, {"n": 7}, execution)
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {"event": {"n": 7}, "uid": 10001, "root_writable": False,
                              "request_env": None, "greeting": "hi",
                              "execution": execution.execution_id}
    assert "hello from the pod" in outcome.logs
    failed = runtime.invoke(spec, {"exit": 5}, context(seconds=20))
    assert (failed.status, failed.error_type, failed.exit_code) == (
        "failed", "ProcessExited", 5), failed
    assert "going down" in failed.logs
    oom = runtime.invoke(spec, {"allocate": 256}, context(seconds=20))
    assert (oom.status, oom.error_type) == ("failed", "MemoryError"), oom
    missing = built_image.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
    started = time.monotonic()
    pull = runtime.invoke(make_spec(image=missing), {}, context(seconds=20))
    assert (pull.status, pull.error_type) == ("failed", "ImagePullError"), pull
    assert "ErrImagePull" in pull.error and time.monotonic() - started < 10
    assert gone(fake_kube)
    # Only this fake's containers: the session worker's own fake may be running others. (The
    # low-level list: the high-level one inspects each container and may race with a removal.)
    left = fake_kube.kubelet.client.api.containers(all=True, filters={
        "label": f"{fake_kube.kubelet.LABEL}={fake_kube.kubelet.marker}"})
    assert left == []


def test_watch_expiry_410_relists(fake_kube, runtime):  # noqa: F811
    fake_kube.script("succeed", output="after 410", creating=0.2)
    fake_kube.fail("watch", "pods", code=410)
    outcome = runtime.invoke(make_spec(), {}, context())
    assert outcome.output == "after 410", outcome
    assert fake_kube.api_calls.count(("list", "pods")) == 2  # the fresh list after 410


@pytest.mark.django_db
@pytest.mark.parametrize("fake_kube", ["docker"], indirect=True)
def test_registered_function_runs_through_the_run_service(fake_kube, settings, user):  # noqa: F811
    """Register with runtime=kubernetes, build the image, dispatch, run (as the task does) on
    the docker kubelet, and read the output from the execution."""
    from executions.models import Execution
    from executions.runtimes import get_runtime
    from executions.services import execution_dispatch, execution_run
    from functions import builds
    from functions.services import function_register
    from tests.archives import make_zip
    from tests.docker_engine import engine_problem
    from triggers.services import trigger_create

    if engine_problem():
        pytest.skip(engine_problem())
    settings.KUBEFUNCTION_KUBECONFIG = str(fake_kube.kubeconfig_path)
    settings.KUBEFUNCTION_KUBE_NAMESPACE = fake_kube.namespace
    runtime = get_runtime("kubernetes")
    runtime.close()  # the shared instance builds its client for this fake
    try:
        version = function_register(
            name="kube-e2e", owner=user, filename="code.zip", runtime="kubernetes",
            data=make_zip({"handler.py": "def handle(event, context):\n"
                                         "    return {'double': event['n'] * 2,\n"
                                         "            'v': context.function_version}\n"}))
        version = builds.version_build(version_id=version.pk)
        assert version.status == "ready" and version.image, version.build_log
        trigger = trigger_create(name="kube-e2e", function=version.function)
        execution = execution_dispatch(trigger=trigger, payload={"n": 21})
        outcome = execution_run(execution_id=str(execution.pk), worker="pytest")
        assert outcome is not None and outcome.status == "succeeded", outcome
        stored = Execution.objects.get(task_id=execution.task_id)
        assert (stored.status, stored.output, stored.runtime) == (
            "succeeded", {"double": 42, "v": 1}, "kubernetes")
        assert gone(fake_kube)
    finally:
        runtime.close()


def test_health(fake_kube, runtime):  # noqa: F811
    ok, detail = runtime.health()
    assert ok and fake_kube.url in detail and fake_kube.namespace in detail


def test_the_runtime_stays_within_its_declared_permissions(fake_kube, runtime):  # noqa: F811
    """PERMISSIONS is what the platform's Role must grant: every call made is in it."""
    for script in ("succeed", "oom", "evict", "hang"):
        fake_kube.script(script)
        with contextlib.suppress(RuntimeUnavailable):
            runtime.invoke(make_spec(timeout_seconds=1), {}, context(seconds=1))
    runtime.health()
    fake_kube.fail("watch", "pods", code=410)
    fake_kube.script("succeed")
    runtime.invoke(make_spec(), {}, context())
    # past the deadline: a pod that ignores SIGTERM is deleted at once; a pod gone without a
    # status leaves the Job to watch; an earlier Job's Secret is replaced; a Job adopted
    fake_kube.cluster.deadline_order = "failed-first"
    fake_kube.script("hang", on_sigterm="ignore")
    runtime.invoke(make_spec(timeout_seconds=1), {}, context(seconds=1))
    fake_kube.cluster.deadline_order = "without-pod-status"
    fake_kube.script("hang")
    runtime.invoke(make_spec(timeout_seconds=1), {}, context(seconds=1))
    execution = context()
    fake_kube.cluster.create("secrets", fake_kube.namespace, {"metadata": {
        "name": job_name("hello", execution.execution_id), "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": "old", "uid": "gone"}]}})
    fake_kube.script("succeed", delay=0.3)
    fake_kube.fail("watch", "pods")
    with contextlib.suppress(RuntimeUnavailable):
        runtime.invoke(make_spec(), {}, execution)
    runtime.invoke(make_spec(), {}, execution)  # adopts the Job and reads its Secret
    used = {call for call in fake_kube.api_calls}
    assert used <= PERMISSIONS, used - PERMISSIONS
    assert COLD_PERMISSIONS - used == set()


# --- warm mode: a Deployment + Service per version, the real runner serving HTTP ---------------

WARM_HANDLER = r"""
import os, time

def handle(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "event": event}
"""


@pytest.fixture
def warm(fake_kube, runtime, settings, tmp_path):  # noqa: F811
    import socket

    source = tmp_path / "src"
    source.mkdir()
    (source / "handler.py").write_text(WARM_HANDLER)
    fake_kube.kubelet.serve_root = str(source)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings.KUBEFUNCTION_KUBE_WARM_PORT = probe.getsockname()[1]
    settings.KUBEFUNCTION_KUBE_MODE = "warm"
    settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS = 0
    settings.KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS = 2
    settings.KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS = 300
    return runtime


def deployment(fake) -> dict:
    found = fake.objects("deployments")
    assert len(found) == 1
    return found[0]


def used_long_ago(fake, name: str, seconds: float = 3600) -> None:
    """Stamp the warm Deployment `name` as last used `seconds` ago (as a worker would have)."""
    from executions.runtimes.kubernetes.manifests import LAST_USED, timestamp

    fake.cluster.patch("deployments", fake.namespace, name, {
        "metadata": {"annotations": {LAST_USED: timestamp(time.time() - seconds)}}})


def test_warm_serves_scales_to_zero_and_back(fake_kube, warm):  # noqa: F811
    spec = make_spec(timeout_seconds=10)
    first = warm.invoke(spec, {"n": 1}, context(seconds=10))
    assert first.status == "succeeded" and first.cold, first
    second = warm.invoke(spec, {"n": 2}, context(seconds=10))
    assert second.status == "succeeded" and not second.cold, second
    assert second.output["pid"] == first.output["pid"]  # the same warm pod served both
    assert second.output["event"] == {"n": 2}
    assert deployment(fake_kube)["spec"]["replicas"] == 1
    [service] = fake_kube.objects("services")
    assert service["spec"]["selector"] == deployment(fake_kube)["spec"]["selector"][
        "matchLabels"]
    pod = fake_kube.objects("pods")[0]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["labels"]["io.kubefunction.managed"] == "true"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    name = deployment(fake_kube)["metadata"]["name"]
    assert warm.warm.scale_idle() == []  # used just now
    used_long_ago(fake_kube, name)
    assert warm.warm.scale_idle() == [name]
    assert deployment(fake_kube)["spec"]["replicas"] == 0
    assert fake_kube.wait_for(lambda: fake_kube.objects("pods") == [])
    third = warm.invoke(spec, {"n": 3}, context(seconds=10))  # waits for readiness again
    assert third.status == "succeeded" and third.cold, third
    assert third.output["pid"] != first.output["pid"]

    warm.release(spec)
    assert fake_kube.wait_for(lambda: not fake_kube.objects("deployments") and
                              not fake_kube.objects("services") and
                              not fake_kube.objects("pods"))
    assert not fake_kube.kubelet.processes
    used = set(fake_kube.api_calls)
    assert used <= PERMISSIONS, used - PERMISSIONS


def test_warm_scales_up_with_concurrent_load(fake_kube, warm):  # noqa: F811
    import concurrent.futures

    spec = make_spec(timeout_seconds=10)
    assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda n: warm.invoke(spec, {"sleep": 0.5, "n": n},
                                                       context(seconds=10)), range(2)))
    assert all(o.status == "succeeded" for o in outcomes), outcomes
    assert deployment(fake_kube)["spec"]["replicas"] == 2  # in flight: 2, max: 2
    warm.release(spec)


def test_warm_timeout_replaces_the_busy_pod(fake_kube, warm):  # noqa: F811
    spec = make_spec(timeout_seconds=1)
    assert warm.invoke(spec, {}, context(seconds=5)).status == "succeeded"
    busy = fake_kube.objects("pods")[0]["metadata"]["name"]
    outcome = warm.invoke(spec, {"sleep": 5}, context(seconds=1))
    assert outcome.status == "timed_out" and outcome.error_type == "Timeout", outcome
    assert fake_kube.wait_for(lambda: busy not in {
        p["metadata"]["name"] for p in fake_kube.objects("pods")})
    assert warm.invoke(spec, {"n": 1}, context(seconds=5)).status == "succeeded"
    warm.release(spec)


# --- the runner's pod modes ----------------------------------------------------------------------

RUNNER_REQUEST = {"nonce": "0123456789abcdef0123456789abcdef", "event": {"a": 1},
                  "context": {"execution_id": "e"}}


def runner_source(tmp_path):
    (tmp_path / "handler.py").write_text(
        "import os\ndef handle(event):\n    print('printed')\n"
        "    return [event, os.environ.get('KF_REQ')]\n")
    from functions import runner

    return [sys.executable, "-I", "-S", runner.__file__, "--root", str(tmp_path), "--handler",
            "handler.handle"]


def test_runner_request_env_mode(tmp_path):
    from executions.runtimes.kubernetes import outcomes as ko

    result = subprocess.run(
        [*runner_source(tmp_path), "--request-env", "KF_REQ"], capture_output=True, timeout=30,
        env={"KF_REQ": json.dumps(RUNNER_REQUEST)})
    assert result.returncode == 0, result.stderr
    outcome = ko.outcome(ko.Verdict(ko.RAN, exit_code=0, read_log=True),
                         result.stdout + result.stderr, RUNNER_REQUEST["nonce"], memory_mb=64)
    # the request left the environment before the function ran
    assert outcome.output == [{"a": 1}, None] and "printed" in outcome.logs
    empty = subprocess.run([*runner_source(tmp_path), "--request-env", "KF_REQ"],
                           capture_output=True, timeout=30, env={})
    assert empty.returncode == 2 and b"$KF_REQ holds no request" in empty.stderr


def test_runner_http_mode(tmp_path):
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([*runner_source(tmp_path), "--http", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < end and process.poll() is None
                time.sleep(0.05)
        body = json.dumps(RUNNER_REQUEST).encode() + b"\n"
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/invoke", data=body), timeout=5) as response:
            answer = response.read()
        assert answer.startswith(b"\n\x1eKUBEFUNCTION-RESULT " + RUNNER_REQUEST["nonce"].encode())
        assert b'"output": [{"a": 1}, null]' in answer
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/invoke", data=b"not json\n"), timeout=5)
        assert bad.value.code == 400
    finally:
        process.kill()
        process.wait()
