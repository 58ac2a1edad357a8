"""Payload retention: `hash` functions keep only hashes from their terminal write on, `days`
functions have their payloads purged by the periodic task, old task results are deleted — and
statuses, timings, resources and the metrics built on them never change."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from celery import states
from celery.result import AsyncResult
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from executions import retention
from executions.models import Execution, ExecutionStatus
from executions.results import result_row
from executions.services import execution_fail
from executions.tasks import purge_payloads
from functions import services
from functions.forms import FunctionChangeForm
from functions.models import Function
from kubefunction.celery import app as celery_app
from metrics import rollup, selectors
from metrics.models import ExecutionRollup, LatencyRollup
from tests.conftest import EXAMPLES

SOURCE = (b"def handle(event, context):\n"
          b"    print('secret', event)\n"
          b"    return {'echo': event, 'n': 1}\n")
# Kept as they are by a purge: what metrics, retries and callers rely on.
KEPT_FIELDS = ["status", "dispatched_at", "started_at", "finished_at", "cpu_seconds",
               "peak_memory_bytes", "cold", "init_seconds", "attempt", "error_type", "error",
               "exit_code", "worker", "runtime", "dead_letter", "output_truncated"]


def canonical_sha256(text: str) -> str:
    """The documented recipe, written out by hand: SHA-256 of the canonical JSON's UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def register(owner, name, **options) -> Function:
    return services.function_register(name=name, owner=owner, filename="f.py", data=SOURCE,
                                      **options).function


def finished(function, *, age: timedelta, status=ExecutionStatus.SUCCEEDED, payload=None,
             now=None, cold: bool | None = True, **fields) -> Execution:
    """A finished execution (and its Celery result row) that ended `age` ago."""
    now = now or timezone.now()
    end = now - age
    execution = Execution.objects.create(
        task_id=str(uuid.uuid4()), function=function, version_id=function.active_version_id,
        status=status, input=payload if payload is not None else {"user": "ada", "age": 36},
        output={"echo": "ok", "ids": [1, 2]}, logs="secret ada\n", runtime="local",
        dispatched_at=end - timedelta(seconds=3), started_at=end - timedelta(seconds=2),
        finished_at=end, cpu_seconds=0.25, peak_memory_bytes=12345678, cold=cold,
        init_seconds=0.5, worker="w1@host", exit_code=0, **fields)
    row = result_row(task_id=execution.task_id, succeeded=status == ExecutionStatus.SUCCEEDED,
                     output=execution.output, error_type=execution.error_type,
                     error=execution.error)
    row.save()
    TaskResult.objects.filter(task_id=execution.task_id).update(date_done=end)
    return execution


def kept(execution: Execution) -> dict:
    execution.refresh_from_db()
    return {name: getattr(execution, name) for name in KEPT_FIELDS}


# --- the hash recipe ----------------------------------------------------------------------------

def test_hash_is_sha256_of_the_canonical_json():
    value = {"b": [1, 2.5, None, True], "a": "café ☕", "c": {"z": 1, "y": "x"}}
    assert retention.payload_sha256(value) == canonical_sha256(
        '{"a":"café ☕","b":[1,2.5,null,true],"c":{"y":"x","z":1}}')
    assert retention.payload_sha256(None) == canonical_sha256("null")
    assert retention.payload_sha256({"a": 1, "b": 2}) == retention.payload_sha256({"b": 2, "a": 1})


# --- days: the periodic purge -------------------------------------------------------------------

@pytest.mark.django_db
def test_days_purge_replaces_old_payloads_and_keeps_everything_else(admin_user):
    now = timezone.now()
    days = register(admin_user, "days", payload_retention="days", payload_retention_days=2)
    keep = register(admin_user, "keep")
    old = finished(days, age=timedelta(days=3), now=now, attempts=[
        {"attempt": 1, "status": "failed", "error_type": "E", "error": "boom", "logs": "secret",
         "exit_code": 1, "worker": "w", "started_at": "x", "finished_at": "y"}])
    old_failed = finished(days, age=timedelta(days=5), now=now, status=ExecutionStatus.FAILED,
                          error_type="ValueError", error="Traceback: bad")
    recent = finished(days, age=timedelta(days=1), now=now)
    old_kept = finished(keep, age=timedelta(days=30), now=now)
    stuck = Execution.objects.create(
        task_id=str(uuid.uuid4()), function=days, version_id=days.active_version_id,
        status=ExecutionStatus.QUEUED, input={"user": "ada"}, dispatched_at=now - timedelta(days=9))
    before = {e.pk: kept(e) for e in (old, old_failed, recent, old_kept)}
    old_input, old_output = old.input, old.output

    assert retention.purge_expired(now=now) == 2

    for execution in (old, old_failed):
        execution.refresh_from_db()
        assert (execution.input, execution.output, execution.logs) == (None, None, "")
        assert execution.payload_purged_at == now
        assert kept(execution) == before[execution.pk]
    assert old.input_sha256 == canonical_sha256('{"age":36,"user":"ada"}')
    assert old.input_sha256 == retention.payload_sha256(old_input)
    assert old.output_sha256 == canonical_sha256('{"echo":"ok","ids":[1,2]}')
    assert old.output_sha256 == retention.payload_sha256(old_output)
    assert old.attempts[0]["logs"] == "" and old.attempts[0]["error"] == "boom"
    assert old_failed.error == "Traceback: bad"  # errors are kept (they explain the failure)
    # The Celery results: a success keeps its state but no output; a failure its error.
    assert AsyncResult(old.task_id, app=celery_app).state == states.SUCCESS
    assert AsyncResult(old.task_id, app=celery_app).result is None
    assert "bad" in str(AsyncResult(old_failed.task_id, app=celery_app).result)
    for untouched in (recent, old_kept, stuck):
        untouched.refresh_from_db()
        assert untouched.input is not None and untouched.payload_purged_at is None
        assert untouched.input_sha256 == ""
    assert AsyncResult(recent.task_id, app=celery_app).result == recent.output
    assert kept(recent) == before[recent.pk] and kept(old_kept) == before[old_kept.pk]

    # Idempotent: nothing left to purge, nothing changes.
    snapshot = list(Execution.objects.order_by("pk").values())
    assert retention.purge_expired(now=now + timedelta(seconds=1)) == 0
    assert list(Execution.objects.order_by("pk").values()) == snapshot


@pytest.mark.django_db
def test_purge_goes_in_bounded_batches(admin_user):
    now = timezone.now()
    function = register(admin_user, "days", payload_retention="days", payload_retention_days=1)
    for _ in range(5):
        finished(function, age=timedelta(days=2), now=now)
    assert retention.purge_expired(now=now, limit=2) == 2
    with override_settings(KUBEFUNCTION_PURGE_BATCH=2):
        report = retention.retention_purge(now=now)
    assert report.payloads == 3
    assert not Execution.objects.filter(payload_purged_at__isnull=True).exists()


@pytest.mark.django_db
def test_metrics_and_rollups_are_identical_after_the_purge(admin_user):
    now = timezone.now()
    function = register(admin_user, "days", payload_retention="days", payload_retention_days=1)
    other = register(admin_user, "keep")
    for i in range(24):
        finished(function if i % 3 else other, age=timedelta(hours=7 * i + 1), now=now,
                 status=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED,
                         ExecutionStatus.TIMED_OUT][i % 3], cold=None)
    scope = selectors.scope_for("7d", now=now)

    def figures():
        return (selectors.summary(scope), selectors.overview(scope, width=3600),
                selectors.breakdown(scope, by="function"))

    def rollups():
        return (sorted(ExecutionRollup.objects.values_list(
                    "width", "start", "function_id", "status", "cold", "count", "cpu_seconds")),
                sorted(LatencyRollup.objects.values_list(
                    "width", "start", "function_id", "kind", "bucket", "count")))

    rollup.rollup_rebuild(now=now)
    before, rolled = figures(), rollups()
    assert before[0].invocations == 24 and rolled[0]
    assert retention.purge_expired(now=now) > 10
    assert figures() == before
    rollup.rollup_rebuild(now=now)
    assert rollups() == rolled
    assert dataclasses.asdict(selectors.summary(scope)) == dataclasses.asdict(before[0])


# --- old task results ---------------------------------------------------------------------------

@pytest.mark.django_db
def test_old_task_results_are_deleted_and_read_as_pending(admin_user):
    now = timezone.now()
    function = register(admin_user, "keep")
    old = finished(function, age=timedelta(days=31), now=now)
    recent = finished(function, age=timedelta(days=29), now=now)
    with override_settings(KUBEFUNCTION_RESULT_RETENTION_DAYS=0):
        assert retention.purge_old_results(now=now) == 0
    with override_settings(KUBEFUNCTION_RESULT_RETENTION_DAYS=30):
        assert retention.purge_old_results(now=now) == 1
        assert retention.purge_old_results(now=now) == 0
    assert not TaskResult.objects.filter(task_id=old.task_id).exists()
    assert TaskResult.objects.filter(task_id=recent.task_id).exists()
    assert AsyncResult(old.task_id, app=celery_app).state == states.PENDING
    old.refresh_from_db()  # the execution keeps its record and output (policy `keep`)
    assert old.output == {"echo": "ok", "ids": [1, 2]} and old.status == ExecutionStatus.SUCCEEDED


# --- hash: the terminal write, and what it cannot hash ------------------------------------------

@pytest.mark.django_db
def test_hash_function_failed_outside_the_run_is_hashed_by_the_purge(admin_user):
    function = register(admin_user, "hashed", payload_retention="hash")
    execution = Execution.objects.create(
        task_id=str(uuid.uuid4()), function=function, version_id=function.active_version_id,
        input={"card": "4111"}, dispatched_at=timezone.now())
    execution_fail(execution_id=execution.pk, reason="lost by the reaper")
    assert retention.purge_expired() == 1
    execution.refresh_from_db()
    assert execution.input is None and execution.payload_purged_at is not None
    assert execution.input_sha256 == canonical_sha256('{"card":"4111"}')
    assert execution.status == ExecutionStatus.FAILED and execution.error == "lost by the reaper"


@pytest.mark.django_db
def test_retried_hash_execution_gets_its_earlier_logs_cleared_by_the_purge(admin_user):
    now = timezone.now()
    fields = {"status": "succeeded", "output": [1], "logs": "x", "finished_at": now}
    first = retention.finish_fields("hash", {"a": 1}, fields)
    assert first["payload_purged_at"] == now and first["input"] is None
    assert retention.finish_fields("keep", {"a": 1}, fields) is fields
    retried = retention.finish_fields("hash", {"a": 1}, fields, earlier_attempts=True)
    assert retried["payload_purged_at"] is None
    function = register(admin_user, "hashed", payload_retention="hash")
    execution = finished(function, age=timedelta(seconds=1), attempt=2, attempts=[
        {"attempt": 1, "status": "failed", "logs": "card 4111"}])
    Execution.objects.filter(pk=execution.pk).update(**{
        k: v for k, v in retried.items() if k in ("input", "output", "logs", "input_sha256",
                                                  "output_sha256", "payload_purged_at")})
    assert retention.purge_expired() == 1
    execution.refresh_from_db()
    assert execution.attempts[0]["logs"] == "" and execution.payload_purged_at is not None
    assert execution.input_sha256 == canonical_sha256('{"a":1}')  # not the hash of null
    assert execution.output_sha256 == canonical_sha256("[1]")


# --- settings: API, admin form, command ---------------------------------------------------------

@pytest.mark.django_db
def test_retention_is_set_and_checked_through_the_api(api):
    with (EXAMPLES / "hello.py").open("rb") as source:
        created = api.post("/api/functions/", {"name": "h", "source": source,
                                               "payload_retention": "hash"}, format="multipart")
    assert created.status_code == 201, created.content
    assert created.json()["payload_retention"] == "hash"
    missing = api.patch("/api/functions/h/", {"payload_retention": "days"}, format="json")
    assert missing.status_code == 400 and "payload_retention_days" in missing.json()
    zero = api.patch("/api/functions/h/", {"payload_retention": "days",
                                           "payload_retention_days": 0}, format="json")
    assert zero.status_code == 400 and "payload_retention_days" in zero.json()
    changed = api.patch("/api/functions/h/", {"payload_retention": "days",
                                              "payload_retention_days": 7}, format="json")
    assert changed.status_code == 200, changed.content
    assert (changed.json()["payload_retention"], changed.json()["payload_retention_days"]) == \
        ("days", 7)
    stray = api.patch("/api/functions/h/", {"payload_retention": "keep",
                                            "payload_retention_days": 7}, format="json")
    assert stray.status_code == 400 and "payload_retention_days" in stray.json()
    kept_only = api.patch("/api/functions/h/", {"payload_retention": "keep"}, format="json")
    assert kept_only.status_code == 200
    assert kept_only.json()["payload_retention_days"] is None
    bad = api.patch("/api/functions/h/", {"payload_retention": "forever"}, format="json")
    assert bad.status_code == 400 and "payload_retention" in bad.json()


@pytest.mark.django_db
def test_admin_form_and_execution_page(admin_client, admin_user):
    function = register(admin_user, "echo")
    base = {"description": "", "runtime": "", "timeout_seconds": 30, "memory_mb": 256,
            "env_vars": "{}", "active_version": function.active_version.pk}
    form = FunctionChangeForm({**base, "payload_retention": "days"}, instance=function)
    assert not form.is_valid() and "payload_retention_days" in form.errors
    form = FunctionChangeForm({**base, "payload_retention": "hash",
                               "payload_retention_days": 4}, instance=function)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["payload_retention_days"] is None
    url = reverse("admin:functions_function_change", args=[function.pk])
    response = admin_client.post(url, {**base, "payload_retention": "days",
                                       "payload_retention_days": 3,
                                       "versions-TOTAL_FORMS": 0, "versions-INITIAL_FORMS": 0})
    assert response.status_code == 302
    function.refresh_from_db()
    assert (function.payload_retention, function.payload_retention_days) == ("days", 3)

    execution = finished(function, age=timedelta(days=4))
    page = reverse("admin:executions_execution_change", args=[execution.pk])
    assert "Payload retention" not in admin_client.get(page).content.decode()
    retention.purge_expired()
    execution.refresh_from_db()
    body = admin_client.get(page).content.decode()
    assert "Payload retention" in body and execution.input_sha256 in body


@pytest.mark.django_db
def test_register_function_command_sets_the_retention(admin_user, tmp_path):
    path = tmp_path / "f.py"
    path.write_bytes(SOURCE)
    with pytest.raises(CommandError, match="payload_retention_days"):
        call_command("register_function", "f", str(path), "--payload-retention", "days",
                     stdout=StringIO())
    call_command("register_function", "f", str(path), "--payload-retention", "days",
                 "--retention-days", "5", stdout=StringIO())
    assert Function.objects.values_list("payload_retention", "payload_retention_days").get() == \
        ("days", 5)
    call_command("register_function", "f", str(path), "--payload-retention", "hash",
                 stdout=StringIO())
    assert Function.objects.values_list("payload_retention", "payload_retention_days").get() == \
        ("hash", None)


# --- through a real worker ----------------------------------------------------------------------

def _dispatch(api, trigger, payload):
    response = api.post(f"/api/triggers/{trigger}/dispatch/?wait=30", {"payload": payload},
                        format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_hash_mode_through_a_worker(api, user, celery_worker_process):
    function = register(user, "hashed", payload_retention="hash")
    api.post("/api/triggers/", {"name": "hashed", "function": "hashed"}, format="json")
    payload = {"user": "ada", "note": "café", "items": [3, 1]}
    body = _dispatch(api, "hashed", payload)
    assert body["status"] == "succeeded", body
    assert (body["input"], body["output"], body["logs"]) == (None, None, "")
    assert body["input_sha256"] == canonical_sha256(
        '{"items":[3,1],"note":"café","user":"ada"}')
    assert body["output_sha256"] == retention.payload_sha256(
        {"echo": payload, "n": 1})
    assert body["payload_purged_at"] is not None
    assert body["started_at"] and body["finished_at"] and body["run_seconds"] > 0
    assert body["cpu_seconds"] is not None
    assert body["worker"].startswith(celery_worker_process.hostname)
    result = AsyncResult(body["task_id"], app=celery_app)
    assert result.state == states.SUCCESS and result.get(timeout=5) is None
    assert TaskResult.objects.get(task_id=body["task_id"]).result == "null"
    # The policy is read from the cached spec: a change applies to the next run.
    services.function_update(function=function, payload_retention="keep")
    again = _dispatch(api, "hashed", payload)
    assert again["input"] == payload and again["output"] == {"echo": payload, "n": 1}
    assert again["input_sha256"] == "" and again["payload_purged_at"] is None


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_purge_task_runs_in_the_worker(user, celery_worker_process):
    now = timezone.now()
    function = register(user, "days", payload_retention="days", payload_retention_days=1)
    old = finished(function, age=timedelta(days=2), now=now)
    recent = finished(function, age=timedelta(hours=2), now=now)
    ancient = finished(register(user, "keep"), age=timedelta(days=45), now=now)
    before = kept(old)
    purge_payloads.delay()
    deadline = time.monotonic() + 30
    while Execution.objects.filter(pk=old.pk, payload_purged_at__isnull=True).exists():
        assert time.monotonic() < deadline, "the purge task did not run"
        time.sleep(0.2)
    old.refresh_from_db()
    assert old.input is None and old.input_sha256 == canonical_sha256('{"age":36,"user":"ada"}')
    assert kept(old) == before
    recent.refresh_from_db()
    assert recent.input is not None and recent.payload_purged_at is None
    # The worker's default KUBEFUNCTION_RESULT_RETENTION_DAYS (30) dropped the 45-day-old result.
    deadline = time.monotonic() + 10
    while TaskResult.objects.filter(task_id=ancient.task_id).exists():
        assert time.monotonic() < deadline, "the old task result was not deleted"
        time.sleep(0.2)
    assert TaskResult.objects.filter(task_id=recent.task_id).exists()
    ancient.refresh_from_db()
    assert ancient.output is not None
