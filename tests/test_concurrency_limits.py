"""Per-function concurrency limits: the claim never exceeds the limit (both claim paths), the
admin and the API show how many wait, and a burst through real workers never overlaps more
than the limit while every execution still runs."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from django.contrib.admin import site
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from executions import transitions
from executions.models import Execution
from executions.services import execution_dispatch_many
from functions.models import Function
from functions.services import function_register
from tests.processes import celery_env, start_worker, stop
from triggers.services import trigger_create


@pytest.fixture(params=["one statement", "orm"])
def path(request, monkeypatch):
    if request.param == "orm":
        monkeypatch.setattr(transitions, "_fast", lambda: False)
    return request.param


def make_function(owner, name="limited", limit=None, source=b"def handle(e):\n    return e\n"):
    version = function_register(name=name, owner=owner, filename="f.py", data=source)
    Function.objects.filter(pk=version.function_id).update(max_concurrency=limit)
    return Function.objects.get(pk=version.function_id)


def queued(function, n):
    return Execution.objects.bulk_create(
        Execution(task_id=f"{function.name}-{i}", function=function,
                  version=function.active_version, input={"i": i},
                  dispatched_at=timezone.now()) for i in range(n))


@pytest.mark.django_db
def test_claim_respects_the_limit(path, user):
    function = make_function(user, limit=2)
    a, b, c = queued(function, 3)
    assert transitions.claim(str(a.pk), "w").task_id == a.task_id
    assert transitions.claim(str(b.pk), "w").task_id == b.task_id
    with pytest.raises(transitions.AtConcurrencyLimit) as full:
        transitions.claim(str(c.pk), "w")
    assert (full.value.task_id, full.value.limit) == (c.task_id, 2)
    c.refresh_from_db()
    assert (c.status, c.attempt, c.started_at) == ("queued", 1, None), "waiting is no attempt"
    assert transitions.finish(str(a.pk), a.task_id, {"status": "succeeded"}, worker="w")
    assert transitions.claim(str(c.pk), "w").task_id == c.task_id
    assert transitions.claim(str(c.pk), "w") is None, "a claimed execution is not claimed again"


@pytest.mark.django_db
def test_a_stale_running_execution_frees_its_slot(path, user):
    """A run its dead worker left `running` long past its timeout must not block the function
    for ever."""
    function = make_function(user, limit=1)
    lost, waiting = queued(function, 2)
    transitions.claim(str(lost.pk), "dead-worker")
    with pytest.raises(transitions.AtConcurrencyLimit):
        transitions.claim(str(waiting.pk), "w")
    long_ago = timezone.now() - timedelta(seconds=function.timeout_seconds) \
        - transitions.STALE_RUN_GRACE - timedelta(seconds=5)
    Execution.objects.filter(pk=lost.pk).update(started_at=long_ago)
    assert transitions.claim(str(waiting.pk), "w") is not None


@pytest.mark.django_db
def test_unlimited_functions_keep_one_statement(user):
    function = make_function(user, name="free")
    executions = queued(function, 3)
    for execution in executions:
        with CaptureQueriesContext(connection) as queries:
            assert transitions.claim(str(execution.pk), "w") is not None
        assert len(queries) == 1, [q["sql"] for q in queries.captured_queries]


@pytest.mark.django_db
def test_admin_and_api_show_how_many_wait(admin_client, admin_user, api, user):
    mine = make_function(user, name="mine", limit=1)
    queued(mine, 3)
    other = make_function(admin_user, name="other")
    running = queued(other, 1)[0]
    transitions.claim(str(running.pk), "w")
    changelist = reverse("admin:functions_function_changelist")
    page = admin_client.get(changelist)
    rows = {f.name: f.waiting_total for f in page.context["cl"].result_list}
    assert rows == {"mine": 3, "other": 0}
    with CaptureQueriesContext(connection) as few:
        admin_client.get(changelist)
    for i in range(5):
        queued(make_function(user, name=f"more-{i}", limit=2), 2)
    with CaptureQueriesContext(connection) as many:
        admin_client.get(changelist)
    assert len(many) == len(few), "the waiting column costs one query per page, not per row"
    # The change page's read-only "executions now" field (called directly: the page also
    # renders the metrics dashboard, which is not what this test is about).
    assert site._registry[Function].load(mine) == "0 running (limit 1), 3 waiting in the queue"
    detail = api.get("/api/functions/mine/").json()
    assert (detail["waiting"], detail["max_concurrency"]) == (3, 1)
    listed = {f["name"]: f["waiting"] for f in api.get("/api/functions/").json()["results"]}
    assert listed["mine"] == 3 and listed["more-0"] == 2


# --- through real workers ------------------------------------------------------------------

@pytest.fixture
def second_worker(celery_worker_process):
    """Another worker process with four more slots on the same queue: with the session's
    worker, six executions could run at once, so only the limit holds them to two."""
    process = start_worker(f"pytest-extra-{os.getpid()}@localhost",
                           celery_worker_process.log_path.with_name("extra-worker.log"),
                           celery_env(KUBEFUNCTION_CONCURRENCY_RECHECK_SECONDS="0.3"),
                           concurrency=4)
    yield process
    stop(process)


def max_overlap(intervals) -> int:
    """The most intervals (start, end) open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))  # an end sorts before a start at the same time
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_burst_of_twenty_never_runs_more_than_two(user, second_worker):
    function = make_function(user, name="two-at-a-time", limit=2, source=(
        b"import time\ndef handle(event):\n    time.sleep(0.4)\n    return event['i']\n"))
    trigger = trigger_create(name="two-at-a-time", function=function)
    executions = execution_dispatch_many(trigger=trigger, payloads=[{"i": i} for i in range(20)])
    ids = [e.pk for e in executions]
    deadline = time.monotonic() + 120
    overlap_seen = 0
    while time.monotonic() < deadline:
        running = Execution.objects.filter(pk__in=ids, status="running").count()
        overlap_seen = max(overlap_seen, running)
        if Execution.objects.filter(pk__in=ids, status__in=["succeeded", "failed",
                                                             "timed_out"]).count() == 20:
            break
        time.sleep(0.05)
    rows = list(Execution.objects.filter(pk__in=ids).values(
        "status", "output", "attempt", "attempts", "started_at", "finished_at"))
    assert [r["status"] for r in rows] == ["succeeded"] * 20, rows
    assert sorted(r["output"] for r in rows) == list(range(20)), "none lost, none duplicated"
    assert all(r["attempt"] == 1 and r["attempts"] == [] for r in rows), \
        "waiting for a slot is not an attempt"
    peak = max_overlap([(r["started_at"], r["finished_at"]) for r in rows])
    assert overlap_seen <= 2 and peak == 2, (overlap_seen, peak)
