"""Bounded everything a user controls (issue 11): the figures a run reports are clamped before
they are stored, and an outcome the database refuses still ends in one failed record; retries,
backoff and schedules have bounds; retries and schedule fires are charged to the dispatch rate.

Attacks go through the public API as a non-staff user against the real worker.
"""

from __future__ import annotations

import time

import pytest
from celery.result import AsyncResult
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult
from rest_framework.test import APIClient

from executions import transitions
from executions.models import Execution
from executions.runtimes.base import Outcome
from triggers.models import Trigger

FINISHED = ("succeeded", "failed", "timed_out", "cancelled")

EXIT_OVERFLOW = b"""import sys

def handle(event, context):
    print("about to exit")
    sys.exit(2**31)
"""

# The database refuses this outcome: a trigger the test installs raises "integer out of range"
# (SQLSTATE 22003, what an unclamped figure used to cause) for an outcome whose logs say so.
UNSTORABLE = b"""def handle(event, context):
    print("refuse-this-outcome")
    return {"ok": True}
"""
REFUSING_TRIGGER = """
CREATE OR REPLACE FUNCTION kf_test_refuse() RETURNS trigger AS $$
BEGIN
  IF NEW.status <> 'running' AND NEW.logs LIKE '%refuse-this-outcome%' THEN
    RAISE EXCEPTION 'integer out of range' USING ERRCODE = '22003';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER kf_test_refuse BEFORE UPDATE ON executions_execution
  FOR EACH ROW EXECUTE FUNCTION kf_test_refuse();
"""


@pytest.fixture
def refusing_database(db):
    with connection.cursor() as cursor:
        cursor.execute(REFUSING_TRIGGER)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS kf_test_refuse ON executions_execution;"
                       "DROP FUNCTION IF EXISTS kf_test_refuse();")


def create(api, name: str, source: bytes, **fields):
    upload = SimpleUploadedFile("fn.py", source, content_type="application/octet-stream")
    response = api.post("/api/functions/", {"name": name, "source": upload, "runtime": "local",
                                            "timeout_seconds": 10, **fields}, format="multipart")
    assert response.status_code == 201, response.content
    trigger = api.post("/api/triggers/", {"name": name, "function": name}, format="json")
    assert trigger.status_code == 201, trigger.content
    return trigger.json()


def dispatch(api, name: str, payload=None) -> str:
    response = api.post(f"/api/triggers/{name}/dispatch/", {"payload": payload or {}},
                        format="json")
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def finished(api, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/api/executions/{task_id}/?wait=5").json()
        if body["status"] in FINISHED:
            return body
    pytest.fail(f"execution {task_id} did not finish: {body['status']}")


def settle(task_id: str, seconds: float = 3.0) -> Execution:
    """The execution after `seconds` more: a reaper or redelivery would have run it again."""
    time.sleep(seconds)
    return Execution.objects.get(task_id=task_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_exit_code_overflow_ends_in_one_failed_record(api, celery_worker_process):
    create(api, "exit-overflow", EXIT_OVERFLOW)
    task_id = dispatch(api, "exit-overflow")
    body = finished(api, task_id)
    assert body["status"] == "failed"
    assert body["error_type"] == "SystemExit"
    assert body["exit_code"] == 2**31 - 1  # clamped to the integer column
    assert "about to exit" in body["logs"]
    execution = settle(task_id)
    assert execution.status == "failed" and execution.attempt == 1 and execution.attempts == []
    assert Execution.objects.filter(function__name="exit-overflow").count() == 1
    result = AsyncResult(task_id)
    assert result.state == "FAILURE"


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_outcome_the_database_refuses_is_stored_as_one_failure(api, celery_worker_process,
                                                                refusing_database):
    create(api, "unstorable", UNSTORABLE)
    task_id = dispatch(api, "unstorable")
    body = finished(api, task_id)
    assert body["status"] == "failed", body
    assert body["error_type"] == "OutcomeNotStored"
    assert "could not be stored" in body["error"] and "not run again" in body["error"]
    assert "DataError" in body["error"] and "integer out of range" in body["error"]
    assert body["output"] is None
    execution = settle(task_id)
    assert execution.status == "failed" and execution.attempt == 1 and execution.attempts == []
    assert execution.dead_letter
    row = TaskResult.objects.get(task_id=task_id)
    assert row.status == "FAILURE" and "OutcomeNotStored" in row.result


def test_bounded_figures_clamp_to_the_columns():
    fields = transitions.bounded_figures({
        "exit_code": 2**70, "peak_memory_bytes": -5, "cpu_seconds": float("inf"),
        "init_seconds": float("nan"), "error_type": "E" * 500, "error": "x\x00\ud800",
        "logs": "a\ud800b"})
    assert fields["exit_code"] == 2**31 - 1
    assert fields["peak_memory_bytes"] == 0
    assert fields["cpu_seconds"] is None and fields["init_seconds"] is None
    assert len(fields["error_type"]) == 200
    assert "\x00" not in fields["error"] and "\ud800" not in fields["error"]
    assert fields["logs"] == "a?b"
    assert transitions.bounded_figures({"exit_code": -(2**40)})["exit_code"] == -(2**31)
    assert transitions.bounded_figures({"exit_code": "3"})["exit_code"] is None
    assert transitions.bounded_figures({"cpu_seconds": 1e300})["cpu_seconds"] == \
        transitions.MAX_SECONDS


# --- Retry and schedule bounds (no worker: refused before anything is stored) --------------

HELLO = b"def handle(event, context):\n    return event\n"


def create_function(api, name: str = "bounded") -> None:
    upload = SimpleUploadedFile("fn.py", HELLO, content_type="application/octet-stream")
    response = api.post("/api/functions/", {"name": name, "source": upload, "runtime": "local"},
                        format="multipart")
    assert response.status_code == 201, response.content


def new_trigger(api, name: str, **fields):
    return api.post("/api/triggers/", {"name": name, "function": "bounded", **fields},
                    format="json")


@pytest.mark.django_db
@pytest.mark.parametrize(("fields", "field"), [
    ({"max_retries": 32767}, "max_retries"),
    ({"max_retries": 11}, "max_retries"),
    ({"retry_backoff_seconds": 0}, "retry_backoff_seconds"),
    ({"retry_backoff_seconds": 10**9}, "retry_backoff_seconds"),
])
def test_retry_settings_out_of_bounds_are_400_naming_the_field(api, fields, field):
    create_function(api)
    response = new_trigger(api, "retrying", **fields)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not Trigger.objects.filter(name="retrying").exists()


@pytest.mark.django_db
def test_retry_bounds_hold_on_update_and_at_the_limit(api):
    create_function(api)
    assert new_trigger(api, "retrying", max_retries=10, retry_backoff_seconds=0.1)\
        .status_code == 201
    response = api.patch("/api/triggers/retrying/", {"max_retries": 32767}, format="json")
    assert response.status_code == 400 and "max_retries" in response.json()
    assert Trigger.objects.get(name="retrying").max_retries == 10


def test_retries_of_a_stored_execution_stay_within_the_limit(settings):
    """An execution stored with more retries than allowed (before the bound, or a re-run of
    one) is retried at most KUBEFUNCTION_MAX_RETRIES_LIMIT times, with at least the minimum
    backoff."""
    from executions import retries

    assert retries.backoff(0.0, 1) == settings.KUBEFUNCTION_RETRY_MIN_BACKOFF
    settings.KUBEFUNCTION_MAX_RETRIES_LIMIT = 2
    claimed = transitions.Claimed("t", {}, "local", 1, None, 3, 32767, 0.0, False, "", None,
                                  None)
    failed = Outcome(status="failed", error_type="RuntimeError")
    function_retry = {"platform": False}
    assert retries.retry_delay_after(claimed, failed, earlier=[function_retry],
                                     cause=retries.Cause.FUNCTION) is not None
    assert retries.retry_delay_after(claimed, failed, earlier=[function_retry] * 2,
                                     cause=retries.Cause.FUNCTION) is None


@pytest.mark.django_db
@pytest.mark.parametrize("schedule", ["* * * * * *", "*/1 * * * * *", "@every 1s"])
def test_a_schedule_every_second_is_400(api, schedule):
    create_function(api)
    response = new_trigger(api, "often", kind="schedule", schedule=schedule)
    assert response.status_code == 400 and list(response.json()) == ["schedule"]
    assert not PeriodicTask.objects.filter(task="triggers.fire").exists()


@pytest.mark.django_db
def test_schedules_more_often_than_the_minimum_interval_are_400(api, settings):
    settings.KUBEFUNCTION_SCHEDULE_MIN_INTERVAL = 300
    create_function(api)
    for schedule in ("*/2 * * * *", "0-3 * * * *", "0,4 9 * * *", "* * * * *"):
        response = new_trigger(api, "often", kind="schedule", schedule=schedule)
        assert response.status_code == 400, schedule
        assert "at most once every 300 s" in response.json()["schedule"][0]
    # The wrap-around counts: 23:58 and then 00:01 are 3 minutes apart.
    response = new_trigger(api, "often", kind="schedule", schedule="58 23 * * *")
    assert response.status_code == 201
    assert new_trigger(api, "often2", kind="schedule", schedule="*/5 * * * *").status_code == 201
    response = api.patch("/api/triggers/often2/", {"schedule": "*/4 * * * *"}, format="json")
    assert response.status_code == 400 and "schedule" in response.json()


@pytest.mark.django_db
def test_the_21st_schedule_of_a_user_is_400(api, other_user, settings):
    create_function(api)
    for n in range(settings.KUBEFUNCTION_MAX_SCHEDULES_PER_USER):
        response = new_trigger(api, f"every-{n}", kind="schedule", schedule=f"{n} * * * *")
        assert response.status_code == 201, response.content
    response = new_trigger(api, "one-more", kind="schedule", schedule="30 * * * *")
    assert response.status_code == 400, response.content
    assert "20 schedule triggers" in response.json()["schedule"][0]
    # Turning a manual trigger into a schedule counts too; editing an existing one does not.
    assert new_trigger(api, "manual").status_code == 201
    response = api.patch("/api/triggers/manual/", {"kind": "schedule", "schedule": "@hourly"},
                         format="json")
    assert response.status_code == 400 and "schedule" in response.json()
    assert api.patch("/api/triggers/every-0/", {"schedule": "0 9 * * *"},
                     format="json").status_code == 200
    assert Trigger.objects.filter(kind="schedule").count() == 20
    # Another user has a count of their own.
    bob = APIClient()
    bob.force_authenticate(other_user)
    upload = SimpleUploadedFile("fn.py", HELLO, content_type="application/octet-stream")
    assert bob.post("/api/functions/", {"name": "bobs", "source": upload, "runtime": "local"},
                    format="multipart").status_code == 201
    assert bob.post("/api/triggers/", {"name": "bobs-hourly", "function": "bobs",
                                       "kind": "schedule", "schedule": "@hourly"},
                    format="json").status_code == 201


# --- Retries and schedule fires are charged to the owner's dispatch rate ------------------

FAILING = b"def handle(event, context):\n    raise RuntimeError('always')\n"


@pytest.mark.django_db
def test_retries_are_charged_to_the_owners_dispatch_rate(api, settings):
    """Rate 3/min: the dispatch and two retries fit; the third retry is delayed until the rate
    has room (queued, not lost), and the owner's next dispatch is refused (429)."""
    from executions.services import execution_run

    settings.KUBEFUNCTION_DISPATCH_RATE = "3/min"
    upload = SimpleUploadedFile("fn.py", FAILING, content_type="application/octet-stream")
    assert api.post("/api/functions/", {"name": "failing", "source": upload, "runtime": "local"},
                    format="multipart").status_code == 201
    assert api.post("/api/triggers/", {"name": "failing", "function": "failing",
                                       "max_retries": 5, "retry_backoff_seconds": 0.1},
                    format="json").status_code == 201
    task_id = dispatch(api, "failing")
    execution = Execution.objects.get(task_id=task_id)
    for attempt in (1, 2, 3):  # run each attempt here, as the worker would
        before = timezone.now()
        assert execution_run(execution_id=str(execution.pk), worker="test/1").status == "failed"
        execution.refresh_from_db()
        assert execution.status == "queued" and execution.attempt == attempt + 1
    delay = (execution.due_at - before).total_seconds()
    assert 10 < delay <= 25, delay  # the third retry waits for its slot (20 s at 3/min)
    assert len(execution.attempts) == 3
    refused = api.post("/api/triggers/failing/dispatch/", {"payload": {}}, format="json")
    assert refused.status_code == 429


@pytest.mark.django_db
def test_a_schedule_fire_over_the_rate_is_skipped_with_its_reason(api, settings):
    from triggers.services import trigger_fire

    settings.KUBEFUNCTION_DISPATCH_RATE = "2/min"
    create_function(api)
    assert new_trigger(api, "hourly", kind="schedule", schedule="@hourly").status_code == 201
    trigger = Trigger.objects.get(name="hourly")
    fired = [trigger_fire(trigger_id=trigger.pk) for _ in range(3)]
    assert [e.status for e in fired] == ["queued", "queued", "failed"]
    skipped = fired[2]
    assert skipped.error_type == "RateLimited" and "over the dispatch rate" in skipped.error
    assert skipped.started_at is None and skipped.trigger_id == trigger.pk
    assert TaskResult.objects.get(task_id=skipped.task_id).status == "FAILURE"
    body = api.get(f"/api/executions/{skipped.task_id}/").json()
    assert body["status"] == "failed" and body["error_type"] == "RateLimited"
    # The fires used the owner's rate: their own dispatch is refused too.
    assert api.post("/api/triggers/hourly/dispatch/", {"payload": {}},
                    format="json").status_code == 429


def test_lying_figures_in_a_result_frame_are_dropped_not_fatal():
    """The function runs in the runner's process and can write a frame of its own: figures of
    the wrong type, not finite or negative are dropped where the frame is read, and the
    outcome is built from what is left."""
    import json

    from executions.runtimes.wire import FrameReader, frame_outcome
    from functions.runner import FRAME_MARKER

    answer = {"ok": False, "error_type": "SystemExit", "error": "", "exit_code": "2**31",
              "cpu_seconds": -1e308, "max_rss_bytes": [1], "init_seconds": float("inf")}
    payload = json.dumps(answer).encode()  # json writes inf as Infinity, which loads back
    reader = FrameReader("n0nce", 1024)
    reader.feed(b"\n" + FRAME_MARKER + b"n0nce " + str(len(payload)).encode() + b"\n"
                + payload + b"\n")
    frame = reader.result()
    assert not {"exit_code", "cpu_seconds", "max_rss_bytes", "init_seconds"} & set(frame)
    outcome = frame_outcome(frame, "", False, cold=True)
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert outcome.cpu_seconds == 0.0 and outcome.peak_memory_bytes is None


@pytest.mark.django_db
def test_create_trigger_command_refuses_unbounded_retries(api):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    create_function(api)
    with pytest.raises(CommandError, match="0 to 10 retries"):
        call_command("create_trigger", "cmd-retrying", "bounded", "--max-retries", "32767",
                     "--owner", "alice")
    with pytest.raises(CommandError, match="seconds"):
        call_command("create_trigger", "cmd-retrying", "bounded", "--retry-backoff", "0",
                     "--owner", "alice")
    assert not Trigger.objects.filter(name="cmd-retrying").exists()
