"""Through the API as a new user would, on the Kubernetes runtime pointed at the fake API server
(docker kubelet): register, build, dispatch 50, read 50 outputs — through the real worker."""

import time
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from executions.models import Execution
from functions.models import FunctionVersion
from functions.selectors import version_wait
from tests.docker_engine import needs_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, needs_docker]


def test_register_build_dispatch_fifty_read_fifty(api, celery_worker_process, worker_kube):
    name = f"kube-{uuid.uuid4().hex[:8]}"
    source = f"# {name}\ndef handle(event, context):\n    return {{'twice': event['n'] * 2}}\n"
    created = api.post("/api/functions/", {
        "name": name, "runtime": "kubernetes",
        "source": SimpleUploadedFile("fn.py", source.encode())}, format="multipart")
    assert created.status_code == 201, created.content
    api.post("/api/triggers/", {"name": name, "function": name}, format="json")
    version = FunctionVersion.objects.get(function__name=name)
    version = version_wait(version=version, timeout=180)
    assert version.status == "ready" and version.image, version.build_log

    response = api.post(f"/api/triggers/{name}/dispatch/",
                        {"payloads": [{"n": n} for n in range(50)]}, format="json")
    assert response.status_code == 202, response.content
    task_ids = [e["task_id"] for e in response.json()["executions"]]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if not Execution.objects.filter(task_id__in=task_ids,
                                        status__in=["queued", "running"]).exists():
            break
        time.sleep(0.5)
    outputs = {}
    for task_id in task_ids:
        body = api.get(f"/api/executions/{task_id}/").json()
        assert body["status"] == "succeeded", body
        assert body["runtime"] == "kubernetes"
        outputs[body["input"]["n"]] = body["output"]
    assert outputs == {n: {"twice": n * 2} for n in range(50)}
    assert worker_kube.api_calls.count(("create", "jobs")) >= 50


def test_worker_killed_mid_job_gives_one_job_and_one_result(api, celery_worker_process,
                                                           worker_kube):
    """SIGKILL the worker's pool processes while the Job runs: the redelivered task adopts the
    same Job (409) and stores exactly one terminal result."""
    import signal

    import psutil
    from django_celery_results.models import TaskResult

    name = f"kube-kill-{uuid.uuid4().hex[:6]}"
    source = f"# {name}\nimport time\ndef handle(event):\n    time.sleep(4)\n    return 'once'\n"
    api.post("/api/functions/", {"name": name, "runtime": "kubernetes", "timeout_seconds": 60,
                                 "source": SimpleUploadedFile("fn.py", source.encode())},
             format="multipart")
    api.post("/api/triggers/", {"name": name, "function": name}, format="json")
    version = FunctionVersion.objects.get(function__name=name)
    version = version_wait(version=version, timeout=180)
    assert version.status == "ready", version.build_log
    created_before = worker_kube.api_calls.count(("create", "jobs"))
    secrets_before = worker_kube.api_calls.count(("create", "secrets"))
    task_id = api.post(f"/api/triggers/{name}/dispatch/", {"payload": {}},
                       format="json").json()["task_id"]
    deadline = time.monotonic() + 30
    while worker_kube.api_calls.count(("create", "jobs")) == created_before:
        assert time.monotonic() < deadline, "the Job was never created"
        time.sleep(0.05)
    # Kill while the Job runs: once its request Secret is there, the pool process is watching
    # the Job (a kill between the Job and its Secret is the retry-adoption case of the runtime's
    # own tests).
    while worker_kube.api_calls.count(("create", "secrets")) <= secrets_before:
        assert time.monotonic() < deadline, "the request Secret was never created"
        time.sleep(0.05)
    time.sleep(1.0)
    for child in psutil.Process(celery_worker_process.pid).children(recursive=False):
        child.send_signal(signal.SIGKILL)

    execution = Execution.objects.get(task_id=task_id)
    deadline = time.monotonic() + 90
    while execution.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        execution.refresh_from_db()
    assert (execution.status, execution.output) == ("succeeded", "once"), execution.error
    # Two create calls — the first attempt's and the redelivery's, which met 409 and adopted.
    assert worker_kube.api_calls.count(("create", "jobs")) - created_before == 2
    assert TaskResult.objects.filter(task_id=task_id, status="SUCCESS").count() == 1
