"""HTTP triggers (`POST /t/<name>`) through a real Celery worker: synchronous and asynchronous
calls, handler-chosen status/headers/body, the event for non-JSON bodies, the wait limit, errors,
tokens (wrong, missing, public, regenerated) and the refusals that never reach the worker."""

import base64
import json
import subprocess
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from executions.models import Execution
from functions.services import function_register
from tests.conftest import example
from triggers.models import Trigger
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True)]

ECHO = b"""
def handle(event, context):
    return {"event": event, "execution_id": context.execution_id}
"""
PROXY = b"""
import base64

def handle(event, context):
    if event["mode"] == "text":
        return {"statusCode": 201, "headers": {"X-Made-By": "fn", "Content-Type": "text/csv"},
                "body": "a,b\\n1,2\\n"}
    if event["mode"] == "binary":
        return {"statusCode": 200, "isBase64Encoded": True,
                "headers": {"Content-Type": "image/png"},
                "body": base64.b64encode(b"\\x89PNG\\x00").decode()}
    if event["mode"] == "json":
        return {"statusCode": 418, "body": {"teapot": True}}
    return {"statusCode": "two hundred"}
"""
SLEEPY = b"""
import time

def handle(event, context):
    time.sleep(event.get("sleep", 0))
    return {"slept": event.get("sleep", 0)}
"""
FAILING = b"""
def handle(event, context):
    raise ValueError("no good: %s" % event.get("x"))
"""
TOKEN = "X-KubeFunction-Token"


def http_trigger(user, name: str, filename: str, source: bytes, **fields) -> tuple[Trigger, str]:
    """Register a function and an HTTP trigger for it; returns the trigger and its token."""
    version = function_register(name=name, owner=user, filename=filename, data=source,
                                timeout_seconds=fields.pop("timeout_seconds", None))
    trigger = trigger_create(name=name, function=version.function, user=user, kind="http",
                             **fields)
    return trigger, trigger.token


def call(name, token=None, body=b"", content_type="application/json", path_suffix="",
         **headers):
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if token:
        headers[TOKEN] = token
    return Client().post(f"/t/{name}{path_suffix}", data=body, content_type=content_type,
                         headers=headers)


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


@pytest.mark.worker
def test_synchronous_call_answers_with_the_output(api, user, worker):
    function_register(name="hello", owner=user, filename="hello.py", data=example("hello.py")[1])
    created = api.post("/api/triggers/", {"name": "hello-hook", "function": "hello",
                                          "kind": "http"}, format="json")
    assert created.status_code == 201, created.content
    token = created.json()["token"]
    assert created.json()["webhook_url"] == "http://testserver/t/hello-hook"
    assert api.get("/api/triggers/hello-hook/").json()["token"] is None  # shown once only

    response = call("hello-hook", token, {"name": "Ada"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["message"] == "Hello, Ada!"
    execution = Execution.objects.get(task_id=response["X-KubeFunction-Task-Id"])
    assert str(execution.pk) == body["execution_id"]
    assert execution.synchronous and execution.trigger.name == "hello-hook"
    assert execution.input == {"name": "Ada"} and execution.status == "succeeded"

    # What `curl -d '{"x": 1}'` sends (form encoding) is still read as JSON.
    form = call("hello-hook", token, '{"name": "curl"}',
                content_type="application/x-www-form-urlencoded")
    assert form.status_code == 200 and form.json()["message"] == "Hello, curl!"
    # An empty body sends the trigger's default payload; a trailing slash is accepted.
    Trigger.objects.filter(name="hello-hook").update(default_payload={"name": "default"})
    empty = call("hello-hook", token, b"", path_suffix="/")
    assert empty.status_code == 200 and empty.json()["message"] == "Hello, default!"


@pytest.mark.worker
def test_handler_chooses_status_headers_and_body(user, worker):
    _, token = http_trigger(user, "proxy", "proxy.py", PROXY)
    text = call("proxy", token, {"mode": "text"})
    assert text.status_code == 201
    assert text["Content-Type"] == "text/csv" and text["X-Made-By"] == "fn"
    assert text.content == b"a,b\n1,2\n"
    assert text["X-KubeFunction-Task-Id"]
    binary = call("proxy", token, {"mode": "binary"})
    assert binary.status_code == 200 and binary.content == b"\x89PNG\x00"
    assert binary["Content-Type"] == "image/png"
    teapot = call("proxy", token, {"mode": "json"})
    assert teapot.status_code == 418 and teapot.json() == {"teapot": True}
    bad = call("proxy", token, {"mode": "broken"})
    assert bad.status_code == 502
    assert bad.json()["error_type"] == "InvalidResponse"
    assert "statusCode" in bad.json()["error"]


@pytest.mark.worker
def test_a_body_that_is_not_json_arrives_with_headers_query_method_and_path(user, worker):
    _, token = http_trigger(user, "echo", "echo.py", ECHO)
    response = Client().post("/t/echo?a=1&a=2&b=x", data="plain words", content_type="text/plain",
                             headers={TOKEN: token, "X-Custom": "yes"})
    assert response.status_code == 200, response.content
    event = response.json()["event"]
    assert event["body"] == "plain words" and event["isBase64Encoded"] is False
    assert event["query"] == {"a": ["1", "2"], "b": "x"}
    assert event["method"] == "POST" and event["path"] == "/t/echo"
    assert event["headers"]["x-custom"] == "yes"
    assert event["headers"]["content-type"] == "text/plain"
    assert "x-kubefunction-token" not in event["headers"]  # the secret never reaches the code
    assert token not in json.dumps(event)

    binary = call("echo", token, b"\xff\x00\xfe", content_type="application/octet-stream")
    event = binary.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\x00\xfe"


@pytest.mark.worker
def test_asynchronous_call_answers_202_and_the_result_comes_later(api, user, worker):
    _, token = http_trigger(user, "sleepy", "sleepy.py", SLEEPY, max_retries=2)
    response = call("sleepy", token, {"sleep": 0.5}, path_suffix="?async=1")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert response["Location"] == body["result_url"]
    assert response["X-KubeFunction-Task-Id"] == body["task_id"]
    assert body["result_url"] == f"http://testserver/api/executions/{body['task_id']}/"
    execution = Execution.objects.get(task_id=body["task_id"])
    assert not execution.synchronous and execution.max_retries == 2  # retries apply

    result = api.get(f"/api/executions/{body['task_id']}/?wait=30").json()
    assert result["status"] == "succeeded" and result["output"] == {"slept": 0.5}

    preferred = call("sleepy", token, {"sleep": 0}, Prefer="respond-async")
    assert preferred.status_code == 202


@pytest.mark.worker
def test_a_function_outliving_the_wait_gets_504_and_still_finishes(api, user, worker, settings):
    settings.KUBEFUNCTION_HTTP_WAIT_SECONDS = 1
    _, token = http_trigger(user, "slow", "sleepy.py", SLEEPY)
    response = call("slow", token, {"sleep": 3})
    assert response.status_code == 504, response.content
    body = response.json()
    assert body["status"] in ("queued", "running")
    assert response["X-KubeFunction-Task-Id"] == body["task_id"]
    assert Execution.objects.get(task_id=body["task_id"]).status != "succeeded"

    result = api.get(f"/api/executions/{body['task_id']}/?wait=30").json()
    assert result["status"] == "succeeded" and result["output"] == {"slept": 3}

    # `Prefer: wait=N` shortens the wait further, never lengthens it.
    settings.KUBEFUNCTION_HTTP_WAIT_SECONDS = 30
    assert call("slow", token, {"sleep": 2}, Prefer="wait=0.5").status_code == 504


@pytest.mark.worker
def test_a_failing_or_timed_out_function_gets_502(user, worker):
    _, token = http_trigger(user, "failing", "failing.py", FAILING)
    response = call("failing", token, {"x": 7})
    assert response.status_code == 502, response.content
    body = response.json()
    assert body["status"] == "failed" and body["error_type"] == "ValueError"
    assert "no good: 7" in body["error"]
    assert response["X-KubeFunction-Task-Id"] == body["task_id"]
    # A synchronous call is never retried, even when the trigger allows retries.
    Trigger.objects.filter(name="failing").update(max_retries=3)
    again = call("failing", token, {"x": 8})
    assert again.status_code == 502
    assert Execution.objects.get(task_id=again["X-KubeFunction-Task-Id"]).max_retries == 0

    _, token = http_trigger(user, "too-slow", "sleepy.py", SLEEPY, timeout_seconds=1)
    timed_out = call("too-slow", token, {"sleep": 5})
    assert timed_out.status_code == 502, timed_out.content
    assert timed_out.json()["status"] == "timed_out"
    assert timed_out.json()["error_type"] == "Timeout"


@pytest.mark.worker
def test_tokens_wrong_missing_public_and_regenerated(api, user, other_user, worker):
    _, token = http_trigger(user, "guarded", "echo.py", ECHO)
    wrong = call("guarded", "not-the-token", {"x": 1})
    assert wrong.status_code == 401
    assert "does not match" in wrong.json()["detail"]
    missing = call("guarded", None, {"x": 1})
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == TOKEN
    assert not Execution.objects.exists()  # refused calls dispatch nothing

    http_trigger(user, "open", "echo.py", ECHO, public=True)
    public = call("open", None, {"x": 1})
    assert public.status_code == 200 and public.json()["event"] == {"x": 1}

    intruder = APIClient()
    intruder.force_authenticate(other_user)
    assert intruder.post("/api/triggers/guarded/token/").status_code == 404  # owner only
    renewed = api.post("/api/triggers/guarded/token/")
    assert renewed.status_code == 200
    new_token = renewed.json()["token"]
    assert new_token != token
    assert call("guarded", token, {"x": 1}).status_code == 401
    assert call("guarded", new_token, {"x": 2}).json()["event"] == {"x": 2}


def test_refusals_name_the_problem(api, user, settings):
    """Refused before any dispatch: no worker needed."""
    _, token = http_trigger(user, "hook", "echo.py", ECHO)
    version = function_register(name="plain", owner=user, filename="echo.py", data=ECHO)
    trigger_create(name="manual-one", function=version.function)

    unknown = call("nope", token, {"x": 1})
    assert unknown.status_code == 404 and "no HTTP trigger named 'nope'" in unknown.json()["detail"]
    assert call("manual-one", token, {"x": 1}).status_code == 404  # not an HTTP trigger
    assert Client().get("/t/hook").status_code == 405

    bad_json = call("hook", token, b"{not json")
    assert bad_json.status_code == 400 and "body" in bad_json.json()
    settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES = 100
    too_big = call("hook", token, {"x": "y" * 200})
    assert too_big.status_code == 413 and "body" in too_big.json()

    api.patch("/api/triggers/hook/", {"enabled": False}, format="json")
    disabled = call("hook", token, {"x": 1})
    assert disabled.status_code == 409 and "disabled" in disabled.json()["trigger"][0]
    assert call("hook", "wrong", {"x": 1}).status_code == 401  # the token is checked first
    assert not Execution.objects.exists()


def test_manual_trigger_turned_into_http_gets_a_token(api, user):
    function_register(name="echo", owner=user, filename="echo.py", data=ECHO)
    api.post("/api/triggers/", {"name": "later", "function": "echo"}, format="json")
    changed = api.patch("/api/triggers/later/", {"kind": "http"}, format="json").json()
    assert changed["token"] and changed["has_token"]
    assert Trigger.objects.get(name="later").token_hash != changed["token"]  # only the hash
    assert api.post("/api/triggers/later/token/").status_code == 200
    back = api.patch("/api/triggers/later/", {"kind": "manual"}, format="json").json()
    assert back["has_token"] is False and back["webhook_url"] is None
    refused = api.post("/api/triggers/later/token/")
    assert refused.status_code == 400 and "kind" in refused.json()
    public = api.patch("/api/triggers/later/", {"public": True}, format="json")
    assert public.status_code == 400 and "public" in public.json()


@pytest.mark.worker
def test_the_curl_line_bootstrap_prints_works_as_written(live_server, worker, settings,
                                                          tmp_path, monkeypatch):
    """`make up` runs bootstrap, which prints the README's curl line with the real token: run
    exactly that line with the real curl against a live server."""
    settings.VAR_DIR = tmp_path
    settings.KUBEFUNCTION_PUBLIC_URL = live_server.url
    monkeypatch.setenv("KUBEFUNCTION_ADMIN_PASSWORD", "s3cret-pass")
    out = StringIO()
    call_command("bootstrap", stdout=out)
    line = next(text for text in out.getvalue().splitlines() if "try: curl" in text)
    command = line.split("try: ", 1)[1]
    token = (tmp_path / "hello-http-token.txt").read_text().strip()
    assert command == (f"curl -X POST {live_server.url}/t/hello-http "
                       f"-H 'X-KubeFunction-Token: {token}' -d '{{\"x\": 1}}'")
    answer = subprocess.run(["bash", "-c", command + " --silent --show-error --max-time 60"],
                            capture_output=True, text=True, timeout=90)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["message"] == "Hello, world!"

    again = StringIO()
    call_command("bootstrap", stdout=again)  # idempotent: same trigger, same token printed
    assert f"token {token}" in again.getvalue()
    assert Trigger.objects.filter(name="hello-http").count() == 1


def test_retry_and_callback_fields_are_checked(api, user):
    function_register(name="echo", owner=user, filename="echo.py", data=ECHO)
    base = {"name": "t", "function": "echo", "kind": "http"}
    backoff = api.post("/api/triggers/", {**base, "retry_backoff_seconds": -1}, format="json")
    assert backoff.status_code == 400 and "retry_backoff_seconds" in backoff.json()
    callback = api.post("/api/triggers/", {**base, "callback_url": "http://example.com/cb"},
                        format="json")
    assert callback.status_code == 400
    assert "KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS" in callback.json()["callback_url"][0]
    assert not Trigger.objects.exists()
