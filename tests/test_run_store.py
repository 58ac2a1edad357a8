"""The run path's writes behave the same on the one-statement Postgres path and the ORM path."""

import pytest
from celery.result import AsyncResult
from django.utils import timezone
from django_celery_results.models import TaskResult

from executions import transitions
from executions.models import Execution
from functions.services import function_register
from kubefunction.celery import app

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["one statement", "orm"])
def path(request, monkeypatch):
    if request.param == "orm":
        monkeypatch.setattr(transitions, "_fast", lambda: False)
    return request.param


@pytest.fixture
def execution(user):
    version = function_register(name="f", owner=user, filename="f.py",
                                data=b"def handle(e):\n    return e\n")
    return Execution.objects.create(task_id="t-1", function=version.function, version=version,
                                    input={"ü": [1, None]}, dispatched_at=timezone.now())


def test_claim_once(path, execution):
    claimed = transitions.claim(str(execution.pk), "w1")
    assert (claimed.task_id, claimed.payload, claimed.version_id) == (
        "t-1", {"ü": [1, None]}, execution.version_id)
    assert claimed.function_updated_at == execution.function.updated_at
    assert (claimed.attempt, claimed.max_retries, claimed.batch_id) == (1, 0, None)
    assert transitions.claim(str(execution.pk), "w2") is None
    execution.refresh_from_db()
    assert (execution.status, execution.worker) == ("running", "w1")
    assert execution.started_at is not None


@pytest.mark.django_db(transaction=True)
def test_the_claims_unflushed_commit_does_not_leak_to_the_finish(execution):
    """The claim skips its WAL flush (`SET LOCAL synchronous_commit = off`, a lost claim is
    recovered by the reaper); the setting ends with the claim's own transaction, so the finish
    on the same connection, what the user is promised, still waits for its flush."""
    from django.db import connection

    assert transitions.claim(str(execution.pk), "w1") is not None
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    execution.refresh_from_db()
    assert execution.status == "running"


def test_finish_stores_outcome_and_result_together(path, execution):
    assert not transitions.finish(str(execution.pk), "t-1", {"status": "succeeded"}, worker="w"), \
        "a queued execution cannot be finished"
    transitions.claim(str(execution.pk), "w")
    fields = {"status": "succeeded", "output": {"answer": "✓", "n": 42}, "logs": "hi",
              "cold": False, "cpu_seconds": 0.01, "finished_at": timezone.now()}
    assert transitions.finish(str(execution.pk), "t-1", fields, worker="w")
    execution.refresh_from_db()
    assert (execution.status, execution.output, execution.logs) == (
        "succeeded", {"answer": "✓", "n": 42}, "hi")
    result = AsyncResult("t-1", app=app)
    assert (result.state, result.result) == ("SUCCESS", {"answer": "✓", "n": 42})
    stored = TaskResult.objects.get(task_id="t-1")
    assert stored.worker == "w" and stored.date_created is not None
    again = {**fields, "status": "failed", "error_type": "X", "error": "late"}
    assert not transitions.finish(str(execution.pk), "t-1", again, worker="w"), \
        "a finished execution is never finished twice"
    assert AsyncResult("t-1", app=app).state == "SUCCESS"


def test_finish_says_when_its_batch_may_close(path, execution):
    """The batch check rides on the finish: a batch is worth closing only once none of its
    executions is queued (the finish of every earlier one skips the statement)."""
    from executions.models import Batch

    batch = Batch.objects.create(size=3, source="api")
    siblings = [Execution.objects.create(
        task_id=f"b-{n}", function=execution.function, version=execution.version, input=n,
        dispatched_at=timezone.now(), batch=batch) for n in range(3)]
    first, second, third = (str(e.pk) for e in siblings)
    for pk in (first, second):
        transitions.claim(pk, "w")
    finished = transitions.finish(first, "b-0", {"status": "succeeded"}, worker="w")
    assert finished and not finished.batch_may_close  # the third is still queued
    transitions.claim(third, "w")
    finished = transitions.finish(second, "b-1", {"status": "succeeded"}, worker="w")
    assert finished.batch_may_close  # none queued: checked after the commit (the third runs)
    assert transitions.finish(third, "b-2", {"status": "failed"}, worker="w").batch_may_close
    transitions.claim(str(execution.pk), "w")
    assert not transitions.finish(str(execution.pk), "t-1", {"status": "succeeded"},
                                  worker="w").batch_may_close  # no batch


def test_a_cached_spec_follows_its_owners_superuser_status(path, execution, user):
    """Whether a function may run unsandboxed (its owner is a superuser) is read by the claim:
    a worker's cached spec does not outlive the owner's demotion."""
    from executions import services

    user.is_superuser = True
    user.save()
    claimed = transitions.claim(str(execution.pk), "w")
    assert claimed.owner_trusted and services._spec(claimed).owner_trusted
    user.is_superuser = False
    user.save()  # the function itself is unchanged: its updated_at too
    Execution.objects.filter(pk=execution.pk).update(status="queued")
    claimed = transitions.claim(str(execution.pk), "w")
    assert not claimed.owner_trusted and not services._spec(claimed).owner_trusted


def test_failure_result_carries_the_error(path, execution):
    transitions.claim(str(execution.pk), "w")
    transitions.finish(str(execution.pk), "t-1", {
        "status": "failed", "error_type": "ValueError",
        "error": "Traceback (most recent call last):\nValueError: nope"}, worker="w")
    result = AsyncResult("t-1", app=app)
    assert result.state == "FAILURE"
    assert "ValueError: nope" in str(result.result) and "ValueError: nope" in result.traceback


def test_redelivery_of_a_run_whose_claimer_is_gone_runs_it_again(execution):
    """A redelivered message for an execution left `running` by a process that is gone (its
    node does not answer): the lost attempt is recorded and the next one runs, once. (A live
    claimer keeps its run: tests/test_reaper.py.)"""
    from executions.services import execution_run

    transitions.claim(str(execution.pk), "gone@nowhere/4242")
    outcome = execution_run(execution_id=str(execution.pk), worker="w2@host/1",
                            redelivered=True)
    assert outcome.status == "succeeded"
    execution.refresh_from_db()
    assert (execution.status, execution.worker, execution.attempt) == (
        "succeeded", "w2@host/1", 2)
    assert [(a["error_type"], a["worker"]) for a in execution.attempts] == [
        ("WorkerLost", "gone@nowhere/4242")]
    assert execution_run(execution_id=str(execution.pk), worker="w3@host/1",
                         redelivered=True) is None
