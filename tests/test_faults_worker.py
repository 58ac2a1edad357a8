"""Fault injection on real worker processes (docs/reliability.md): a worker child SIGKILLed
mid-run, a whole worker SIGKILLed with work queued and running, a worker SIGTERMed while retries
wait in a countdown. Each test starts and kills its own `celery worker` subprocesses on a queue
of its own; every accepted execution must end in exactly one terminal record."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from django_celery_results.models import TaskResult

from executions.models import Execution
from executions.services import execution_dispatch_many
from executions.workers import parse_worker
from functions.services import function_register
from kubefunction.celery import app as celery_app
from tests.processes import celery_env, start_worker
from triggers.services import trigger_create

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("succeeded", "failed", "timed_out")

# Appends "start" to a file named after the payload, sleeps, then appends "done".
SLOW = b"""import os, time

def handle(event):
    path = os.path.join(event["dir"], str(event["n"]))
    with open(path, "a") as f:
        f.write("start\\n")
    time.sleep(event["sleep"])
    with open(path, "a") as f:
        f.write("done\\n")
    return event["n"]
"""
# Fails on its first attempt (counted in a file), succeeds on the next.
FAILS_ONCE = b"""import os

def handle(event):
    path = os.path.join(event["dir"], str(event["n"]))
    with open(path, "a") as f:
        f.write("x")
    if os.path.getsize(path) == 1:
        raise RuntimeError("first attempt fails")
    return event["n"]
"""


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of this test's own: the session's worker (if any) never takes its messages."""
    name = f"kf-faults-{os.getpid()}-{time.monotonic_ns()}"
    saved = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = name
    yield name
    celery_app.conf.task_default_queue = saved
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(name)


@pytest.fixture
def marks(tmp_path) -> Path:
    """The functions' marker folder: the local sandbox binds it read-write into every box
    (KUBEFUNCTION_SANDBOX_WRITABLE_DIRS), so uid 65534 must be able to write it."""
    folder = tmp_path / "marks"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


@pytest.fixture
def workers(queue, tmp_path, marks) -> Iterator:
    """start(**env) starts a `celery worker` on the test's queue; all are killed at the end."""
    started: list[subprocess.Popen] = []

    def start(*, beat: bool = False, concurrency: int = 2, prefetch: int = 1,
              **extra: str) -> subprocess.Popen:
        args = [f"--prefetch-multiplier={prefetch}"]
        if beat:
            args += ["--beat", "--schedule", str(tmp_path / "beat-schedule")]
        env = celery_env(KUBEFUNCTION_QUEUE=queue, KUBEFUNCTION_DISPATCH_RATE="",
                         KUBEFUNCTION_SANDBOX_WRITABLE_DIRS=str(marks), **extra)
        try:
            process = start_worker(f"faults-{len(started)}-{os.getpid()}@localhost",
                                   tmp_path / f"worker-{len(started)}.log", env,
                                   concurrency=concurrency, queue=queue, extra_args=tuple(args))
        except RuntimeError as exc:
            pytest.fail(str(exc))
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def register(user, name: str, source: bytes, *, timeout: int, **trigger_fields):
    version = function_register(name=name, owner=user, filename="fn.py", data=source,
                                timeout_seconds=timeout)
    return trigger_create(name=name, function=version.function, **trigger_fields)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def assert_one_terminal_record_each(task_ids: list[str]) -> None:
    executions = list(Execution.objects.filter(task_id__in=task_ids))
    assert len(executions) == len(task_ids)
    stuck = [(e.task_id, e.status) for e in executions if e.status not in FINISHED]
    assert not stuck, f"left pending: {stuck}"
    rows = list(TaskResult.objects.filter(task_id__in=task_ids).values_list("task_id",
                                                                           flat=True))
    assert sorted(rows) == sorted(task_ids), "one Celery result per execution, no more"


def test_worker_child_killed_mid_run_is_run_again_once(user, workers, marks):
    """SIGKILL of the pool process running a 5-second function: the redelivered message finds
    its claimer dead, records the lost attempt and runs it again; the first runner died with
    its worker process (two starts, one completion) and there is one result."""
    worker = workers()
    trigger = register(user, "slow", SLOW, timeout=30)
    execution = execution_dispatch_many(trigger=trigger, payloads=[
        {"dir": str(marks), "n": 1, "sleep": 5}])[0]
    mark = marks / "1"
    wait_until(lambda: mark.exists() and mark.read_text() == "start\n", 30, "the first start")
    execution.refresh_from_db()
    node, pid = parse_worker(execution.worker)
    assert node == worker.hostname
    assert pid in [child.pid for child in psutil.Process(worker.pid).children()]
    os.kill(pid, signal.SIGKILL)

    wait_until(lambda: Execution.objects.get(pk=execution.pk).status in FINISHED, 45,
               "the execution to finish")
    execution.refresh_from_db()
    assert (execution.status, execution.output, execution.attempt) == ("succeeded", 1, 2), \
        execution.error
    assert [(a["attempt"], a["error_type"], a["platform"], a["worker"])
            for a in execution.attempts] == [(1, "WorkerLost", True, f"{node}/{pid}")]
    assert parse_worker(execution.worker)[1] != pid
    time.sleep(1)  # a first runner left alive would have written "done" by now
    assert mark.read_text() == "start\nstart\ndone\n"
    assert_one_terminal_record_each([execution.task_id])
    assert TaskResult.objects.get(task_id=execution.task_id).status == "SUCCESS"


def test_whole_worker_killed_with_fifty_executions_all_end_once(user, workers, marks):
    """SIGKILL of a worker's whole process group while 50 executions are queued, reserved and
    running: a new worker with beat (the reaper every second) ends every one of them once.
    The first worker prefetches (as any worker with a prefetch multiplier above 1 does), so
    the kill also loses messages it had reserved but not started: their executions are
    `queued` with no message anywhere until the reaper sends them again."""
    first = workers(prefetch=4)
    trigger = register(user, "burst", SLOW, timeout=3)
    executions = execution_dispatch_many(trigger=trigger, payloads=[
        {"dir": str(marks), "n": n, "sleep": 0.3} for n in range(50)])
    task_ids = [e.task_id for e in executions]
    ids = [e.pk for e in executions]

    def running_and_done() -> bool:
        statuses = list(Execution.objects.filter(pk__in=ids).values_list("status", flat=True))
        return statuses.count("running") >= 1 and statuses.count("succeeded") >= 4

    wait_until(running_and_done, 45, "some executions to run")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    lost = list(Execution.objects.filter(pk__in=ids).exclude(status__in=FINISHED)
                .values_list("status", flat=True))
    assert "running" in lost and "queued" in lost

    workers(beat=True, KUBEFUNCTION_REAPER_INTERVAL="1", KUBEFUNCTION_REAPER_QUEUED_GRACE="3",
            KUBEFUNCTION_REAPER_RUNNING_MARGIN="2")
    wait_until(lambda: not Execution.objects.filter(pk__in=ids).exclude(
        status__in=FINISHED).exists(), 75, "every execution to end")
    assert_one_terminal_record_each(task_ids)
    statuses = set(Execution.objects.filter(pk__in=ids).values_list("status", flat=True))
    assert statuses == {"succeeded"}
    rerun = Execution.objects.filter(pk__in=ids, attempt=2)
    assert rerun.exists(), "the runs the kill cut short were run again"
    assert all(e.attempts[0]["error_type"] == "WorkerLost" for e in rerun)
    assert Execution.objects.filter(pk__in=ids, resends=1).exists(), \
        "the reserved messages the kill lost were sent again"


def test_sigterm_requeues_countdown_retries_for_the_next_worker(user, workers, marks):
    """Executions waiting in a retry countdown (ETA messages the worker holds unacknowledged)
    when their worker is told to stop (SIGTERM): it hands them back, and the next worker runs
    each retry once."""
    first = workers()
    trigger = register(user, "retried", FAILS_ONCE, timeout=10, max_retries=1,
                       retry_backoff_seconds=8)
    executions = execution_dispatch_many(trigger=trigger, payloads=[
        {"dir": str(marks), "n": n} for n in range(5)])
    ids = [e.pk for e in executions]
    wait_until(lambda: Execution.objects.filter(pk__in=ids, status="queued", attempt=2)
               .count() == 5, 30, "all five to wait for their retry")
    time.sleep(0.5)  # the retry messages reach the worker, which holds them until due
    os.killpg(first.pid, signal.SIGTERM)
    first.wait(timeout=30)

    workers()
    wait_until(lambda: not Execution.objects.filter(pk__in=ids).exclude(
        status__in=FINISHED).exists(), 45, "every retry to run")
    assert_one_terminal_record_each([e.task_id for e in executions])
    for execution in Execution.objects.filter(pk__in=ids):
        assert (execution.status, execution.attempt, execution.resends) == ("succeeded", 2, 0)
    assert sorted(p.read_text() for p in marks.iterdir() if p.name.isdigit()) == ["xx"] * 5


def test_soft_shutdown_requeues_a_running_execution_for_the_next_worker(user, workers,
                                                                        marks):
    """A cold shutdown (SIGQUIT; SIGTERM too with REMAP_SIGTERM=SIGQUIT) gives running tasks
    the soft shutdown timeout, then cancels them and requeues their messages: the next worker
    finds the claimer gone, records the lost attempt and runs it again, once."""
    first = workers(KUBEFUNCTION_SOFT_SHUTDOWN_TIMEOUT="1")
    trigger = register(user, "cut-short", SLOW, timeout=30)
    execution = execution_dispatch_many(trigger=trigger, payloads=[
        {"dir": str(marks), "n": 1, "sleep": 6}])[0]
    mark = marks / "1"
    wait_until(lambda: mark.exists() and mark.read_text() == "start\n", 30, "the first start")
    os.kill(first.pid, signal.SIGQUIT)
    first.wait(timeout=30)
    execution.refresh_from_db()
    assert execution.status == "running"

    workers()
    wait_until(lambda: Execution.objects.get(pk=execution.pk).status in FINISHED, 45,
               "the execution to finish")
    execution.refresh_from_db()
    assert (execution.status, execution.attempt) == ("succeeded", 2), execution.error
    assert [a["error_type"] for a in execution.attempts] == ["WorkerLost"]
    assert mark.read_text() == "start\nstart\ndone\n"
    assert_one_terminal_record_each([execution.task_id])
