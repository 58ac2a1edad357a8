"""Cancel (issue 11): a queued or retrying execution is cancelled and never runs; a running one
is killed (local and docker runtimes) within 2 s and recorded once as `cancelled`, in the
execution and in its django-celery-results row; a finished one answers 409 naming its status.

As a non-staff user through the API, against the real worker (prefork pool), Postgres, Redis
and Docker engine.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import psutil
import pytest
from celery.result import AsyncResult
from django.core.files.uploadedfile import SimpleUploadedFile
from django_celery_results.models import TaskResult

from executions.models import Execution
from executions.workers import parse_worker
from functions.models import FunctionVersion
from functions.selectors import version_wait
from kubefunction.docker_client import build_client
from tests.docker_engine import needs_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

BUSY = b"def handle(event, context):\n    while True:\n        pass\n"
QUICK = b"def handle(event, context):\n    return {'ok': True}\n"


def create(api, name: str, source: bytes, **fields) -> None:
    upload = SimpleUploadedFile("fn.py", source, content_type="application/octet-stream")
    response = api.post("/api/functions/", {"name": name, "source": upload,
                                            "timeout_seconds": 60, **fields}, format="multipart")
    assert response.status_code == 201, response.content
    response = api.post("/api/triggers/", {"name": name, "function": name}, format="json")
    assert response.status_code == 201, response.content


def dispatch(api, name: str) -> str:
    response = api.post(f"/api/triggers/{name}/dispatch/", {"payload": {}}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def wait_status(task_id: str, status: str, timeout: float = 60) -> Execution:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = Execution.objects.get(task_id=task_id)
        if execution.status == status:
            return execution
        time.sleep(0.05)
    pytest.fail(f"execution {task_id} never became {status}: {execution.status}")


def descendants(process: psutil.Process) -> set[int]:
    return {child.pid for child in process.children(recursive=True)}


def assert_cancelled_once(task_id: str, *, was: str) -> None:
    time.sleep(2)  # a redelivery or the reaper would have run it again by now
    execution = Execution.objects.get(task_id=task_id)
    assert execution.status == "cancelled", (execution.status, execution.error)
    assert execution.error_type == "Cancelled" and f"while {was}" in execution.error
    assert execution.attempt == 1 and execution.attempts == []
    assert Execution.objects.filter(task_id=task_id).count() == 1
    assert TaskResult.objects.get(task_id=task_id).status == "REVOKED"
    assert AsyncResult(task_id).state == "REVOKED"


def cancel_running_and_time_it(api, worker, task_id: str, before: set[int],
                               still_running) -> float:
    """Cancel a running execution; seconds until `still_running()` is False."""
    wait_status(task_id, "running")
    time.sleep(1.0)  # the function is really in its loop
    assert still_running(), "the function is not running"
    started = time.monotonic()
    response = api.post(f"/api/executions/{task_id}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    while still_running() and time.monotonic() - started < 10:
        time.sleep(0.05)
    return time.monotonic() - started


def test_cancel_a_running_local_function_kills_it_within_2_s(api, celery_worker_process):
    create(api, "busy-local", BUSY, runtime="local")
    worker = psutil.Process(celery_worker_process.pid)
    before = descendants(worker)
    task_id = dispatch(api, "busy-local")

    def still_running() -> bool:
        new = [psutil.Process(pid) for pid in descendants(worker) - before
               if psutil.pid_exists(pid)]
        return any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in new)

    elapsed = cancel_running_and_time_it(api, worker, task_id, before, still_running)
    assert elapsed < 2, f"the runner process was still there {elapsed:.1f} s after the cancel"
    assert_cancelled_once(task_id, was="running")
    # The worker's pool process is free again and runs the next execution normally.
    create(api, "after-cancel", QUICK, runtime="local")
    response = api.post("/api/triggers/after-cancel/dispatch/?wait=30", {"payload": {}},
                        format="json")
    assert response.json()["status"] == "succeeded", response.content


SLEEPY = b"import time\ndef handle(event, context):\n    time.sleep(3)\n    return 'done'\n"


def test_a_pool_process_that_was_sent_a_cancel_still_hands_back_its_next_task_if_killed(
        api, celery_worker_process):
    """A cancel signals the pool process, which lives on and takes the next task. SIGKILLed in
    the middle of that task, its message is still redelivered and run again (WorkerLostError and
    requeue): the cancel must not have left the process marked as terminated under control
    (what `revoke(terminate=True)` does), or the task would be taken for a terminated one and
    the execution would stay `running` with nothing to run it."""
    create(api, "busy-cancelled", BUSY, runtime="local")
    create(api, "sleepy-killed", SLEEPY, runtime="local")
    task_id = dispatch(api, "busy-cancelled")
    cancelled_on = parse_worker(wait_status(task_id, "running").worker)[1]
    time.sleep(0.5)
    assert api.post(f"/api/executions/{task_id}/cancel/").status_code == 200
    assert_cancelled_once(task_id, was="running")
    # Both pool processes busy, so one of the two runs is on the process that got the cancel.
    sleepers = [dispatch(api, "sleepy-killed") for _ in range(2)]
    running = {parse_worker(wait_status(t, "running").worker)[1]: t for t in sleepers}
    assert cancelled_on in running, (cancelled_on, running)
    os.kill(cancelled_on, signal.SIGKILL)
    for sleeper in sleepers:
        execution = wait_status(sleeper, "succeeded", timeout=60)
        assert execution.output == "done"
    assert Execution.objects.get(task_id=running[cancelled_on]).attempt == 2


def test_a_kill_that_reaches_a_pool_process_once_its_run_has_ended_leaves_it_alive(
        api, celery_worker_process):
    """`kill_run` signals the pool process that held the task when the command arrived; a run
    that ended in that instant leaves the SIGUSR1 to the process idle, waiting for its next task.
    It must live on (billiard's handler would raise there and end it) and run the next task."""
    create(api, "quick-then-killed", QUICK, runtime="local")
    response = api.post("/api/triggers/quick-then-killed/dispatch/?wait=30", {"payload": {}},
                        format="json")
    assert response.json()["status"] == "succeeded", response.content
    pool_pid = parse_worker(Execution.objects.get(task_id=response.json()["task_id"]).worker)[1]
    assert pool_pid in descendants(psutil.Process(celery_worker_process.pid))
    time.sleep(0.5)  # idle: waiting for its next task
    os.kill(pool_pid, signal.SIGUSR1)
    time.sleep(2)
    process = psutil.Process(pool_pid) if psutil.pid_exists(pool_pid) else None
    assert process is not None and process.status() != psutil.STATUS_ZOMBIE, \
        "the idle pool process died of the signal"
    for _ in range(2):  # both pool processes, the signalled one among them, still run tasks
        response = api.post("/api/triggers/quick-then-killed/dispatch/?wait=30", {"payload": {}},
                            format="json")
        assert response.json()["status"] == "succeeded", response.content


@needs_docker
def test_cancel_a_running_docker_function_kills_its_container_within_2_s(
        api, celery_worker_process):
    name = f"busy-docker-{uuid.uuid4().hex[:6]}"
    create(api, name, BUSY, runtime="docker")
    version = FunctionVersion.objects.get(function__name=name)
    version = version_wait(version=version, timeout=300)
    assert version.status == "ready", version.build_log
    client = build_client()

    def still_running() -> bool:
        return bool(client.containers.list(
            filters={"label": f"io.kubefunction.function={name}", "status": "running"}))

    task_id = dispatch(api, name)
    elapsed = cancel_running_and_time_it(api, None, task_id, set(), still_running)
    assert elapsed < 2, f"the container still ran {elapsed:.1f} s after the cancel"
    assert_cancelled_once(task_id, was="running")


def test_cancel_a_queued_execution_it_never_runs(api, celery_worker_process):
    """A function limited to one concurrent run: the second execution waits queued while the
    first runs. Cancelled, it never runs, also once the first has ended."""
    create(api, "one-at-a-time", BUSY, runtime="local")
    limited = api.patch("/api/functions/one-at-a-time/", {"max_concurrency": 1}, format="json")
    assert limited.status_code == 200 and limited.json()["max_concurrency"] == 1
    first = dispatch(api, "one-at-a-time")
    wait_status(first, "running")
    second = dispatch(api, "one-at-a-time")
    time.sleep(1.5)  # it met the limit and waits for a slot
    assert Execution.objects.get(task_id=second).status == "queued"
    response = api.post(f"/api/executions/{second}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.post(f"/api/executions/{first}/cancel/").status_code == 200
    time.sleep(3)  # the slot is free: a recheck of the second would claim it now
    execution = Execution.objects.get(task_id=second)
    assert execution.status == "cancelled" and execution.started_at is None
    assert execution.worker == ""
    assert_cancelled_once(second, was="queued")


def test_cancel_a_finished_execution_is_409_naming_its_status(api, celery_worker_process):
    create(api, "quick", QUICK, runtime="local")
    response = api.post("/api/triggers/quick/dispatch/?wait=30", {"payload": {}}, format="json")
    task_id = response.json()["task_id"]
    assert response.json()["status"] == "succeeded"
    refused = api.post(f"/api/executions/{task_id}/cancel/")
    assert refused.status_code == 409
    assert "succeeded" in refused.json()["status"][0]
    assert Execution.objects.get(task_id=task_id).status == "succeeded"
    assert AsyncResult(task_id).state == "SUCCESS"


def test_another_users_execution_cannot_be_cancelled(api, other_user, celery_worker_process):
    from rest_framework.test import APIClient

    create(api, "mine", BUSY, runtime="local")
    task_id = dispatch(api, "mine")
    bob = APIClient()
    bob.force_authenticate(other_user)
    assert bob.post(f"/api/executions/{task_id}/cancel/").status_code == 404
    assert api.post(f"/api/executions/{task_id}/cancel/").status_code == 200


def test_admin_cancel_action_needs_the_change_permission(api, user, admin_client,
                                                         django_user_model,
                                                         celery_worker_process):
    from django.contrib.auth.models import Permission
    from django.test import Client

    create(api, "admin-busy", BUSY, runtime="local")
    task_id = dispatch(api, "admin-busy")
    execution = Execution.objects.get(task_id=task_id)
    viewer = django_user_model.objects.create_user("viewer", password="viewer-password-1",
                                                   is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_execution"))
    client = Client()
    client.force_login(viewer)
    page = client.get("/admin/executions/execution/")
    assert page.status_code == 200 and b'value="cancel"' not in page.content
    response = admin_client.post("/admin/executions/execution/", {
        "action": "cancel", "_selected_action": [str(execution.pk)]}, follow=True)
    assert response.status_code == 200
    assert b"Cancelled 1 execution(s)." in response.content
    execution.refresh_from_db()
    assert execution.status == "cancelled"
    again = admin_client.post("/admin/executions/execution/", {
        "action": "cancel", "_selected_action": [str(execution.pk)]}, follow=True)
    assert b"already ended" in again.content
