"""The fake API server's Secrets, graceful pod deletion and Job deadline: as on a cluster."""

from __future__ import annotations

import base64
import json
import time

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.kube.server import DEADLINE_ORDERS


@pytest.fixture
def api(fake_kube):
    api_client = config.new_client_from_config(config_file=str(fake_kube.kubeconfig_path))
    yield api_client
    api_client.close()


def job(name: str, *, grace: int | None = 1, deadline: int | None = None) -> dict:
    pod = {"restartPolicy": "Never", "containers": [
        {"name": "function", "image": "127.0.0.1:5000/kf/x@sha256:" + "0" * 64}]}
    if grace is not None:
        pod["terminationGracePeriodSeconds"] = grace
    return {"metadata": {"name": name}, "spec": {
        "backoffLimit": 0, "activeDeadlineSeconds": deadline,
        "template": {"metadata": {"labels": {"app": "kf"}}, "spec": pod}}}


def the_pod(fake) -> dict:
    assert fake.wait_for(lambda: len(fake.objects("pods")) == 1 and "running" in json.dumps(
        fake.objects("pods")[0]["status"]))
    return fake.objects("pods")[0]


def test_secrets_are_stored_like_the_api_server(fake_kube, api):
    core = client.CoreV1Api(api)
    ns = fake_kube.namespace
    created = core.create_namespaced_secret(ns, {
        "metadata": {"name": "s1"}, "data": {"a": base64.b64encode(b"\x00bytes").decode()},
        "stringData": {"b": "text"}})
    assert created.type == "Opaque" and created.metadata.uid
    read = core.read_namespaced_secret("s1", ns)
    assert base64.b64decode(read.data["a"]) == b"\x00bytes"
    assert base64.b64decode(read.data["b"]) == b"text"  # stringData is write-only
    assert not getattr(read, "string_data", None)
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_secret(ns, {"metadata": {"name": "s1"}})
    assert exists.value.status == 409
    assert json.loads(exists.value.body)["reason"] == "AlreadyExists"
    for data in ({"a": "not base64!"}, {"bad key": "YQ=="},
                 {"big": base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()}):
        with pytest.raises(ApiException) as invalid:
            core.create_namespaced_secret(ns, {"metadata": {"name": "s2"}, "data": data})
        assert invalid.value.status == 422, data
    core.delete_namespaced_secret("s1", ns)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret("s1", ns)
    assert missing.value.status == 404


@pytest.mark.parametrize("policy, left", [("Background", 0), ("Foreground", 0), ("Orphan", 1)])
def test_a_secret_owned_by_a_job_goes_with_it(fake_kube, api, policy, left):
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ns = fake_kube.namespace
    fake_kube.script("hang")
    owner = batch.create_namespaced_job(ns, job("owner"))
    core.create_namespaced_secret(ns, {"metadata": {"name": "owner", "ownerReferences": [{
        "apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": owner.metadata.uid}]}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "unowned"}})
    batch.delete_namespaced_job("owner", ns, propagation_policy=policy)
    assert fake_kube.wait_for(lambda: not fake_kube.objects("jobs"))
    assert fake_kube.wait_for(lambda: len(fake_kube.objects("secrets")) == 1 + left)
    assert "unowned" in {s["metadata"]["name"] for s in fake_kube.objects("secrets")}


@pytest.mark.parametrize("on_sigterm, code, lasts", [("ignore", 137, 1.0), ("exit", 143, 0.0)])
def test_pod_deletion_waits_for_its_container(fake_kube, api, on_sigterm, code, lasts):
    """SIGTERM, then SIGKILL after terminationGracePeriodSeconds; the pod stays, with a
    deletionTimestamp, until its container is gone."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ns = fake_kube.namespace
    fake_kube.script("hang", on_sigterm=on_sigterm)
    batch.create_namespaced_job(ns, job("graceful", grace=1))
    name = the_pod(fake_kube)["metadata"]["name"]
    started = time.monotonic()
    core.delete_namespaced_pod(name, ns)
    if lasts:
        pod = core.read_namespaced_pod(name, ns)  # still there, terminating
        assert pod.metadata.deletion_timestamp and pod.metadata.deletion_grace_period_seconds == 1
    assert fake_kube.wait_for(lambda: not fake_kube.objects("pods"), timeout=5)
    took = time.monotonic() - started
    assert lasts <= took < lasts + 0.8, took
    [last] = [e.obj for e in fake_kube.cluster.history if e.plural == "pods"
              and e.type == "MODIFIED" and "terminated" in json.dumps(e.obj["status"])][-1:]
    assert last["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == code


def test_the_default_grace_is_30_seconds_and_zero_is_at_once(fake_kube, api):
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ns = fake_kube.namespace
    fake_kube.script("hang", on_sigterm="ignore")
    batch.create_namespaced_job(ns, job("slow", grace=None))
    pod = the_pod(fake_kube)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30  # defaulted, as the API does
    core.delete_namespaced_pod(pod["metadata"]["name"], ns)
    assert core.read_namespaced_pod(pod["metadata"]["name"], ns).metadata. \
        deletion_grace_period_seconds == 30
    started = time.monotonic()
    core.delete_namespaced_pod(pod["metadata"]["name"], ns, grace_period_seconds=0)  # shortens it
    assert not fake_kube.objects("pods") and time.monotonic() - started < 0.5
    assert ("pods", pod["metadata"]["name"], 0, None) in fake_kube.cluster.deletions


def first_rv(fake, predicate) -> int | None:
    return next((e.rv for e in fake.cluster.history if predicate(e)), None)


def condition(kind: str):
    return lambda e: e.plural == "jobs" and any(
        c["type"] == kind for c in e.obj["status"].get("conditions") or [])


def pod_terminated(e) -> bool:
    return e.plural == "pods" and e.type == "MODIFIED" and "terminated" in json.dumps(
        e.obj["status"].get("containerStatuses") or [])


@pytest.mark.parametrize("order", DEADLINE_ORDERS)
def test_deadline_condition_orders(fake_kube, api, order):
    """activeDeadlineSeconds: the Job's conditions and the pod's end, in each order a cluster
    shows them (configurable: `cluster.deadline_order`)."""
    batch = client.BatchV1Api(api)
    fake_kube.cluster.deadline_order = order
    fake_kube.script("hang", on_sigterm="ignore")
    started = time.monotonic()
    batch.create_namespaced_job(fake_kube.namespace, job("late", grace=1, deadline=1))
    assert fake_kube.wait_for(lambda: first_rv(fake_kube, condition("Failed")) is not None, 5)
    took = time.monotonic() - started  # until the Job is Failed
    assert fake_kube.wait_for(lambda: not fake_kube.objects("pods"), 5)
    target = first_rv(fake_kube, condition("FailureTarget"))
    failed = first_rv(fake_kube, condition("Failed"))
    ended = first_rv(fake_kube, pod_terminated)
    deleted = first_rv(fake_kube, lambda e: e.plural == "pods" and e.type == "DELETED")
    [final] = [c for c in fake_kube.objects("jobs")[0]["status"]["conditions"]
               if c["type"] == "Failed"]
    assert final["reason"] == "DeadlineExceeded"
    if order == "failure-target":
        assert target < ended < deleted < failed and took >= 2  # deadline + the grace
    elif order == "failed-first":
        assert target is None and failed < ended < deleted and took < 1.8
    elif order == "pod-first":
        assert ended < deleted < target < failed
    else:
        assert ended is None and target is None and deleted < failed and took < 1.8
