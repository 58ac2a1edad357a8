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
from django_celery_results.models import TaskResult

from executions import run_store
from executions.models import Execution

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
    fields = run_store.bounded_figures({
        "exit_code": 2**70, "peak_memory_bytes": -5, "cpu_seconds": float("inf"),
        "init_seconds": float("nan"), "error_type": "E" * 500, "error": "x\x00\ud800",
        "logs": "a\ud800b"})
    assert fields["exit_code"] == 2**31 - 1
    assert fields["peak_memory_bytes"] == 0
    assert fields["cpu_seconds"] is None and fields["init_seconds"] is None
    assert len(fields["error_type"]) == 200
    assert "\x00" not in fields["error"] and "\ud800" not in fields["error"]
    assert fields["logs"] == "a?b"
    assert run_store.bounded_figures({"exit_code": -(2**40)})["exit_code"] == -(2**31)
    assert run_store.bounded_figures({"exit_code": "3"})["exit_code"] is None
    assert run_store.bounded_figures({"cpu_seconds": 1e300})["cpu_seconds"] == \
        run_store.MAX_SECONDS
