"""Warm mode on the fake's docker kubelet: a Deployment's pods are real containers of the version's
image (built by `functions.images`), with no network, reached through their loopback pod IP."""

from __future__ import annotations

import time

import pytest

from executions.runtimes.kubernetes.client import PERMISSIONS
from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture
from tests.test_kubernetes_runtime import (  # noqa: F401 - runtime: a fixture
    context,
    deployment,
    handler_image,
    make_spec,
    runtime,
    used_long_ago,
)

WARM_HANDLER = r"""
import os, socket, time

def handle(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"event": event, "pid": os.getpid(), "host": socket.gethostname(),
            "uid": os.getuid(), "root_writable": os.access("/", os.W_OK),
            "interfaces": sorted(name for _, name in socket.if_nameindex())}
"""


@pytest.fixture(scope="module")
def warm_image():
    return handler_image("kube-warm-docker", WARM_HANDLER)


@pytest.fixture
def docker_warm(fake_kube, runtime, settings):  # noqa: F811
    settings.KUBEFUNCTION_KUBE_MODE = "warm"
    settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS = 0
    settings.KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS = 2
    settings.KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS = 300
    settings.KUBEFUNCTION_KUBE_START_GRACE = 20
    return runtime


def containers(fake) -> list[dict]:
    """This fake's containers, as the engine lists them (one call: no inspect that could race
    with their removal)."""
    return fake.kubelet.client.api.containers(all=True, filters={
        "label": f"{fake.kubelet.LABEL}={fake.kubelet.marker}"})


@pytest.mark.parametrize("fake_kube", ["docker"], indirect=True)
def test_warm_pods_are_containers_that_serve_and_scale_to_zero(fake_kube, docker_warm,  # noqa: F811
                                                               warm_image):
    spec = make_spec(function_name="kube-warm-docker", image=warm_image, timeout_seconds=20,
                     memory_mb=64)
    first = docker_warm.invoke(spec, {"n": 1}, context(seconds=30))
    assert first.status == "succeeded" and first.cold, first
    assert first.output["event"] == {"n": 1}
    # the real image's runner, hardened as the pod says, in a container without a network
    assert first.output["uid"] == 10001 and first.output["root_writable"] is False
    assert first.output["interfaces"] == ["lo"]
    [pod] = fake_kube.objects("pods")
    assert pod["status"]["podIP"].startswith("127.21.")
    [container] = containers(fake_kube)
    assert container["HostConfig"]["NetworkMode"] == "none"
    assert container["Id"].startswith(first.output["host"])  # the pod's container answered
    # Ready only once the readinessProbe answered through the tunnel: Running and not Ready first
    states = [(e.obj["status"].get("phase"), any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in e.obj["status"].get("conditions") or []))
        for e in fake_kube.cluster.history
        if e.plural == "pods" and e.obj["metadata"]["uid"] == pod["metadata"]["uid"]]
    assert ("Running", False) in states and states[-1] == ("Running", True)
    assert states.index(("Running", False)) < states.index(("Running", True))

    second = docker_warm.invoke(spec, {"n": 2}, context(seconds=30))
    assert second.status == "succeeded" and not second.cold, second
    assert (second.output["host"], second.output["pid"]) == (first.output["host"],
                                                             first.output["pid"])

    name = deployment(fake_kube)["metadata"]["name"]
    assert docker_warm.warm.scale_idle() == []  # just used
    used_long_ago(fake_kube, name)
    assert docker_warm.warm.scale_idle() == [name]
    assert deployment(fake_kube)["spec"]["replicas"] == 0
    assert fake_kube.wait_for(lambda: fake_kube.objects("pods") == [], timeout=20)
    end = time.monotonic() + 30
    while containers(fake_kube) and time.monotonic() < end:  # removed in the background
        time.sleep(0.1)
    assert containers(fake_kube) == []

    third = docker_warm.invoke(spec, {"n": 3}, context(seconds=30))  # from zero: a new pod
    assert third.status == "succeeded" and third.cold, third
    assert third.output["host"] != first.output["host"]

    docker_warm.release(spec)
    assert fake_kube.wait_for(lambda: not fake_kube.objects("deployments") and
                              not fake_kube.objects("pods"), timeout=20)
    assert set(fake_kube.api_calls) <= PERMISSIONS, set(fake_kube.api_calls) - PERMISSIONS


@pytest.mark.parametrize("fake_kube", ["docker"], indirect=True)
def test_warm_docker_pods_scale_up_and_time_out(fake_kube, docker_warm, warm_image):  # noqa: F811
    import concurrent.futures

    spec = make_spec(function_name="kube-warm-docker", image=warm_image, timeout_seconds=3,
                     memory_mb=64)
    assert docker_warm.invoke(spec, {}, context(seconds=30)).status == "succeeded"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda n: docker_warm.invoke(
            spec, {"sleep": 1, "n": n}, context(seconds=30)), range(2)))
    assert all(o.status == "succeeded" for o in outcomes), outcomes
    assert deployment(fake_kube)["spec"]["replicas"] == 2
    assert fake_kube.wait_for(lambda: len(containers(fake_kube)) == 2, timeout=20)

    slow = docker_warm.invoke(spec, {"sleep": 30}, context(seconds=3))
    assert slow.status == "timed_out", slow  # the busy pod is deleted: its container goes
    assert fake_kube.wait_for(lambda: all(
        p["status"].get("podIP") for p in fake_kube.objects("pods")), timeout=20)
    assert docker_warm.invoke(spec, {"n": 9}, context(seconds=30)).status == "succeeded"
    docker_warm.release(spec)
    assert fake_kube.wait_for(lambda: not fake_kube.objects("pods"), timeout=20)
