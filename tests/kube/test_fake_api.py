"""The fake API server behaves like the real one, as seen through the official client."""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.kube.kubelets import REQUEST_ENV
from tests.kube.selectors import SelectorError, parse_labels


@pytest.fixture
def api(fake_kube):
    api_client = config.new_client_from_config(config_file=str(fake_kube.kubeconfig_path))
    yield api_client
    api_client.close()


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture
def batch(api):
    return client.BatchV1Api(api)


def job_body(name: str, *, labels: dict | None = None, deadline: int | None = None,
             ttl: int | None = None, event=None) -> client.V1Job:
    request = json.dumps({"nonce": "n0nce", "event": event})
    container = client.V1Container(name="function", image="127.0.0.1:5000/kf/x@sha256:" + "0" * 64,
                                   env=[client.V1EnvVar(name=REQUEST_ENV, value=request)])
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"app": "kf"}),
        spec=client.V1JobSpec(
            backoff_limit=0, active_deadline_seconds=deadline, ttl_seconds_after_finished=ttl,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels or {"app": "kf"}),
                spec=client.V1PodSpec(restart_policy="Never", containers=[container]))))


def finished(batch, namespace, name):
    job = batch.read_namespaced_job(name, namespace)
    for condition in job.status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition
    return None


def wait_job(fake, batch, name, timeout=5.0):
    assert fake.wait_for(lambda: any(
        c["type"] in ("Complete", "Failed") for j in fake.objects("jobs")
        if j["metadata"]["name"] == name for c in j["status"].get("conditions") or []), timeout)
    return finished(batch, fake.namespace, name)


def test_crud_metadata_and_models(fake_kube, core):
    ns = fake_kube.namespace
    created = core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="svc", labels={"tier": "web"}),
        spec=client.V1ServiceSpec(selector={"app": "x"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    assert isinstance(created, client.V1Service)
    meta = created.metadata
    assert meta.uid and meta.resource_version and meta.creation_timestamp and meta.generation == 1
    assert created.spec.cluster_ip
    got = core.read_namespaced_service("svc", ns)
    assert got.metadata.uid == meta.uid
    got.spec.ports[0].port = 81
    replaced = core.replace_namespaced_service("svc", ns, got)
    assert int(replaced.metadata.resource_version) > int(meta.resource_version)
    assert replaced.metadata.generation == 2
    patched = core.patch_namespaced_service("svc", ns, {"metadata": {"labels": {"x": "y"}}})
    assert patched.metadata.labels == {"tier": "web", "x": "y"}
    # a stale resourceVersion conflicts
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_service("svc", ns, got)
    assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"
    core.delete_namespaced_service("svc", ns)
    assert core.list_namespaced_service(ns).items == []


def test_status_bodies_for_404_409_422(fake_kube, batch):
    ns = fake_kube.namespace
    with pytest.raises(ApiException) as missing:
        batch.read_namespaced_job("nope", ns)
    body = json.loads(missing.value.body)
    assert missing.value.status == 404
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["reason"] == "NotFound" and body["code"] == 404
    assert body["details"]["name"] == "nope"
    batch.create_namespaced_job(ns, job_body("twice"))
    with pytest.raises(ApiException) as again:
        batch.create_namespaced_job(ns, job_body("twice"))
    assert again.value.status == 409
    assert json.loads(again.value.body)["reason"] == "AlreadyExists"
    for bad in ("Upper-Case", "x" * 64):
        with pytest.raises(ApiException) as invalid:
            batch.create_namespaced_job(ns, job_body(bad))
        body = json.loads(invalid.value.body)
        assert invalid.value.status == 422 and body["reason"] == "Invalid"
        assert body["details"]["causes"][0]["field"] == "metadata.name"
    no_restart = job_body("always")
    no_restart.spec.template.spec.restart_policy = "Always"
    with pytest.raises(ApiException) as invalid:
        batch.create_namespaced_job(ns, no_restart)
    assert invalid.value.status == 422
    with pytest.raises(ApiException) as unauthorized:
        client.BatchV1Api(client.ApiClient(client.Configuration(host=fake_kube.url))) \
            .list_namespaced_job(ns)
    assert unauthorized.value.status == 401


def test_objects_deserialize_with_validation_on(fake_kube, api, batch, core):
    """With `_preload_content` the client builds models, which refuse missing required fields:
    every kind of object the fake returns goes through them."""
    ns = fake_kube.namespace
    fake_kube.script("succeed")
    fake_kube.script("oom")
    fake_kube.script("waiting", reason="ErrImagePull")
    fake_kube.script("evict")
    fake_kube.script("crashloop")
    for i in range(5):
        batch.create_namespaced_job(ns, job_body(f"j{i}"))
    assert fake_kube.wait_for(lambda: len(fake_kube.objects("pods")) == 5 and all(
        p["status"].get("containerStatuses") and "ContainerCreating" not in json.dumps(p["status"])
        for p in fake_kube.objects("pods")))
    fake_kube.wait_for(lambda: False, 0.3)
    assert api.configuration.client_side_validation
    for pod in core.list_namespaced_pod(ns).items:
        assert isinstance(pod, client.V1Pod) and pod.status.container_statuses[0].image
    for job in batch.list_namespaced_job(ns).items:
        assert isinstance(job, client.V1Job)
    for raw in fake_kube.objects("pods") + fake_kube.objects("jobs"):
        kind = {"Pod": "V1Pod", "Job": "V1Job"}[raw["kind"]]
        response = type("R", (), {"data": json.dumps(raw)})
        assert api.deserialize(response, kind) is not None


def test_label_selector_grammar(fake_kube, core):
    ns = fake_kube.namespace
    for name, labels in (("a", {"env": "prod", "tier": "web"}), ("b", {"env": "dev"}),
                         ("c", {"tier": "db"})):
        core.create_namespaced_service(ns, client.V1Service(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))

    def names(selector):
        return sorted(s.metadata.name for s in
                      core.list_namespaced_service(ns, label_selector=selector).items)

    assert names("env=prod") == ["a"]
    assert names("env==dev") == ["b"]
    assert names("env!=prod") == ["b", "c"]
    assert names("env in (prod, dev)") == ["a", "b"]
    assert names("env notin (prod)") == ["b", "c"]
    assert names("tier") == ["a", "c"]
    assert names("!tier") == ["b"]
    assert names("tier,env=prod") == ["a"]
    assert names("") == ["a", "b", "c"]
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_service(ns, label_selector="env in prod")
    assert bad.value.status == 400
    with pytest.raises(SelectorError):
        parse_labels("a=b,")
    field = core.list_namespaced_service(ns, field_selector="metadata.name=b").items
    assert [s.metadata.name for s in field] == ["b"]


def test_watch_resumes_from_resource_version_and_answers_410(fake_kube, core):
    ns = fake_kube.namespace
    listed = core.list_namespaced_service(ns)
    rv = listed.metadata.resource_version

    def make(name):
        core.create_namespaced_service(ns, client.V1Service(
            metadata=client.V1ObjectMeta(name=name, labels={"w": "1"}),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))

    make("s1")
    make("s2")
    core.patch_namespaced_service("s1", ns, {"metadata": {"labels": {"w": "2"}}})
    core.delete_namespaced_service("s2", ns)
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_service, ns, label_selector="w=1", resource_version=rv,
        timeout_seconds=1)]
    # s1 leaving the selector is a DELETED event for this watch, as on a real API server
    assert events == [("ADDED", "s1"), ("ADDED", "s2"), ("DELETED", "s1"), ("DELETED", "s2")]

    # without a resourceVersion: the current state as ADDED events, then changes
    seen = []
    stream = watch.Watch()

    def later():
        make("s3")

    timer = threading.Timer(0.2, later)
    timer.start()
    for event in stream.stream(core.list_namespaced_service, ns, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "s3":
            stream.stop()
    timer.join()
    assert seen == [("ADDED", "s1"), ("ADDED", "s3")]

    fake_kube.cluster.compact()
    response = core.list_namespaced_service(ns, watch=True, resource_version=rv,
                                            timeout_seconds=1, _preload_content=False)
    lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410 and lines[0]["object"]["reason"] == "Expired"
    with pytest.raises(ApiException) as gone:
        list(watch.Watch().stream(core.list_namespaced_service, ns, resource_version=rv,
                                  timeout_seconds=1))
    assert gone.value.status == 410


def test_job_controller_completes_and_logs(fake_kube, batch, core):
    ns = fake_kube.namespace
    fake_kube.script("succeed", output={"answer": 42}, creating=0.3, delay=0.1)
    batch.create_namespaced_job(ns, job_body("ok", labels={"execution": "e1"}))
    assert fake_kube.wait_for(lambda: bool(fake_kube.objects("pods")))
    pod = core.list_namespaced_pod(ns, label_selector="job-name=ok").items[0]
    assert pod.metadata.owner_references[0].kind == "Job"
    assert pod.metadata.labels["execution"] == "e1"
    with pytest.raises(ApiException) as creating:
        core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert creating.value.status == 400
    assert "ContainerCreating" in json.loads(creating.value.body)["message"]
    condition = wait_job(fake_kube, batch, "ok")
    assert condition.type == "Complete"
    log = core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert '"answer": 42' in log and "KUBEFUNCTION-RESULT n0nce" in log
    job = batch.read_namespaced_job("ok", ns)
    assert job.status.succeeded == 1 and job.status.start_time and job.status.completion_time


@pytest.mark.parametrize("script, options, reason", [
    ("exit", {"code": 3}, "BackoffLimitExceeded"),
    ("oom", {}, "BackoffLimitExceeded"),
    ("evict", {}, "BackoffLimitExceeded"),
    ("hang", {}, "DeadlineExceeded"),
])
def test_job_controller_failures(fake_kube, batch, core, script, options, reason):
    fake_kube.script(script, **options)
    batch.create_namespaced_job(fake_kube.namespace, job_body("bad", deadline=1))
    condition = wait_job(fake_kube, batch, "bad", timeout=5)
    assert (condition.type, condition.reason) == ("Failed", reason)
    pods = core.list_namespaced_pod(fake_kube.namespace).items
    if reason == "DeadlineExceeded":
        assert pods == []  # the controller killed the active pod
    else:
        terminated = pods[0].status.container_statuses[0].state.terminated
        assert terminated.exit_code == {"exit": 3}.get(script, 137)


def test_waiting_pod_keeps_the_job_active(fake_kube, batch, core):
    fake_kube.script("waiting", reason="ImagePullBackOff")
    batch.create_namespaced_job(fake_kube.namespace, job_body("pull"))
    assert fake_kube.wait_for(lambda: "ImagePullBackOff" in json.dumps(fake_kube.objects("pods")))
    pod = core.list_namespaced_pod(fake_kube.namespace).items[0]
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
    assert finished(batch, fake_kube.namespace, "pull") is None


def test_ttl_after_finished_deletes_job_and_pods(fake_kube, batch):
    batch.create_namespaced_job(fake_kube.namespace, job_body("ttl", ttl=0))
    assert fake_kube.wait_for(lambda: fake_kube.objects("jobs") == [] and
                              fake_kube.objects("pods") == [])


@pytest.mark.parametrize("policy, pods_left", [
    ("Background", 0), ("Foreground", 0), ("Orphan", 1), (None, 1)])
def test_deletion_propagation(fake_kube, batch, core, policy, pods_left):
    ns = fake_kube.namespace
    fake_kube.script("hang")
    batch.create_namespaced_job(ns, job_body("p"))
    assert fake_kube.wait_for(lambda: len(fake_kube.objects("pods")) == 1)
    kwargs = {"propagation_policy": policy} if policy else {}
    batch.delete_namespaced_job("p", ns, **kwargs)
    assert fake_kube.wait_for(lambda: fake_kube.objects("jobs") == [])
    assert fake_kube.wait_for(lambda: len(fake_kube.objects("pods")) == pods_left)
    if pods_left:  # an orphan loses its owner reference
        assert core.list_namespaced_pod(ns).items[0].metadata.owner_references in (None, [])


def test_injected_500_and_api_call_log(fake_kube, batch):
    fake_kube.fail("create", "jobs")
    with pytest.raises(ApiException) as failed:
        batch.create_namespaced_job(fake_kube.namespace, job_body("f"))
    assert failed.value.status == 500
    assert json.loads(failed.value.body)["reason"] == "InternalError"
    batch.create_namespaced_job(fake_kube.namespace, job_body("f"))
    assert fake_kube.api_calls[:2] == [("create", "jobs"), ("create", "jobs")]


def test_follow_log_streams_until_the_container_ends(fake_kube, batch, core):
    fake_kube.script("exit", code=0, logs="line one\nline two\n", delay=0.2)
    batch.create_namespaced_job(fake_kube.namespace, job_body("f"))
    assert fake_kube.wait_for(lambda: '"running"' in json.dumps(fake_kube.objects("pods")))
    name = fake_kube.objects("pods")[0]["metadata"]["name"]
    response = core.read_namespaced_pod_log(name, fake_kube.namespace, follow=True,
                                            _preload_content=False)
    assert response.read() == b"line one\nline two\n"


def test_deployment_scales_and_endpoint_slices_follow(fake_kube, api, core):
    ns = fake_kube.namespace
    apps = client.AppsV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    labels = {"kubefunction.io/version-id": "7"}
    container = client.V1Container(name="runner", image="img@sha256:" + "1" * 64,
                                   ports=[client.V1ContainerPort(container_port=8080)])
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="warm", labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container])))))
    core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="warm"),
        spec=client.V1ServiceSpec(selector=labels, ports=[
            client.V1ServicePort(name="http", port=80, target_port=8080)])))

    def ready_endpoints():
        slices = discovery.list_namespaced_endpoint_slice(
            ns, label_selector="kubernetes.io/service-name=warm").items
        return [e for s in slices for e in s.endpoints or [] if e.conditions.ready]

    assert fake_kube.wait_for(lambda: (fake_kube.objects("deployments")[0]["status"]
                                       .get("readyReplicas") == 2))
    deployment = apps.read_namespaced_deployment("warm", ns)
    assert deployment.status.ready_replicas == 2 and deployment.status.observed_generation == 1
    endpoints = ready_endpoints()
    assert len(endpoints) == 2 and len({e.addresses[0] for e in endpoints}) == 2
    assert discovery.list_namespaced_endpoint_slice(ns).items[0].ports[0].port == 8080

    apps.patch_namespaced_deployment("warm", ns, {"spec": {"replicas": 0}})
    assert fake_kube.wait_for(lambda: fake_kube.objects("pods") == [])
    assert fake_kube.wait_for(lambda: not ready_endpoints())
    assert apps.read_namespaced_deployment("warm", ns).status.ready_replicas is None

    apps.patch_namespaced_deployment("warm", ns, {"spec": {"replicas": 1}})
    assert fake_kube.wait_for(lambda: len(ready_endpoints()) == 1)
    apps.delete_namespaced_deployment("warm", ns)
    core.delete_namespaced_service("warm", ns)
    assert fake_kube.wait_for(lambda: fake_kube.objects("pods") == [] and
                              fake_kube.objects("endpointslices") == [])


def test_patch_with_a_resource_version_is_a_precondition(fake_kube, core):
    ns = fake_kube.namespace
    created = core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="pinned"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))
    seen = created.metadata.resource_version
    core.patch_namespaced_service("pinned", ns, {"metadata": {"annotations": {"a": "1"}}})
    with pytest.raises(ApiException) as stale:
        core.patch_namespaced_service("pinned", ns, {"metadata": {
            "resourceVersion": seen, "annotations": {"a": "2"}}})
    assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"
    current = core.read_namespaced_service("pinned", ns).metadata
    assert current.annotations == {"a": "1"}
    patched = core.patch_namespaced_service("pinned", ns, {"metadata": {
        "resourceVersion": current.resource_version, "annotations": {"a": "3"}}})
    assert patched.metadata.annotations == {"a": "3"}


def test_stopping_leaves_no_threads(tmp_path):
    import threading
    import time

    from tests.kube.fixtures import running_fake_kube

    before = set(threading.enumerate())
    with running_fake_kube(tmp_path) as fake:
        api_client = config.new_client_from_config(config_file=str(fake.kubeconfig_path))
        batch_api = client.BatchV1Api(api_client)
        batch_api.create_namespaced_job(fake.namespace, job_body("t"))
        list(watch.Watch().stream(batch_api.list_namespaced_job, fake.namespace,
                                  timeout_seconds=1))
        api_client.close()
    end = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < end:
        time.sleep(0.05)
    assert set(threading.enumerate()) - before == set()


def test_every_request_is_counted_whatever_came_of_it(fake_kube, core, tmp_path):
    import urllib.request

    before = fake_kube.request_count()
    core.list_namespaced_pod(fake_kube.namespace)
    with pytest.raises(ApiException):
        core.read_namespaced_pod("nowhere", fake_kube.namespace)  # 404
    with pytest.raises(OSError):  # 401: no token
        urllib.request.urlopen(f"{fake_kube.url}/api/v1/namespaces", timeout=5)
    with pytest.raises(OSError):  # a path the server does not know
        urllib.request.urlopen(f"{fake_kube.url}/apis/nope/v1/things", timeout=5)
    list(watch.Watch().stream(core.list_namespaced_pod, fake_kube.namespace, timeout_seconds=1))
    assert fake_kube.request_count() - before == 5
    path = f"/api/v1/namespaces/{fake_kube.namespace}/pods"
    assert len(fake_kube.requests("list", path)) == 1
    assert fake_kube.requests("get", "/pods/nowhere") == [{}]
    assert [q["timeoutSeconds"] for q in fake_kube.requests("watch", path)] == ["1"]
    assert len(fake_kube.requests("list", "/api/v1/namespaces")) == 1  # the one refused
    assert len(fake_kube.requests("list", "/apis/nope/v1/things")) == 1


def test_bookmarks_carry_the_resource_version_and_end_a_timed_out_watch(fake_kube, core):
    ns = fake_kube.namespace
    fake_kube.cluster.bookmark_seconds = 0.3
    rv = core.list_namespaced_service(ns).metadata.resource_version

    def events(**options):
        response = core.list_namespaced_service(ns, watch=True, resource_version=rv,
                                                _preload_content=False, **options)
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]

    # a Secret changes meanwhile: not a Service, but a bookmark tells how far the watch got
    timer = threading.Timer(0.1, lambda: core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="elsewhere"))))
    timer.start()
    seen = events(timeout_seconds=1, allow_watch_bookmarks=True)
    timer.join()
    assert seen and {e["type"] for e in seen} == {"BOOKMARK"}
    assert seen[0]["object"]["kind"] == "Service"
    assert int(seen[-1]["object"]["metadata"]["resourceVersion"]) > int(rv)
    assert 2 <= len(seen) <= 5  # every 0.3 s, and one as the watch ends
    assert events(timeout_seconds=1) == []  # none unless allowed


def test_dropping_the_watches_breaks_them_midway(fake_kube, core):
    import urllib3

    failures = []
    started = threading.Event()

    def follow():
        try:
            response = core.list_namespaced_service(
                fake_kube.namespace, watch=True, timeout_seconds=30, _preload_content=False)
            started.set()
            for _ in response.stream():
                pass
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            failures.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    assert started.wait(5)
    assert fake_kube.drop_watches() == 1  # the watch registers before its headers are sent
    thread.join(timeout=5)
    assert not thread.is_alive() and len(failures) == 1  # an incomplete body, not a clean end
    assert fake_kube.drop_watches() == 0
