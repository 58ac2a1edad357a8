"""Waiters wake on the finish's notification, not by polling (executions/waiters.py,
executions/notifications.py): on the real Postgres, through a real worker where a run is needed.

The fallback is set to 30 s where a test shows a waiter woken by the notification, so only the
notification can wake it within the second the test allows; the reads a waiter makes are
counted, so a poll would show.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psutil
import psycopg2
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from executions import notifications, transitions, waiters
from executions.models import Execution
from executions.notifications import ListeningNotifier, Subscription, notifier
from executions.services import execution_dispatch
from executions.waiters import execution_wait, execution_wait_async, wait_many
from functions.services import function_register
from triggers.services import trigger_create

pytestmark = pytest.mark.django_db(transaction=True)

NOTIFIED = 30.0  # the fallback while a notification must do the waking
SLEEPS = b"import time\ndef handle(event):\n    time.sleep(event['sleep'])\n    return event\n"


@pytest.fixture
def listening() -> ListeningNotifier:
    """This process's notifier, its LISTEN in effect."""
    source = notifier()
    assert isinstance(source, ListeningNotifier)
    subscription = Subscription(["warm-up"])
    source.subscribe(subscription)
    source.unsubscribe(subscription)
    assert source.connected.wait(10), "the listener did not connect"
    return source


@pytest.fixture
def running(user):
    """Make running executions (no worker: the test finishes them itself)."""
    version = function_register(name="held", owner=user, filename="held.py",
                                data=b"def handle(e):\n    return e\n")
    made = []

    def make() -> Execution:
        now = timezone.now()
        execution = Execution.objects.create(
            task_id=f"held-{len(made)}-{time.monotonic_ns()}", function=version.function,
            version=version, input={}, dispatched_at=now, status="running", started_at=now,
            worker="test")
        made.append(execution)
        return execution

    return make


def finish(execution: Execution) -> None:
    assert transitions.finish(str(execution.pk), execution.task_id, {
        "status": "succeeded", "output": {"ok": True}, "finished_at": timezone.now()},
        worker="test")


def finish_later(execution: Execution, seconds: float) -> threading.Thread:
    """Finish `execution` from another thread (its own connection) in `seconds`."""
    def run() -> None:
        time.sleep(seconds)
        try:
            finish(execution)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def run_coroutine(coroutine):
    """Run `coroutine` on an event loop in a thread of its own, as an ASGI server would (no
    database connection of its loop's thread), then close the connection its reads used."""
    async def main():
        try:
            return await coroutine
        finally:
            await sync_to_async(lambda: connection.close())()

    result = []
    loop_thread = threading.Thread(target=lambda: result.append(asyncio.run(main())))
    loop_thread.start()
    loop_thread.join(timeout=60)
    assert result, "the coroutine failed (see the thread's exception above)"
    return result[0]


def reads(queries: CaptureQueriesContext) -> int:
    """SELECTs of the executions table among the captured queries."""
    table = Execution._meta.db_table
    return sum(1 for q in queries.captured_queries
               if q["sql"].lstrip().upper().startswith("SELECT") and table in q["sql"])


def listener_backends() -> list[int]:
    """Backend pids of this process's listener."""
    return _pg_rows("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                    [f"kubefunction-listener:{os.getpid()}"])


def _pg_rows(sql: str, params: list) -> list:
    """Rows of one query on a connection of its own."""
    params_db = connection.get_connection_params()
    params_db.pop("cursor_factory", None)
    with psycopg2.connect(**params_db) as checker, checker.cursor() as cursor:
        cursor.execute(sql, params)
        rows = [row[0] for row in cursor.fetchall()]
    checker.close()
    return rows


@pytest.fixture
def sleeper(user):
    version = function_register(name="sleeper", owner=user, filename="sleeper.py", data=SLEEPS)
    return trigger_create(name="sleeper", function=version.function, user=user)


@pytest.mark.worker
def test_a_waiter_wakes_on_the_notification(celery_worker_process, sleeper, settings,
                                            listening):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    execution = execution_dispatch(trigger=sleeper, payload={"sleep": 1.0})
    with CaptureQueriesContext(connection) as queries:
        execution = execution_wait(execution=execution, timeout=20)
    returned = timezone.now()
    assert execution.status == "succeeded" and execution.output == {"sleep": 1.0}
    assert (returned - execution.finished_at).total_seconds() < 1.0
    # One read after subscribing, one after the notification: a poll would have read ~15 times.
    assert reads(queries) == 2


@pytest.mark.worker
def test_an_async_waiter_wakes_on_the_notification_without_blocking_its_loop(
        celery_worker_process, sleeper, settings, listening, monkeypatch):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    execution = execution_dispatch(trigger=sleeper, payload={"sleep": 1.0})
    ticks, real_reread, rereads = 0, waiters._reread, []
    monkeypatch.setattr(waiters, "_reread", lambda e: rereads.append(1) or real_reread(e))

    async def main() -> Execution:
        nonlocal ticks
        waiting = asyncio.create_task(execution_wait_async(execution=execution, timeout=20))
        while not waiting.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return waiting.result()

    started = time.monotonic()
    execution = run_coroutine(main())
    returned, elapsed = timezone.now(), time.monotonic() - started
    assert execution.status == "succeeded"
    assert (returned - execution.finished_at).total_seconds() < 1.0
    assert ticks > elapsed / 0.01 / 3, "the loop kept running while the coroutine waited"
    assert len(rereads) == 2  # after subscribing, after the notification


@pytest.mark.worker
def test_wait_many_wakes_per_notification(celery_worker_process, sleeper, settings, listening):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    executions = [execution_dispatch(trigger=sleeper, payload={"sleep": s})
                  for s in (0.3, 0.6, 0.9, 1.2)]
    progress: list[tuple[int, float]] = []
    with CaptureQueriesContext(connection) as queries:
        done = wait_many(ids=[e.pk for e in executions], timeout=30,
                         on_progress=lambda n: progress.append((n, time.time())))
    assert {row[1] for row in done.values()} == {"succeeded"} and len(done) == 4
    assert sum(n for n, _ in progress) == 4
    last_finish = max(row[3] for row in done.values()).timestamp()
    assert progress[-1][1] - last_finish < 1.0
    # The ids' task ids, the first read, then one read per wake (at most one per execution).
    assert reads(queries) <= 2 + 4


@pytest.mark.parametrize("flavour", ["thread", "coroutine"])
def test_a_lost_notification_still_finishes_by_the_fallback(flavour, running, settings,
                                                             listening, monkeypatch):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = 1.5
    monkeypatch.setattr(ListeningNotifier, "_deliver", lambda self, key: None)  # all lost
    execution = running()
    finisher = finish_later(execution, 0.2)
    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries:
        if flavour == "thread":
            execution = execution_wait(execution=execution, timeout=20)
        else:
            execution = run_coroutine(execution_wait_async(execution=execution, timeout=20))
    elapsed = time.monotonic() - started
    finisher.join()
    assert execution.status == "succeeded"
    assert 1.4 < elapsed < 2.5, "found by the fallback re-read, not before, not much later"
    if flavour == "thread":
        assert reads(queries) == 2  # the first read, the fallback's


def test_the_last_read_comes_when_the_time_is_up(running, settings, listening, monkeypatch):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    monkeypatch.setattr(ListeningNotifier, "_deliver", lambda self, key: None)
    execution = running()
    finisher = finish_later(execution, 0.2)  # finished, never heard
    started = time.monotonic()
    execution = execution_wait(execution=execution, timeout=1.0)
    finisher.join()
    assert execution.status == "succeeded" and 0.9 < time.monotonic() - started < 1.5


@pytest.mark.parametrize("when", ["before the first read", "between the read and the wait"])
def test_no_wakeup_is_lost_around_the_first_read(when, running, settings, listening,
                                                   monkeypatch):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    execution = running()
    real_reread, calls = waiters._reread, []

    def reread(target: Execution) -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1 and when == "before the first read":
            finish(target)
        finished = real_reread(target)
        if len(calls) == 1 and when == "between the read and the wait":
            assert not finished
            probe = Subscription([target.task_id])
            listening.subscribe(probe)
            finish(target)  # committed, announced and heard before the waiter waits
            assert probe.wait(5), "the listener did not hear the finish"
            listening.unsubscribe(probe)
        return finished

    monkeypatch.setattr(waiters, "_reread", reread)
    started = time.monotonic()
    execution = execution_wait(execution=execution, timeout=10)
    assert execution.status == "succeeded" and time.monotonic() - started < 1.0
    assert len(calls) == (1 if when == "before the first read" else 2)


def test_the_listener_recovers_after_its_connection_is_killed(running, settings, listening):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    [backend] = listener_backends()
    connects = listening.connections
    # A waiter already waiting when the connection dies: what finishes meanwhile is unheard,
    # and the reconnection wakes it to re-read.
    waiting = running()
    result: list[Execution] = []
    waiter = threading.Thread(target=lambda: (
        result.append(execution_wait(execution=waiting, timeout=20)), connection.close()))
    waiter.start()
    time.sleep(0.3)
    assert _pg_rows("SELECT pg_terminate_backend(%s)", [backend]) == [True]
    finish(waiting)
    finished_at = time.monotonic()
    waiter.join(timeout=20)
    assert result and result[0].status == "succeeded"
    assert time.monotonic() - finished_at < 2.0
    deadline = time.monotonic() + 10
    while listening.connections == connects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listening.connections == connects + 1 and listening.connected.wait(5)
    [again] = listener_backends()
    assert again != backend
    # And it hears again.
    execution = running()
    finish_later(execution, 0.3)
    started = time.monotonic()
    assert execution_wait(execution=execution, timeout=20).status == "succeeded"
    assert time.monotonic() - started < 1.3


def _backends_of_this_process() -> list[int]:
    """Backend pids of this process's connections to Postgres (the listener's apart)."""
    ports = [c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
             if c.raddr and c.raddr.port == int(connection.settings_dict["PORT"] or 5432)]
    return _pg_rows(
        "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s) AND pid <> "
        "pg_backend_pid() AND application_name NOT LIKE 'kubefunction-listener:%%'", [ports])


@pytest.mark.parametrize("flavour", ["thread", "coroutine"])
def test_a_wait_holds_no_database_connection(flavour, running, settings, listening):
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = NOTIFIED
    execution = running()
    result: list[Execution] = []

    def wait() -> None:
        try:
            if flavour == "thread":
                result.append(execution_wait(execution=execution, timeout=20))
            else:
                result.append(run_coroutine(execution_wait_async(execution=execution,
                                                               timeout=20)))
        finally:
            connection.close()

    waiter = threading.Thread(target=wait)
    waiter.start()
    connection.close()  # this thread's own
    time.sleep(0.5)
    held = _backends_of_this_process()
    listeners = listener_backends()
    finish(execution)
    waiter.join(timeout=20)
    assert result and result[0].status == "succeeded"
    assert held == [], "a waiter holds a database connection"
    assert len(listeners) == 1, "one listening connection for the process"


def test_a_forked_child_listens_on_its_own(listening):
    [backend] = listener_backends()
    connects = listening.connections
    child = os.fork()
    if child == 0:  # the child: its own listener; the inherited connection closed harmlessly
        code = 1
        try:
            inherited = listening
            fresh = notifier()
            subscription = Subscription(["child"])
            fresh.subscribe(subscription)
            if fresh is not inherited and fresh.connected.wait(10):
                inherited._connection.close()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    time.sleep(0.3)
    assert listener_backends() == [backend], "the parent's listener is untouched"
    assert listening.connections == connects and listening.connected.is_set()


def test_without_notifications_waiters_poll_on_a_short_backoff():
    delays = notifications.PollingNotifier().fallback_delays()
    first = [next(delays) for _ in range(12)]
    assert first[0] == 0.005 and first[1] == pytest.approx(0.0075) and first[-1] == 0.2
