"""The reaper (executions.reaper): lost messages are sent again, lost runs are run again or
failed, and nothing it does ever makes a second terminal record. Real Postgres, real Redis and,
where a message must run, the session's real worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult
from kombu import Connection

from executions import reaper, retries, services, transitions, workers
from executions.models import Execution
from executions.runtimes.base import Outcome
from functions.services import function_register
from kubefunction.celery import app as celery_app
from triggers.services import trigger_create

FINISHED = ("succeeded", "failed", "timed_out")


def make_execution(user, *, name="f", source=b"def handle(e):\n    return e\n", **fields):
    version = function_register(name=name, owner=user, filename="f.py", data=source,
                                timeout_seconds=5)
    trigger = trigger_create(name=name, function=version.function)
    now = timezone.now()
    return Execution.objects.create(task_id=f"reap-{name}-{time.monotonic_ns()}",
                                    function=version.function, version=version, input=7,
                                    trigger=trigger,
                                    runtime="local", dispatched_at=now, due_at=now, **fields)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def wait_finished(execution: Execution, timeout: float = 30) -> Execution:
    deadline = time.monotonic() + timeout
    while execution.status not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.1)
        execution.refresh_from_db()
    return execution


def age(execution: Execution, *, seconds: float) -> None:
    """Move its due time (and start) `seconds` into the past."""
    past = timezone.now() - timedelta(seconds=seconds)
    Execution.objects.filter(pk=execution.pk).update(due_at=past, dispatched_at=past,
                                                     started_at=past if execution.started_at
                                                     else None)


@pytest.fixture
def grace(settings):
    settings.KUBEFUNCTION_REAPER_QUEUED_GRACE = 5
    settings.KUBEFUNCTION_REAPER_RUNNING_MARGIN = 5
    settings.KUBEFUNCTION_REAPER_MAX_RESENDS = 2
    return settings


def test_the_reaper_is_scheduled(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["executions-reap"]
    assert entry["task"] == "executions.reap"
    assert entry["schedule"] == settings.KUBEFUNCTION_REAPER_INTERVAL
    assert "executions.reap" in celery_app.tasks


def test_no_message_is_redelivered_while_it_may_still_be_held(settings):
    """The visibility timeout outlasts the longest a worker holds a message: the longest retry
    countdown, then the longest run (the run task's soft limit)."""
    from executions.tasks import run_execution

    held = settings.KUBEFUNCTION_RETRY_MAX_BACKOFF + run_execution.soft_time_limit
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] > held
    assert celery_app.conf.worker_soft_shutdown_timeout > 0
    assert celery_app.conf.worker_enable_soft_shutdown_on_idle
    assert celery_app.conf.task_acks_late and celery_app.conf.task_reject_on_worker_lost
    assert celery_app.conf.broker_connection_max_retries is None


def test_worker_field_names_node_and_pid():
    assert workers.parse_worker("celery@host/123") == ("celery@host", 123)
    assert workers.parse_worker("celery@host") == ("celery@host", None)
    assert workers.worker_id("celery@host") == f"celery@host/{os.getpid()}"
    assert not workers.holder_alive("", task_id="t")
    assert not workers.holder_alive(f"me@h/{dead_pid()}", task_id="t", current_node="me@h")


@pytest.mark.django_db
def test_retry_and_concurrency_wait_move_due_at(user):
    execution = make_execution(user)
    claimed = transitions.claim(str(execution.pk), "w@h/1")
    outcome = Outcome(status="failed", error_type="RuntimeError", error="x", cold=False)
    assert transitions.requeue(str(execution.pk), claimed, outcome, worker="w@h/1",
                               cause=retries.Cause.FUNCTION, earlier=[], countdown=100)
    execution.refresh_from_db()
    assert execution.status == "queued"
    assert 95 < (execution.due_at - timezone.now()).total_seconds() <= 100
    transitions.postpone(str(execution.pk), 40)
    execution.refresh_from_db()
    assert 35 < (execution.due_at - timezone.now()).total_seconds() <= 40


@pytest.mark.django_db
def test_a_finished_run_is_never_recovered(user):
    """The race with a worker that finishes at the same moment: the conditional updates leave
    exactly one terminal record."""
    execution = make_execution(user)
    claimed = transitions.claim(str(execution.pk), "w@h/1")
    assert transitions.finish(str(execution.pk), claimed.task_id, {"status": "succeeded",
                                                                   "output": 1}, worker="w@h/1")
    assert services.execution_lost(execution_id=str(execution.pk), holder="w@h/1") == ""
    assert not services.execution_fail(execution_id=str(execution.pk), reason="late",
                                       expect={"worker": "w@h/1"})
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == ("succeeded", [])
    assert TaskResult.objects.filter(task_id=execution.task_id).count() == 1


@pytest.mark.django_db
def test_a_run_recovered_by_another_is_left_alone(user):
    execution = make_execution(user)
    transitions.claim(str(execution.pk), "w@h/1")
    assert services.execution_lost(execution_id=str(execution.pk), holder="w@h/1") == \
        "requeued"
    assert services.execution_lost(execution_id=str(execution.pk), holder="w@h/1") == ""
    transitions.claim(str(execution.pk), "w@h/2")
    assert services.execution_lost(execution_id=str(execution.pk), holder="w@h/1") == ""
    execution.refresh_from_db()
    assert (execution.status, execution.attempt, execution.worker) == ("running", 2, "w@h/2")
    assert [(a["attempt"], a["error_type"], a["platform"]) for a in execution.attempts] == [
        (1, "WorkerLost", True)]


@pytest.mark.django_db
def test_a_lost_run_without_platform_retries_fails(user, settings):
    settings.KUBEFUNCTION_PLATFORM_RETRIES = 0
    execution = make_execution(user)
    transitions.claim(str(execution.pk), "w@h/1")
    assert services.execution_lost(execution_id=str(execution.pk), holder="w@h/1") == "failed"
    execution.refresh_from_db()
    assert (execution.status, execution.error_type, execution.dead_letter) == (
        "failed", "WorkerLost", True)
    assert "w@h/1" in execution.error and "platform retries" in execution.error
    assert TaskResult.objects.get(task_id=execution.task_id).status == "FAILURE"


@pytest.mark.django_db
def test_a_backlog_is_not_taken_for_lost_messages(user, grace):
    """While messages wait in the queue the workers are behind: a late execution is waiting,
    not lost, and nothing is sent again."""
    grace.CELERY_TASK_DEFAULT_QUEUE = queue = f"kf-test-reaper-backlog-{os.getpid()}"
    execution = make_execution(user)
    age(execution, seconds=60)
    with Connection(grace.CELERY_BROKER_URL) as connection:
        waiting = connection.SimpleQueue(queue)
        waiting.put({"a": "message"})
        try:
            assert reaper.reap_queued() == {"resent": 0, "lost": 0}
        finally:
            waiting.clear()
            waiting.close()
    execution.refresh_from_db()
    assert (execution.status, execution.resends) == ("queued", 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_lost_message_is_sent_again_and_runs_once(user, celery_worker_process, grace):
    """An execution stored but never sent (a broker outage at dispatch): past its grace the
    reaper sends it, and the worker runs it."""
    execution = make_execution(user)
    fresh = make_execution(user, name="fresh")  # not yet past its grace: left alone
    age(execution, seconds=60)
    done = reaper.reap(current_node="")
    assert done["resent"] == 1, done
    execution = wait_finished(execution)
    assert (execution.status, execution.output, execution.resends) == ("succeeded", 7, 1)
    assert TaskResult.objects.filter(task_id=execution.task_id).count() == 1
    fresh.refresh_from_db()
    assert (fresh.status, fresh.resends) == ("queued", 0)


@pytest.mark.django_db
def test_a_message_lost_too_often_fails_with_the_reason(user, grace):
    # A queue of its own: messages other tests left in the shared one would read as a backlog.
    grace.CELERY_TASK_DEFAULT_QUEUE = f"kf-test-reaper-lost-{os.getpid()}"
    execution = make_execution(user, resends=2)
    age(execution, seconds=60)
    Execution.objects.filter(pk=execution.pk).update(due_at=None)  # a row from before due_at
    assert reaper.reap_queued()["lost"] == 1
    execution.refresh_from_db()
    assert (execution.status, execution.error_type) == ("failed", "MessageLost")
    assert "its message was lost 2 times" in execution.error
    assert TaskResult.objects.filter(task_id=execution.task_id, status="FAILURE").count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_run_past_its_deadline_whose_worker_is_gone_runs_again(user, celery_worker_process,
                                                                 grace):
    """Running past start + timeout + margin, claimed by a process that is gone (a node that
    does not answer; a dead pid on the reaper's own node): run again as the next attempt. A
    run not yet past its deadline is left alone (one whose process lives: the next test)."""
    gone_node = make_execution(user, name="gone-node")
    gone_pid = make_execution(user, name="gone-pid")
    recent = make_execution(user, name="recent")
    transitions.claim(str(gone_node.pk), "ghost@nowhere/4242")
    transitions.claim(str(gone_pid.pk), f"reaper@here/{dead_pid()}")
    transitions.claim(str(recent.pk), "ghost@nowhere/4243")
    for execution in (gone_node, gone_pid):
        execution.refresh_from_db()
        age(execution, seconds=20)  # timeout 5 + margin 5 < 20
    done = reaper.reap(current_node="reaper@here")
    assert (done["rerun"], done["failed"]) == (2, 0), done
    for execution in (gone_node, gone_pid):
        execution = wait_finished(execution)
        assert (execution.status, execution.output, execution.attempt) == ("succeeded", 7, 2)
        assert [a["error_type"] for a in execution.attempts] == ["WorkerLost"]
        assert "was gone when the reaper found it" in execution.attempts[0]["error"]
        assert TaskResult.objects.filter(task_id=execution.task_id).count() == 1
    recent.refresh_from_db()
    assert (recent.status, recent.attempt) == ("running", 1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_run_whose_worker_answers_with_it_is_left_alone(user, celery_worker_process, grace):
    """A live worker on another node that reports the task active in the claiming process:
    not taken for lost, however late it looks, and a redelivered message is not run again."""
    from executions.services import execution_dispatch

    trigger = make_execution(user, name="sleeps", source=b"import time\n"
                             b"def handle(e):\n    time.sleep(4)\n    return e\n").trigger
    execution = execution_dispatch(trigger=trigger, payload=3)
    deadline = time.monotonic() + 20
    while execution.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        execution.refresh_from_db()
    assert workers.worker_node(execution.worker) == celery_worker_process.hostname
    node = workers.worker_node(execution.worker)
    assert workers.holder_alive(execution.worker, task_id=execution.task_id)
    assert workers.holder_alive(execution.worker, task_id=execution.task_id, current_node=node)
    # Same node, but not the process that runs it (alive: this test's parent process).
    assert not workers.holder_alive(f"{node}/{os.getppid()}", task_id=execution.task_id)
    assert not workers.holder_alive(f"{node}/{dead_pid()}", task_id=execution.task_id)
    age(execution, seconds=30)
    assert reaper.reap_running()["rerun"] == 0
    assert services.execution_run(execution_id=str(execution.pk), worker="other@host/1",
                                  redelivered=True) is None
    execution = wait_finished(execution)
    assert (execution.status, execution.attempt, execution.output) == ("succeeded", 1, 3)
    assert TaskResult.objects.filter(task_id=execution.task_id).count() == 1


@pytest.mark.django_db
def test_broker_down_skips_the_run_and_changes_nothing(user, grace, monkeypatch):
    """With the broker unreachable the reaper neither sends nor judges anything: the next run
    tries again."""
    queued = make_execution(user, name="waits")
    age(queued, seconds=60)
    running = make_execution(user, name="runs")
    transitions.claim(str(running.pk), "ghost@nowhere/1")
    running.refresh_from_db()
    age(running, seconds=60)
    saved = (celery_app.conf.broker_url, celery_app.conf.broker_connection_timeout)
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on 1
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app.conf.broker_connection_timeout = 1
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    try:
        assert reaper.reap(current_node="") == {}
    finally:
        celery_app.conf.broker_url, celery_app.conf.broker_connection_timeout = saved
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
    for execution, status in ((queued, "queued"), (running, "running")):
        execution.refresh_from_db()
        assert (execution.status, execution.resends, execution.attempt) == (status, 0, 1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_message_a_live_worker_holds_is_not_sent_again(user, celery_worker_process, grace):
    """Past its due time but held by a live worker (here a countdown it waits for): not lost."""
    from executions.tasks import run_execution

    execution = make_execution(user)
    age(execution, seconds=60)
    run_execution.apply_async(args=[str(execution.pk)], task_id=execution.task_id, countdown=4)
    deadline = time.monotonic() + 10
    while not (celery_app.control.inspect(timeout=1).query_task(execution.task_id) or {}):
        assert time.monotonic() < deadline, "the worker never received the message"
    assert reaper.reap_queued() == {"resent": 0, "lost": 0}
    execution = wait_finished(execution)
    assert (execution.status, execution.resends) == ("succeeded", 0)
