"""End to end through a real Celery worker process, Redis and Postgres: register, dispatch,
retrieve through the API, AsyncResult in another process, and the failure modes."""

import json
import subprocess
import sys
import time
import uuid
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_results.models import TaskResult

from executions.models import Execution
from executions.tasks import run_execution
from functions.models import FunctionVersion
from functions.selectors import version_wait
from kubefunction.celery import app as celery_app
from tests.archives import make_zip
from tests.conftest import example
from tests.processes import ROOT, worker_database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


def register(api, name, filename, data, trigger=None, **fields):
    response = api.post("/api/functions/", {
        "name": name, "source": SimpleUploadedFile(filename, data), **fields}, format="multipart")
    assert response.status_code == 201, response.content
    api.post("/api/triggers/", {"name": trigger or name, "function": name}, format="json")
    return response.json()


def run(api, trigger, payload, wait=20):
    response = api.post(f"/api/triggers/{trigger}/dispatch/?wait={wait}", {"payload": payload},
                        format="json")
    assert response.status_code == 200, response.content
    return response.json()


def async_result_in_other_process(task_id: str) -> dict:
    """Read the result with celery.result.AsyncResult from a separate Python process."""
    code = (
        "import json, sys, django; django.setup()\n"
        "from celery.result import AsyncResult\n"
        "from kubefunction.celery import app\n"
        "r = AsyncResult(sys.argv[1], app=app)\n"
        "try:\n"
        "    print(json.dumps({'state': r.state, 'value': r.get(timeout=30)}))\n"
        "except Exception as exc:\n"
        "    print(json.dumps({'state': r.state, 'error': str(exc), 'tb': r.traceback}))\n"
    )
    env = {"DATABASE_URL": worker_database_url(), "DJANGO_SETTINGS_MODULE": "kubefunction.settings",
           "PATH": "/usr/bin:/bin", "CELERY_BROKER_URL": celery_app.conf.broker_url}
    out = subprocess.run([sys.executable, "-c", code, task_id], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_examples_round_trip(api, worker):
    register(api, "hello", *example("hello.py"))
    body = run(api, "hello", {"name": "Ada"})
    assert body["status"] == "succeeded"
    assert body["output"]["message"] == "Hello, Ada!"
    assert body["output"]["execution_id"] == body["id"]
    assert "greeting Ada" in body["logs"]
    assert body["worker"].startswith(f"{worker.hostname}/")  # node/pid of the claimer
    assert body["cpu_seconds"] is not None and body["peak_memory_bytes"] > 0
    fetched = api.get(f"/api/executions/{body['task_id']}/").json()
    assert fetched["output"] == body["output"]
    assert async_result_in_other_process(body["task_id"]) == {
        "state": "SUCCESS", "value": body["output"]}

    register(api, "word-count", *example("word_count.py"))
    body = run(api, "word-count", {"text": "a b c"})
    assert body["status"] == "succeeded", body
    assert body["output"] == {"words": 3, "characters": 5}
    assert "counting 3 words" in body["logs"]


def wait_for_build(name: str) -> FunctionVersion:
    version = FunctionVersion.objects.filter(function__name=name).latest("number")
    version = version_wait(version=version, timeout=180)
    return version


def test_example_with_requirements_runs(api, worker):
    register(api, "slugify", *example("slugify.zip"))
    assert wait_for_build("slugify").status == "ready"
    body = run(api, "slugify", {"text": "Héllo Wörld, ça va?"})
    assert body["status"] == "succeeded", body
    assert body["output"] == {"slug": "hello-world-ca-va"}


def test_requirements_build_pending_then_ready_with_log(api, worker):
    # A unique comment makes the requirements new to this machine, so pip really runs.
    source = make_zip({"handler.py": "import six\ndef handle(e):\n    return six.__version__\n",
                       "requirements.txt": f"six==1.16.0  # {uuid.uuid4()}\n"})
    created = register(api, "needs-six", "code.zip", source)
    assert created["version"]["status"] == "pending"
    assert created["active_version"] is None
    pending = api.post("/api/triggers/needs-six/dispatch/", {}, format="json")
    assert pending.status_code == 409
    assert "has no ready version" in pending.json()["trigger"][0]
    version = wait_for_build("needs-six")
    assert version.status == "ready", version.build_log
    assert "Successfully installed six-1.16.0" in version.build_log
    assert run(api, "needs-six", {})["output"] == "1.16.0"


def test_failed_build_is_never_active(api, worker):
    source = make_zip({"handler.py": "def handle(e):\n    return 1\n",
                       "requirements.txt": "no-such-package-kubefunction-test==0.0.1\n"})
    register(api, "broken-deps", "code.zip", source)
    version = wait_for_build("broken-deps")
    assert version.status == "failed"
    assert "no-such-package-kubefunction-test" in version.build_log
    response = api.get("/api/functions/broken-deps/").json()
    assert response["active_version"] is None


FAILING = {
    "raises": ("def handle(event):\n    raise ValueError('bad input: ' + event['x'])\n",
               {"x": "42"}, "failed", "ValueError", "bad input: 42"),
    "sleeps": ("import time\ndef handle(event):\n    time.sleep(30)\n",
               {}, "timed_out", "Timeout", "did not finish within 2"),
    "nonjson": ("def handle(event):\n    return {1, 2}\n",
                {}, "failed", "NonSerializableResult", "set"),
    "exits": ("import sys\ndef handle(event):\n    sys.exit(3)\n",
              {}, "failed", "SystemExit", "sys.exit(3)"),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_failures_end_with_a_clear_status(api, worker, case):
    source, payload, status, error_type, message = FAILING[case]
    register(api, case, "fn.py", source.encode(), timeout_seconds=2)
    started = time.monotonic()
    body = run(api, case, payload)
    assert time.monotonic() - started < 15
    assert body["status"] == status, body
    assert body["error_type"] == error_type
    assert message in body["error"]
    if case == "exits":
        assert body["exit_code"] == 3
    if case == "raises":
        assert 'line 2, in handle' in body["error"] and "runner.py" not in body["error"]
    result = async_result_in_other_process(body["task_id"])
    assert result["state"] == "FAILURE"
    assert message in result["error"]
    # The worker is still healthy: the next invocation of a good function succeeds.
    register(api, f"ok-{case}", "fn.py", b"def handle(event):\n    return 'fine'\n")
    assert run(api, f"ok-{case}", {})["output"] == "fine"


def test_fifty_megabytes_of_prints_are_capped(api, worker, settings):
    register(api, "chatty", "fn.py",
             b"def handle(event):\n    for _ in range(50):\n        print('x' * (1024 * 1024))\n"
             b"    return 'done'\n", timeout_seconds=60)
    body = run(api, "chatty", {}, wait=60)
    assert body["status"] == "succeeded", body["error"]
    assert body["output"] == "done"
    assert body["logs_truncated"] is True
    assert len(body["logs"].encode()) <= settings.KUBEFUNCTION_MAX_LOG_BYTES + 1024


def test_unicode_in_and_out(api, worker):
    register(api, "uni", "fn.py",
             "def handle(event):\n    print('journal ✓ 日本')\n"
             "    return {'got': event['s'], 'extra': 'ünïcødé ✓ 你好'}\n".encode())
    body = run(api, "uni", {"s": "héllo ✓ 你好 🎉"})
    assert body["output"] == {"got": "héllo ✓ 你好 🎉", "extra": "ünïcødé ✓ 你好"}
    assert "journal ✓ 日本" in body["logs"]


def test_redelivered_task_for_finished_execution_does_nothing(api, worker, tmp_path):
    # The boxed function cannot leave a mark on the host (tests/test_local_sandbox.py): a second
    # run is seen as a changed result row or finish time instead.
    register(api, "counter", "fn.py",
             b"import time\ndef handle(event):\n    return time.time_ns()\n")
    body = run(api, "counter", {})
    assert body["status"] == "succeeded"
    execution = Execution.objects.get(task_id=body["task_id"])
    stored = TaskResult.objects.get(task_id=body["task_id"])
    run_execution.apply_async(args=[str(execution.pk)], task_id=execution.task_id)
    deadline = time.monotonic() + 20
    needle = f"executions.run[{execution.task_id}] ignored"
    while needle not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert needle in worker.log_path.read_text(), "the worker never received the redelivery"
    execution.refresh_from_db()
    assert execution.finished_at.isoformat() == body["finished_at"].replace("Z", "+00:00")
    again = TaskResult.objects.get(task_id=body["task_id"])
    assert (again.status, again.result, again.date_done) == (
        stored.status, stored.result, stored.date_done)


def test_dispatch_command_two_hundred_with_wait(api, worker, user):
    register(api, "hello", *example("hello.py"))
    out = StringIO()
    call_command("dispatch", "hello", "--count", "200", "--wait", "--timeout", "300",
                 "--owner", "alice", stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert "200 dispatched" in text and "200 succeeded" in text, text
    assert "p50" in text and "p95" in text
    outputs = list(Execution.objects.filter(function__name="hello")
                   .values_list("output__execution_id", flat=True))
    assert len(outputs) == 200 and len(set(outputs)) == 200


def test_dispatch_command_reports_failures_with_exit_status(api, worker):
    register(api, "boom", "fn.py", b"def handle(event):\n    raise RuntimeError('no')\n")
    with pytest.raises(CommandError, match="1 of 1 executions did not succeed"):
        call_command("dispatch", "boom", "--wait", "--owner", "alice", stdout=StringIO(),
                     stderr=StringIO())


def test_doctor_passes_with_a_live_worker(worker):
    out = StringIO()
    call_command("doctor", stdout=out)
    text = out.getvalue()
    for check in ("database", "broker", "worker", "runtime"):
        assert f"ok   {check}" in text, text
    assert worker.hostname in text
