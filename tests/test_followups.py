"""Follow-ups of issues 11/12: `cancelled` counted as finished by batches and the dashboard,
webhook links on the separate webhook origin, worker log lines masked, the cancel/rerun
actions' error answers in the OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from executions.batches import batch_close_if_done, progress_of
from executions.models import Batch, Execution, ExecutionStatus
from executions.services import execution_dispatch_many
from functions import services as function_services
from metrics import dashboard, selectors
from triggers.models import TriggerKind
from triggers.services import trigger_create, webhook_url

HANDLER = b"def handle(event, context):\n    return event\n"


@pytest.fixture
def trigger(user):
    function = function_services.function_register(
        name="echo", owner=user, filename="echo.py", data=HANDLER).function
    return trigger_create(name="echo", function=function)


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
