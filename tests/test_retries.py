"""Retries with exponential backoff and dead letters, through a real worker; platform failures
retried up to their own cap; what is never retried."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from celery.result import AsyncResult
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from executions import retries, services, transitions
from executions.models import Execution
from executions.runtimes.base import Outcome, RuntimeUnavailable
from executions.services import execution_dispatch
from functions.services import function_register
from kubefunction.celery import app as celery_app
from triggers.services import trigger_create

# Fails while its attempt (context.attempt: the sandboxed box keeps no state between attempts) is
# at most event["fail"].
FLAKY = b"""def handle(event, context):
    n = context.attempt
    if n <= event["fail"]:
        raise RuntimeError(f"attempt {n} fails")
    return {"succeeded_on": n}
"""

FINISHED = ("succeeded", "failed", "timed_out")


def register(owner, name, source, **trigger_fields):
    version = function_register(name=name, owner=owner, filename="fn.py", data=source,
                                timeout_seconds=2)
    return trigger_create(name=name, function=version.function, **trigger_fields)


def wait_finished(execution: Execution, timeout: float = 60) -> Execution:
    deadline = time.monotonic() + timeout
    while execution.status not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.1)
        execution.refresh_from_db()
    assert execution.status in FINISHED, f"still {execution.status} at attempt {execution.attempt}"
    return execution


def gaps(execution: Execution) -> list[float]:
    """Seconds between the end of each attempt and the start of the next."""
    ends = [datetime.fromisoformat(a["finished_at"]) for a in execution.attempts]
    starts = [datetime.fromisoformat(a["started_at"]) for a in execution.attempts[1:]]
    starts.append(execution.started_at)
    return [(start - end).total_seconds() for start, end in zip(starts, ends, strict=True)]



@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_fails_twice_then_succeeds_with_two_retries(user, celery_worker_process):
    trigger = register(user, "flaky", FLAKY, max_retries=2, retry_backoff_seconds=1.0)
    execution = execution_dispatch(trigger=trigger, payload={"fail": 2})
    # Between attempts the execution is queued again with no Celery result: only the last
    # attempt writes one.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        execution.refresh_from_db()
        if execution.attempt == 2 and execution.status == "queued":
            assert not TaskResult.objects.filter(task_id=execution.task_id).exists()
            break
        time.sleep(0.02)
    else:
        pytest.fail("never saw the execution queued for its second attempt")
    execution = wait_finished(execution)
    assert (execution.status, execution.output, execution.attempt) == (
        "succeeded", {"succeeded_on": 3}, 3)
    assert not execution.dead_letter
    assert [(a["attempt"], a["status"], a["error_type"]) for a in execution.attempts] == [
        (1, "failed", "RuntimeError"), (2, "failed", "RuntimeError")]
    assert "attempt 1 fails" in execution.attempts[0]["error"]
    assert "attempt 2 fails" in execution.attempts[1]["error"]
    assert all(a["worker"].startswith(f"{celery_worker_process.hostname}/")
               for a in execution.attempts)
    assert [a["attempt"] for a in execution.attempts] == [1, 2], "three runs, no more"
    first, second = gaps(execution)
    assert 1.0 <= first < second and second >= 2.0, (first, second)  # 1 s, then 2 s
    result = AsyncResult(execution.task_id, app=celery_app)
    assert (result.state, result.result) == ("SUCCESS", {"succeeded_on": 3})
    assert TaskResult.objects.filter(task_id=execution.task_id).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_always_failing_ends_a_dead_letter(user, api, admin_client, celery_worker_process):
    trigger = register(user, "hopeless", FLAKY, max_retries=2, retry_backoff_seconds=1.0)
    execution = execution_dispatch(trigger=trigger, payload={"fail": 99})
    fine = execution_dispatch(trigger=register(user, "fine", b"def handle(e):\n    return 1\n"))
    execution = wait_finished(execution)
    assert (execution.status, execution.attempt, execution.dead_letter) == ("failed", 3, True)
    errors = [a["error"] for a in execution.attempts] + [execution.error]
    for n, error in enumerate(errors, start=1):
        assert f"attempt {n} fails" in error, (n, error)
    first, second = gaps(execution)
    assert 1.0 <= first < second and second >= 2.0, (first, second)
    result = AsyncResult(execution.task_id, app=celery_app)
    assert result.state == "FAILURE" and "attempt 3 fails" in str(result.result)
    assert wait_finished(fine).status == "succeeded" and not fine.dead_letter
    page = admin_client.get(reverse("admin:executions_execution_changelist"),
                            {"dead_letter": "yes"})
    assert list(page.context["cl"].result_list) == [execution]
    listed = api.get("/api/executions/", {"dead_letter": "true"}).json()["results"]
    assert [e["task_id"] for e in listed] == [execution.task_id] and listed[0]["dead_letter"]
    detail = api.get(f"/api/executions/{execution.task_id}/").json()
    assert [a["error_type"] for a in detail["attempts"]] == ["RuntimeError", "RuntimeError"]
    assert (detail["attempt"], detail["max_retries"]) == (3, 2)
    detail = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    html = detail.content.decode()
    assert "attempt 1 fails" in html and "attempt 2 fails" in html and "dead letter" in html


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_timeouts_are_retried_and_sync_calls_are_not(user, celery_worker_process):
    sleepy = register(user, "sleepy", b"import time\ndef handle(e):\n    time.sleep(10)\n",
                      max_retries=1, retry_backoff_seconds=0.2)
    timed_out = execution_dispatch(trigger=sleepy, payload={})
    flaky = register(user, "flaky-sync", FLAKY, max_retries=2, retry_backoff_seconds=0.2)
    synchronous = execution_dispatch(trigger=flaky, payload={"fail": 1},
                                     synchronous=True)
    timed_out = wait_finished(timed_out)
    assert (timed_out.status, timed_out.attempt, timed_out.dead_letter) == ("timed_out", 2, True)
    assert [a["status"] for a in timed_out.attempts] == ["timed_out"]
    synchronous = wait_finished(synchronous)
    assert (synchronous.status, synchronous.attempt, synchronous.max_retries) == (
        "failed", 1, 0)
    assert not synchronous.dead_letter, "a caller saw the failure: it is no dead letter"


# --- in-process: platform failures and what is never retried ---------------------------------

class Unavailable:
    """A runtime whose platform is down (the edge a real outage would hit)."""

    name = "unavailable"
    resumable = False

    def invoke(self, spec, payload, context):
        raise RuntimeUnavailable("the engine did not answer")


@pytest.mark.django_db
def test_platform_failures_are_retried_to_their_own_cap(user, settings, monkeypatch):
    settings.KUBEFUNCTION_PLATFORM_RETRIES = 2
    monkeypatch.setattr(services, "get_runtime", lambda name: Unavailable())
    sent, finished = [], []
    monkeypatch.setattr(services, "_resend", lambda execution_id, task_id, **kw: sent.append(kw))
    monkeypatch.setattr(services.hooks, "execution_finished",
                        lambda execution_id, **kw: finished.append((execution_id, kw)))
    trigger = register(user, "down", b"def handle(e):\n    return 1\n")  # max_retries=0
    execution = execution_dispatch(trigger=trigger, payload={})
    for attempt in (1, 2):
        services.execution_run(execution_id=str(execution.pk), worker="w")
        execution.refresh_from_db()
        assert (execution.status, execution.attempt) == ("queued", attempt + 1)
    assert [s["countdown"] for s in sent] == [1.0, 2.0]
    assert finished == [], "no after-finish hook for an attempt that is retried"
    services.execution_run(execution_id=str(execution.pk), worker="w")
    execution.refresh_from_db()
    assert (execution.status, execution.error_type, execution.dead_letter) == (
        "failed", "PlatformError", True)
    assert "the engine did not answer" in execution.error
    assert [(a["attempt"], a["platform"]) for a in execution.attempts] == [(1, True), (2, True)]
    assert AsyncResult(execution.task_id, app=celery_app).state == "FAILURE"
    assert finished == [(str(execution.pk), {"callback_url": "", "batch_id": None})]


def claimed(**fields) -> transitions.Claimed:
    values = dict(task_id="t", payload={}, runtime="local", version_id=1,
                  function_updated_at=timezone.now(), attempt=1, max_retries=3,
                  retry_backoff_seconds=1.0, synchronous=False, callback_url="", batch_id=None,
                  started_at=timezone.now())
    return transitions.Claimed(**{**values, **fields})


@pytest.mark.django_db
def test_what_is_never_retried():
    broken = Outcome(status="failed", error_type="OutputTooLarge")
    assert retries.retry_delay("x", claimed(), broken, cause=retries.Cause.FUNCTION) is None
    failed = Outcome(status="failed", error_type="ValueError")
    assert retries.retry_delay("x", claimed(max_retries=0), failed,
                               cause=retries.Cause.FUNCTION) is None
    assert retries.retry_delay("x", claimed(), failed, cause=retries.Cause.PERMANENT) is None


def test_backoff_doubles_and_is_capped(settings):
    settings.KUBEFUNCTION_RETRY_MAX_BACKOFF = 60
    assert [retries.backoff(5, n) for n in range(1, 6)] == [5, 10, 20, 40, 60]
    # No backoff is below the minimum (KUBEFUNCTION_RETRY_MIN_BACKOFF), which doubles too.
    assert retries.backoff(0, 3) == settings.KUBEFUNCTION_RETRY_MIN_BACKOFF * 4
    assert len(transitions.bounded("x" * 10_000)) < 4100


@pytest.mark.django_db
def test_a_success_costs_two_statements(user):
    """The hot path: the claim (which also reads the retry settings) and the finish — retries,
    limits and hooks add no query to a plain success."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    trigger = register(user, "fast", b"def handle(e):\n    return e\n", max_retries=3)
    first, second = (execution_dispatch(trigger=trigger, payload={"n": n}) for n in (1, 2))
    services.execution_run(execution_id=str(first.pk), worker="w")  # warms the spec cache
    with CaptureQueriesContext(connection) as queries:
        outcome = services.execution_run(execution_id=str(second.pk), worker="w")
    assert outcome.status == "succeeded" and outcome.output == {"n": 2}
    assert len(queries) == 2, [q["sql"][:80] for q in queries.captured_queries]
