"""Batches: 10,000 payloads through the API and a real worker with none lost or duplicated, the
progress figures, the admin page and API, and `manage.py dispatch --payload-file`."""

import json
import re
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count, F
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult
from rest_framework.test import APIClient

from executions.hooks import batch_close_if_done
from executions.models import Batch, Execution, ExecutionStatus
from executions.selectors import progress_of
from executions.services import execution_dispatch_many
from functions import services as function_services
from triggers.management.commands import dispatch as dispatch_command
from triggers.services import trigger_create

HANDLER = b"def handle(event, context):\n    return event\n"


@pytest.fixture
def trigger(user):
    function = function_services.function_register(
        name="echo", owner=user, filename="echo.py", data=HANDLER).function
    return trigger_create(name="echo", function=function)


def wait_for_batch(batch_id, timeout: float) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = Batch.objects.get(pk=batch_id)
        if batch.finished_at is not None:
            return batch
        time.sleep(1)
    progress = progress_of(Batch.objects.get(pk=batch_id))
    raise AssertionError(f"batch {batch_id} did not finish in {timeout} s: {progress}")


@pytest.mark.worker
@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_ten_thousand_payloads_none_lost_or_duplicated(api, trigger, celery_worker_process):
    count = 10_000
    started = time.monotonic()
    response = api.post("/api/triggers/echo/dispatch/", {"payloads": list(range(count))},
                        format="json")
    assert response.status_code == 202, response.content[:500]
    body = response.json()
    assert body["count"] == count and len(body["executions"]) == count
    batch_id = body["batch"]["id"]
    assert body["batch"]["url"].endswith(f"/api/batches/{batch_id}/")
    dispatched = time.monotonic() - started

    batch = wait_for_batch(batch_id, timeout=840)
    elapsed = time.monotonic() - started
    print(f"\n10,000 payloads: dispatched in {dispatched:.1f} s, all finished in {elapsed:.1f} s")

    executions = Execution.objects.filter(batch_id=batch_id)
    assert executions.count() == count
    assert executions.values("task_id").distinct().count() == count
    assert sorted(executions.values_list("input", flat=True)) == list(range(count))
    assert {e["task_id"] for e in body["executions"]} == set(
        executions.values_list("task_id", flat=True))
    assert dict(executions.values_list("status").annotate(n=Count("pk"))) == {
        ExecutionStatus.SUCCEEDED: count}
    assert not executions.filter(finished_at__isnull=True).exists()
    assert not executions.exclude(output=F("input")).exists()  # each returned its input
    results = TaskResult.objects.filter(task_id__in=executions.values("task_id"))
    assert results.count() == count
    assert results.values("task_id").distinct().count() == count
    assert set(results.values_list("status", flat=True)) == {"SUCCESS"}

    progress = progress_of(batch)
    assert (progress.size, progress.done, progress.succeeded, progress.failed) == (
        count, count, count, 0)
    assert progress.queued == progress.running == 0
    assert 0 < progress.p50_seconds <= progress.p95_seconds
    last = executions.order_by("-finished_at").values_list("finished_at", flat=True)[0]
    assert batch.finished_at == last

    page = api.get(f"/api/batches/{batch_id}/").json()
    assert page["done"] == count and page["failed"] == 0 and page["finished_at"]


@pytest.mark.django_db
def test_progress_counts_and_closing(trigger, user):
    executions = execution_dispatch_many(trigger=trigger, payloads=[1, 2, 3, 4], user=user,
                                         source="api")
    batch = Batch.objects.get()
    assert (batch.size, batch.source, batch.created_by) == (4, "api", user)
    now = timezone.now()
    outcomes = [ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT]
    for execution, status in zip(executions, outcomes, strict=False):
        Execution.objects.filter(pk=execution.pk).update(
            status=status, finished_at=now + timedelta(seconds=len(status)))
    assert not batch_close_if_done(batch_id=batch.pk)  # one still queued
    progress = progress_of(batch)
    assert (progress.done, progress.succeeded, progress.failed, progress.timed_out,
            progress.queued, progress.running) == (3, 1, 2, 1, 1, 0)
    assert progress.p50_seconds is not None and progress.percent == 75
    Execution.objects.filter(pk=executions[3].pk).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=now + timedelta(seconds=60))
    assert batch_close_if_done(batch_id=batch.pk)
    assert not batch_close_if_done(batch_id=batch.pk)  # already closed
    batch.refresh_from_db()
    assert batch.finished_at == now + timedelta(seconds=60)


@pytest.mark.django_db
def test_a_batch_is_not_closed_before_all_its_executions_exist(trigger, user):
    batch = Batch.objects.create(trigger=trigger, size=3, source="command")
    execution_dispatch_many(trigger=trigger, payloads=[1, 2], batch=batch)
    Execution.objects.update(status=ExecutionStatus.SUCCEEDED, finished_at=timezone.now())
    assert not batch_close_if_done(batch_id=batch.pk)  # the third is not dispatched yet
    execution_dispatch_many(trigger=trigger, payloads=[3], batch=batch)
    Execution.objects.filter(status=ExecutionStatus.QUEUED).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=timezone.now())
    assert batch_close_if_done(batch_id=batch.pk)
    assert Batch.objects.count() == 1


@pytest.mark.django_db
def test_the_reaper_closes_the_batches_whose_executions_all_ended(trigger, user):
    """The sweep behind the run path's close: two batches whose executions ended without the
    run path closing them (a worker that died after the finish's commit), one still running."""
    from executions import reaper

    ended = [execution_dispatch_many(trigger=trigger, payloads=[1, 2], user=user)
             for _ in range(2)]
    running = execution_dispatch_many(trigger=trigger, payloads=[1, 2], user=user)
    done_at = timezone.now()
    Execution.objects.filter(pk__in=[e.pk for pair in ended for e in pair]).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=done_at)
    Execution.objects.filter(pk=running[0].pk).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=done_at)
    assert reaper.reap(current_node="")["batches_closed"] == 2
    closed = {pair[0].batch_id: Batch.objects.get(pk=pair[0].batch_id).finished_at
              for pair in ended}
    assert set(closed.values()) == {done_at}
    assert Batch.objects.get(pk=running[0].batch_id).finished_at is None
    assert "batches_closed" not in reaper.reap(current_node="")


@pytest.mark.django_db
def test_batch_api_is_owner_scoped(api, trigger, user, other_user):
    execution_dispatch_many(trigger=trigger, payloads=[1, 2], user=user, source="api")
    listed = api.get("/api/batches/").json()
    assert listed["count"] == 1
    [row] = listed["results"]
    assert (row["size"], row["done"], row["queued"], row["trigger"]) == (2, 0, 2, "echo")
    assert row["p50_seconds"] is None and row["finished_at"] is None
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.get("/api/batches/").json()["count"] == 0
    assert other.get(f"/api/batches/{row['id']}/").status_code == 404


@pytest.mark.django_db
def test_single_dispatch_makes_no_batch(api, trigger):
    response = api.post("/api/triggers/echo/dispatch/", {"payload": 1}, format="json")
    assert response.status_code == 202 and "batch" not in response.json()
    assert not Batch.objects.exists()


@pytest.mark.django_db
def test_batch_admin_shows_progress_and_links_executions(admin_client, trigger, user):
    executions = execution_dispatch_many(trigger=trigger, payloads=list(range(4)), user=user)
    Execution.objects.filter(pk__in=[e.pk for e in executions[:3]]).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=timezone.now())
    batch = Batch.objects.get()
    page = admin_client.get(reverse("admin:executions_batch_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "3 / 4 (75%)" in html and 'style="width:75.00%' in html
    link = f"?batch__id__exact={batch.pk}"
    assert link in html
    filtered = admin_client.get(reverse("admin:executions_execution_changelist") + link)
    assert filtered.status_code == 200  # the admin accepts the lookup (no ?e=1 redirect)
    assert len(re.findall(r'class="field-short_task_id"', filtered.content.decode())) == 4
    detail = admin_client.get(reverse("admin:executions_batch_change", args=[batch.pk]))
    assert detail.status_code == 200 and "3 / 4 (75%)" in detail.content.decode()
    execution = admin_client.get(reverse("admin:executions_execution_change",
                                         args=[executions[0].pk]))
    assert execution.status_code == 200 and "Callback and batch" in execution.content.decode()


def call(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_dispatch_payload_file_makes_one_batch_across_chunks(trigger, admin_user, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(dispatch_command, "CHUNK", 2)
    array = tmp_path / "payloads.json"
    array.write_text(json.dumps([{"i": i} for i in range(5)]))
    output = call("dispatch", "echo", "--payload-file", str(array))
    batch = Batch.objects.get()
    assert f"batch {batch.pk}" in output and "queued 5 executions" in output
    assert (batch.size, batch.source, batch.executions.count()) == (5, "command", 5)
    lines = tmp_path / "payloads.jsonl"
    lines.write_text('[1, 2]\n{"i": 9}\n\n"text"\n')
    call("dispatch", "echo", "--payload-file", str(lines))
    newest = Batch.objects.order_by("-created_at").first()
    assert sorted(map(json.dumps, newest.executions.values_list("input", flat=True))) == [
        '"text"', "[1, 2]", '{"i": 9}']


@pytest.mark.django_db
def test_dispatch_payload_file_errors(trigger, admin_user, tmp_path, settings):
    cases = {"missing.json": (None, "no such file"),
             "empty.json": ("[]", "holds no payload"),
             "broken.jsonl": ('{"a": 1}\n{"a": \n', "broken.jsonl:2: not JSON"),
             "blank.jsonl": ("\n\n", "holds no payload")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(CommandError, match=message):
            call("dispatch", "echo", "--payload-file", str(path))
    settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES = 50
    big = tmp_path / "big.json"
    big.write_text(json.dumps([{"i": 1}, {"x": "y" * 100}]))
    with pytest.raises(CommandError, match="payload 2: the payload is"):
        call("dispatch", "echo", "--payload-file", str(big))
    assert not Execution.objects.exists() and not Batch.objects.exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_dispatch_payload_file_wait_prints_percentiles(trigger, admin_user, tmp_path,
                                                       celery_worker_process):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"i": i}) for i in range(20)))
    output = call("dispatch", "echo", "--payload-file", str(path), "--wait", "--timeout", "120")
    batch = Batch.objects.get()
    assert f"batch {batch.pk}" in output
    assert "20 dispatched in" in output and "20 succeeded" in output
    assert re.search(r"retrieval time p50 [\d.]+ ms, p95 [\d.]+ ms", output), output
    assert wait_for_batch(batch.pk, timeout=30).finished_at is not None
