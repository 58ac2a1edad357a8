"""Follow-ups of issues 11/12: `cancelled` counted as finished by batches and the dashboard,
webhook links on the separate webhook origin, worker log lines masked, the cancel/rerun
actions' error answers in the OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from executions.hooks import batch_close_if_done
from executions.models import Batch, Execution, ExecutionStatus
from executions.selectors import progress_of
from executions.services import execution_dispatch_many
from functions.selectors import version_wait
from metrics import dashboard, selectors
from tests import test_batches
from tests.kube.fixtures import fake_kube  # noqa: F401 - a fixture
from tests.test_kubernetes_runtime import context, make_spec, runtime  # noqa: F401 - fixtures
from tests.test_kubernetes_warm_docker import containers, docker_warm, warm_image  # noqa: F401
from triggers.models import TriggerKind
from triggers.services import trigger_create, webhook_url

trigger = test_batches.trigger  # the batch tests' echo trigger, as a fixture here too

# --- 1. `cancelled` is a finished state ---------------------------------------------------------

@pytest.mark.django_db
def test_a_batch_with_a_cancelled_execution_is_done_and_says_so(api, trigger, user):
    executions = execution_dispatch_many(trigger=trigger, payloads=[1, 2, 3], user=user,
                                         source="api")
    batch = Batch.objects.get()
    now = timezone.now()
    for execution, status in zip(executions, [ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED,
                                              ExecutionStatus.CANCELLED], strict=True):
        Execution.objects.filter(pk=execution.pk).update(status=status, finished_at=now)
    progress = progress_of(batch)
    assert (progress.done, progress.succeeded, progress.failed, progress.cancelled,
            progress.queued, progress.running) == (3, 1, 1, 1, 0, 0)
    assert progress.percent == 100
    assert batch_close_if_done(batch_id=batch.pk)
    page = api.get(f"/api/batches/{batch.pk}/").json()
    assert (page["done"], page["cancelled"], page["failed"]) == (3, 1, 1), page
    assert page["finished_at"]


@pytest.mark.django_db
def test_the_batch_admin_shows_cancelled(admin_client, trigger, user):
    executions = execution_dispatch_many(trigger=trigger, payloads=[1, 2], user=user,
                                         source="api")
    Execution.objects.filter(pk=executions[0].pk).update(status=ExecutionStatus.CANCELLED,
                                                         finished_at=timezone.now())
    batch = Batch.objects.get()
    page = admin_client.get(f"/admin/executions/batch/{batch.pk}/change/")
    assert page.status_code == 200
    assert b"1 / 2 (50%)" in page.content and b"cancelled" in page.content


@pytest.mark.django_db
def test_the_dashboard_counts_cancelled_as_finished(admin_client, trigger):
    now = timezone.now()
    function = trigger.function
    statuses = [ExecutionStatus.SUCCEEDED] * 2 + [ExecutionStatus.CANCELLED] * 2
    Execution.objects.bulk_create(Execution(
        task_id=str(uuid.uuid4()), function=function, version_id=function.active_version_id,
        trigger=trigger, status=status, runtime="local",
        dispatched_at=now - timedelta(seconds=10 + i), started_at=now - timedelta(seconds=9),
        finished_at=now - timedelta(seconds=8)) for i, status in enumerate(statuses))
    summary = selectors.summary(selectors.scope_for("1h"))
    assert (summary.invocations, summary.succeeded, summary.cancelled) == (4, 2, 2)
    assert summary.finished == 4 and summary.success_rate == pytest.approx(0.5)
    figures = {figure.label: figure for figure in dashboard.headline(summary)}
    assert figures["Success rate"].hint == "2 of 4 finished"
    assert "2 cancelled" in figures["CPU"].hint
    ((_pk, one),) = selectors.breakdown(selectors.scope_for("1h"))
    assert one.cancelled == 2 and one.finished == 4
    overview = selectors.overview(selectors.scope_for("1h"), width=60)
    assert overview.summary.cancelled == 2 and overview.summary.finished == 4
    assert admin_client.get("/admin/").status_code == 200


# --- 3. webhook links on the webhook origin -----------------------------------------------------

@pytest.mark.django_db
def test_webhook_links_use_the_webhook_origin_when_set(api, trigger, settings):
    hook = trigger_create(name="hook", function=trigger.function, kind=TriggerKind.HTTP)
    assert webhook_url(hook, base="http://testserver/") == "http://testserver/t/hook"
    settings.KUBEFUNCTION_WEBHOOK_ORIGIN = "https://hooks.example-fn.net"
    assert webhook_url(hook) == "https://hooks.example-fn.net/t/hook"
    assert webhook_url(hook, base="http://testserver/") == "https://hooks.example-fn.net/t/hook"
    shown = api.get("/api/triggers/hook/").json()
    assert shown["webhook_url"] == "https://hooks.example-fn.net/t/hook", shown
    again = api.post("/api/triggers/hook/token/")
    assert again.status_code == 200, again.content
    assert again.json()["webhook_url"] == "https://hooks.example-fn.net/t/hook"


# --- 5. the verbs' error answers in the schema --------------------------------------------------

@pytest.mark.django_db
def test_cancel_and_rerun_declare_their_error_answers_and_give_them(api, other_user, trigger):
    from drf_spectacular.generators import SchemaGenerator
    from rest_framework.test import APIClient

    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    cancel = paths["/api/executions/{task_id}/cancel/"]["post"]["responses"]
    rerun = paths["/api/executions/{task_id}/rerun/"]["post"]["responses"]
    assert {"200", "403", "404", "409"} <= set(cancel), sorted(cancel)
    assert {"202", "400", "403", "404", "409", "429"} <= set(rerun), sorted(rerun)

    # The answers are what the schema says: 409 naming `status` (cancel) or `execution` (rerun).
    finished = execution_dispatch_many(trigger=trigger, payloads=[1], source="api")[0]
    Execution.objects.filter(pk=finished.pk).update(status=ExecutionStatus.SUCCEEDED,
                                                    finished_at=timezone.now())
    refused = api.post(f"/api/executions/{finished.task_id}/cancel/")
    assert refused.status_code == 409 and list(refused.json()) == ["status"], refused.content
    queued = execution_dispatch_many(trigger=trigger, payloads=[2], source="api")[0]
    again = api.post(f"/api/executions/{queued.task_id}/rerun/", {}, format="json")
    assert again.status_code == 409 and list(again.json()) == ["execution"], again.content
    bob = APIClient()
    bob.force_authenticate(other_user)
    for verb in ("cancel", "rerun"):
        hidden = bob.post(f"/api/executions/{finished.task_id}/{verb}/", {}, format="json")
        assert hidden.status_code == 404 and "detail" in hidden.json(), hidden.content


# --- 4. worker log lines are masked -------------------------------------------------------------

@pytest.mark.worker
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_worker_log_lines_mask_the_database_password(tmp_path):
    """A real worker whose DATABASE_URL carries a password (Postgres here trusts local TCP, so
    any password connects) logs two errors quoting it: an unregistered task's name (the
    consumer's logger) and a task called with a keyword named after it (the task's failure
    line and its traceback). Neither shows the password; both show the mask."""
    import time

    from kubefunction.celery import app as celery_app
    from kubefunction.log_redaction import MASK
    from tests.processes import celery_env, start_worker, stop, worker_database_url

    password = "pwFollowupsDb" + uuid.uuid4().hex[:12]
    url = worker_database_url()
    if "@" not in url or "://" not in url:
        pytest.skip("the worker's database has no URL with credentials (embedded SQLite)")
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    with_password = f"{scheme}://{user.split(':', 1)[0]}:{password}@{host}"
    queue = f"kf-followups-logs-{uuid.uuid4().hex[:6]}"
    log_path = tmp_path / "worker.log"
    worker = start_worker(f"logs-{uuid.uuid4().hex[:6]}@localhost", log_path,
                          celery_env(DATABASE_URL=with_password, KUBEFUNCTION_QUEUE=queue),
                          concurrency=1, queue=queue)
    try:
        celery_app.send_task(f"no.such.task.{password}", queue=queue)
        celery_app.send_task("executions.scale_idle_warm", kwargs={password: 1}, queue=queue)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if "unregistered task" in text and "raised unexpected" in text:
                break
            time.sleep(0.3)
    finally:
        stop(worker)
    text = log_path.read_text(errors="replace")
    assert "unregistered task" in text and "raised unexpected" in text, text[-3000:]
    assert "Traceback" in text, text[-3000:]
    assert password not in text, [line for line in text.splitlines() if password in line]
    assert f"no.such.task.{MASK}" in text and MASK in text.split("raised unexpected", 1)[1]


# --- 2. a cancel stops the kubernetes Job -------------------------------------------------------

BUSY = b"def handle(event, context):\n    while True:\n        pass\n"


def _ready_kube_function(api, name: str, source: bytes) -> None:

    from django.core.files.uploadedfile import SimpleUploadedFile

    from functions.models import FunctionVersion

    created = api.post("/api/functions/", {
        "name": name, "runtime": "kubernetes", "timeout_seconds": 60,
        "source": SimpleUploadedFile("fn.py", source)}, format="multipart")
    assert created.status_code == 201, created.content
    made = api.post("/api/triggers/", {"name": name, "function": name}, format="json")
    assert made.status_code == 201, made.content
    version = FunctionVersion.objects.get(function__name=name)
    version = version_wait(version=version, timeout=300)
    assert version.status == "ready" and version.image, version.build_log


@pytest.mark.worker
@pytest.mark.timeout(400)
@pytest.mark.django_db(transaction=True)
def test_cancel_a_running_cold_kubernetes_job_stops_it(api, celery_worker_process, worker_kube):
    """A `while True` in a cold Job on the fake API server (docker kubelet), cancelled through
    the API as its non-staff owner: within a few seconds its pod's container no longer runs and
    its Job, pod and request Secret are gone (before: it ran on until its 60 s deadline), and
    the execution is `cancelled`, once."""
    import time

    from celery.result import AsyncResult
    from django_celery_results.models import TaskResult

    from executions.runtimes.kubernetes.manifests import label_value
    from tests.docker_engine import engine_problem

    if engine_problem():
        pytest.skip(engine_problem())
    import docker

    name = f"busy-kube-{uuid.uuid4().hex[:6]}"
    _ready_kube_function(api, name, BUSY)
    answer = api.post(f"/api/triggers/{name}/dispatch/", {"payload": {}}, format="json")
    assert answer.status_code == 202, answer.content
    task_id = answer.json()["task_id"]
    execution = Execution.objects.get(task_id=task_id)
    selector = f"kubefunction.io/execution={label_value(str(execution.pk))}"
    engine = docker.from_env(timeout=30)

    def running_containers() -> list[str]:
        found = []
        for pod in worker_kube.objects("pods", selector):
            container = worker_kube.kubelet.containers.get(pod["metadata"]["uid"])
            if container:
                try:
                    if engine.api.inspect_container(container)["State"]["Running"]:
                        found.append(container)
                except docker.errors.NotFound:
                    pass
        return found

    deadline = time.monotonic() + 120
    while not running_containers():
        assert time.monotonic() < deadline, "the function's pod never ran"
        time.sleep(0.1)
    time.sleep(1.0)  # the function is really in its loop
    assert Execution.objects.get(pk=execution.pk).status == "running"
    started = time.monotonic()
    cancelled = api.post(f"/api/executions/{task_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    def left() -> dict[str, int]:
        return {"running containers": len(running_containers()),
                "jobs": len(worker_kube.objects("jobs", selector)),
                "pods": len(worker_kube.objects("pods", selector)),
                "secrets": len(worker_kube.objects("secrets", selector))}

    while any(left().values()) and time.monotonic() - started < 20:
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    assert not any(left().values()), f"{elapsed:.1f} s after the cancel: {left()}"
    print(f"cold kubernetes cancel: Job, pod and Secret gone {elapsed:.2f} s after the cancel")
    assert elapsed < 5, f"the Job was stopped only {elapsed:.1f} s after the cancel"
    assert ("delete", "jobs") in worker_kube.api_calls
    time.sleep(2)  # a redelivery would have made a new Job by now
    execution.refresh_from_db()
    assert execution.status == "cancelled" and execution.attempt == 1, execution.error
    assert not worker_kube.objects("jobs", selector)
    assert Execution.objects.filter(task_id=task_id).count() == 1
    assert TaskResult.objects.get(task_id=task_id).status == "REVOKED"
    assert AsyncResult(task_id).state == "REVOKED"


@pytest.mark.parametrize("fake_kube", ["docker"], indirect=True)
def test_cancel_a_warm_kubernetes_request_recycles_its_pod(
        fake_kube, docker_warm, warm_image):  # noqa: F811 - fixtures
    """Warm mode, in this process on the fake's docker kubelet: the busy request is stopped the
    way a cancel stops it in a prefork child (SIGUSR1, whose handler raises
    SoftTimeLimitExceeded, as billiard installs it); the pod that was busy with it is deleted
    at once (its container goes) and the Deployment's next pod serves the next request."""
    import signal
    import threading
    import time

    from celery.exceptions import SoftTimeLimitExceeded

    spec = make_spec(function_name="kube-warm-docker", image=warm_image, timeout_seconds=60,
                     memory_mb=64)
    assert docker_warm.invoke(spec, {}, context(seconds=60)).status == "succeeded"
    [busy_pod] = fake_kube.objects("pods")
    [busy_container] = containers(fake_kube)

    def soft_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGUSR1, soft_limit)
    main = threading.get_ident()
    timer = threading.Timer(2.0, lambda: signal.pthread_kill(main, signal.SIGUSR1))
    timer.start()
    try:
        started = time.monotonic()
        with pytest.raises(SoftTimeLimitExceeded):
            docker_warm.invoke(spec, {"sleep": 60}, context(seconds=60))
        stopped = time.monotonic()
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert stopped - started < 4, f"the invoke ended {stopped - started:.1f} s in"
    gone_from = time.monotonic()
    uid = busy_pod["metadata"]["uid"]
    assert fake_kube.wait_for(lambda: all(
        p["metadata"]["uid"] != uid for p in fake_kube.objects("pods")), timeout=5), \
        "the busy pod was not deleted"
    end = time.monotonic() + 10
    while any(c["Id"] == busy_container["Id"] for c in containers(fake_kube)) and \
            time.monotonic() < end:
        time.sleep(0.1)
    assert all(c["Id"] != busy_container["Id"] for c in containers(fake_kube))
    print(f"warm kubernetes cancel: busy pod's container gone {time.monotonic() - gone_from:.2f}"
          " s after the invoke stopped")
    assert ("delete", "pods") in fake_kube.api_calls
    after = docker_warm.invoke(spec, {"n": 1}, context(seconds=60))
    assert after.status == "succeeded" and after.output["event"] == {"n": 1}, after
    docker_warm.release(spec)
