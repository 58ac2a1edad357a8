"""The `cloudfunctions` and `fission` conventions through the real webhook and dispatch paths
with a real worker: Google Cloud Functions (Functions Framework) and Fission python functions,
written as for those platforms, unchanged.

The oracle for GCF is the Functions Framework itself, run in this process: the same main.py
goes through `functions_framework.create_app(...).test_client()` with the same request, and our
webhook's answer (status, body, content type, the function's headers) must equal the
framework's. For Fission, the oracle is Flask answering through the routes Fission's python
environment server declares (fission/environments python/server.py).

One archive holds every function (GCF's main.py and Fission's user.py) and names the
requirements both platforms provide, so every version shares one installed set of requirements
(the local runtime installs them once per requirements digest, in KUBEFUNCTION_WORK_DIR/deps):
at most one build per run, none once the work folder has them.
"""

import json
import os
import sys
from contextlib import contextmanager

import flask
import functions_framework
import pytest
from django.test import Client

from executions.models import Execution
from functions.selectors import version_wait
from functions.services import function_register
from tests.archives import make_zip
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

MAIN = b'''import functions_framework
from flask import Response


def hello(request):
    return {
        "method": request.method,
        "path": request.path,
        "args": request.args.to_dict(flat=False),
        "json": request.get_json(silent=True),
        "size": len(request.get_data()),
        "custom": request.headers.get("X-Custom"),
    }


@functions_framework.http
def created(request):
    name = request.args.get("name", "world")
    headers = [("Content-Type", "text/plain"), ("X-Tag", "a"), ("X-Tag", "b")]
    return f"Hello {name}!", 201, headers


def reverse(request):
    data = request.get_data()
    return Response(data[::-1], status=202, mimetype="application/octet-stream",
                    headers={"X-Size": str(len(data))})


def boom(request):
    raise ValueError("boom from the function")


@functions_framework.cloud_event
def on_event(cloud_event):
    print(f"event {cloud_event['id']} of type {cloud_event['type']}")
    return {"id": cloud_event["id"], "type": cloud_event["type"],
            "source": cloud_event["source"], "specversion": cloud_event["specversion"],
            "data": cloud_event.data}
'''
FISSION = b'''from flask import request


def main():
    if request.method == "POST" and request.is_json:
        data = request.get_json()
        return {"hello": data.get("name"), "path": request.path}
    name = request.args.get("name", "world")
    return "Hello, %s!\\n" % name, 200, {"Content-Type": "text/plain",
                                         "X-Greeted": name}
'''
REQUIREMENTS = "functions-framework>=3,<4\nflask>=2,<4\n"
ARCHIVE = make_zip({"main.py": MAIN, "user.py": FISSION, "requirements.txt": REQUIREMENTS})
FISSION_METHODS = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]  # server.py's routes


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


def registered(user, name, handler=None, convention="cloudfunctions"):
    version = function_register(name=name, owner=user, filename="source.zip", data=ARCHIVE,
                                handler=handler, convention=convention)
    trigger_create(name=name, function=version.function, user=user, kind="http", public=True)
    version = version_wait(version=version, timeout=180)
    assert version.status == "ready", version.build_log
    return version


def execution_of(answer) -> Execution:
    return Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"])


@contextmanager
def framework(tmp_path, target):
    """functions_framework's own test client for `target` in MAIN (its global state restored:
    create_app sets environment variables, sys.path and sys.modules['main'])."""
    source = tmp_path / "main.py"
    source.write_bytes(MAIN)
    saved_env, saved_path, saved_main = dict(os.environ), list(sys.path), sys.modules.get("main")
    try:
        yield functions_framework.create_app(target, str(source)).test_client()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        if saved_main is None:
            sys.modules.pop("main", None)
        else:
            sys.modules["main"] = saved_main


def assert_same(ours, theirs, *headers):
    """Our webhook's answer is the framework's: status, body, content type, `headers`."""
    assert ours.status_code == theirs.status_code, ours.content
    assert ours.content == theirs.data
    assert ours["Content-Type"] == theirs.headers["Content-Type"]
    for name in headers:
        assert ours[name] == ", ".join(theirs.headers.getlist(name)), name


def test_http_functions_answer_as_the_functions_framework_does(user, worker, tmp_path):
    version = registered(user, "hello", "main.hello")
    assert version.handler == "main.hello" and version.convention == "cloudfunctions"
    assert "functions-framework>=3,<4" in version.requirements
    with framework(tmp_path, "hello") as client:
        got = Client().get("/t/hello/orders/42?q=1&q=2&empty=", headers={"X-Custom": "yes"})
        assert got.status_code == 200, got.content
        assert got.json() == {"method": "GET", "path": "/orders/42",
                              "args": {"q": ["1", "2"], "empty": [""]}, "json": None,
                              "size": 0, "custom": "yes"}
        assert_same(got, client.get("/orders/42?q=1&q=2&empty=", headers={"X-Custom": "yes"}))

        body = json.dumps({"sku": "A-1"})
        posted = Client().post("/t/hello", data=body, content_type="application/json")
        assert posted.json()["json"] == {"sku": "A-1"} and posted.json()["method"] == "POST"
        assert_same(posted, client.post("/", data=body, content_type="application/json"))

    registered(user, "created", "main.created")  # @functions_framework.http, a tuple answer
    with framework(tmp_path, "created") as client:
        got = Client().get("/t/created?name=Ada")
        assert got.status_code == 201 and got.content == b"Hello Ada!"
        assert got["X-Tag"] == "a, b"  # both values of the repeated header
        assert_same(got, client.get("/?name=Ada"), "X-Tag")

    registered(user, "reverse", "main.reverse")  # a flask Response, a binary body
    data = bytes(range(256))
    with framework(tmp_path, "reverse") as client:
        got = Client().put("/t/reverse/x", data=data, content_type="application/octet-stream")
        assert got.status_code == 202 and got.content == data[::-1]
        assert got["X-Size"] == "256"
        assert_same(got, client.put("/x", data=data, content_type="application/octet-stream"),
                    "X-Size")
        # The framework's own routes: GCF answers these paths itself.
        assert_same(Client().get("/t/reverse/favicon.ico"), client.get("/favicon.ico"))


def test_a_raised_error_fails_the_execution_with_the_functions_traceback(user, worker,
                                                                          tmp_path):
    registered(user, "boom", "main.boom")
    answer = Client().get("/t/boom")
    assert answer.status_code == 502, answer.content
    assert answer.json()["error_type"] == "ValueError"
    execution = execution_of(answer)
    assert execution.status == "failed"
    assert 'raise ValueError("boom from the function")' in execution.error
    assert "main.py" in execution.error
    with framework(tmp_path, "boom") as client:  # GCF's own answer: a 500 marked as a crash
        theirs = client.get("/")
        assert theirs.status_code == 500 and theirs.headers["X-Google-Status"] == "crash"


def test_cloud_event_functions_over_the_webhook_and_by_dispatch(user, worker, api, tmp_path):
    registered(user, "on-event", "main.on_event")
    ce = {"ce-specversion": "1.0", "ce-type": "com.example.test", "ce-source": "//test",
          "ce-id": "abc-1"}
    with framework(tmp_path, "on_event") as client:
        got = Client().post("/t/on-event", data=json.dumps({"k": "v"}),
                            content_type="application/json", headers=ce)
        assert got.status_code == 200 and got.content == b"OK"
        assert "event abc-1 of type com.example.test" in execution_of(got).logs
        assert_same(got, client.post("/", data=json.dumps({"k": "v"}),
                                     content_type="application/json", headers=ce))
        # Not a CloudEvent: the framework's 400; a GET: its 405.
        refused = Client().post("/t/on-event", data="{}", content_type="application/json")
        assert refused.status_code == 400
        assert refused.status_code == client.post(
            "/", data="{}", content_type="application/json").status_code
        assert_same(Client().get("/t/on-event"), client.get("/"))

    answer = api.post("/api/triggers/on-event/dispatch/?wait=30", {"payload": {"n": 1}},
                      format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["status"] == "succeeded", body
    assert body["output"] == {"id": body["id"], "type": "dev.kubefunction.dispatch",
                              "source": "//kubefunction/on-event", "specversion": "1.0",
                              "data": {"n": 1}}


def test_a_dispatch_to_an_http_function_is_a_json_post(user, worker, api):
    registered(user, "hello", "main.hello")
    answer = api.post("/api/triggers/hello/dispatch/?wait=30", {"payload": {"n": 1}},
                      format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["output"] == {"method": "POST", "path": "/", "args": {},
                                       "json": {"n": 1}, "size": 8, "custom": None}


def fission_oracle():
    """Flask answering through the routes Fission's python environment server declares."""
    import importlib.util

    spec = importlib.util.spec_from_loader("fission_user", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(FISSION, "user.py", "exec"), module.__dict__)
    app = flask.Flask("oracle")

    def userfunc_call(*args, **kwargs):
        return module.main(*args)

    app.add_url_rule("/", "userfunc_call", userfunc_call, methods=FISSION_METHODS)
    app.add_url_rule("/<path:path>", "userfunc_call", userfunc_call, methods=FISSION_METHODS)
    return app.test_client()


def test_a_fission_function_reads_flask_request(user, worker, api):
    version = registered(user, "fission-hello", convention="fission")
    assert version.handler == "user.main"  # main.py has no main(): Fission's user.py
    assert version.requirements.strip() == REQUIREMENTS.strip()  # flask named: nothing added
    oracle = fission_oracle()

    got = Client().get("/t/fission-hello/a/b?name=Ada")
    assert got.status_code == 200 and got.content == b"Hello, Ada!\n"
    assert got["X-Greeted"] == "Ada"
    assert_same(got, oracle.get("/a/b?name=Ada"), "X-Greeted")

    posted = Client().post("/t/fission-hello/p", data=json.dumps({"name": "Bo"}),
                           content_type="application/json")
    assert posted.json() == {"hello": "Bo", "path": "/p"}
    assert_same(posted, oracle.post("/p", data=json.dumps({"name": "Bo"}),
                                    content_type="application/json"))
    patched = Client().patch("/t/fission-hello")  # not among Fission's methods: Flask's 405
    assert patched.status_code == 405 == oracle.patch("/").status_code

    answer = api.post("/api/triggers/fission-hello/dispatch/?wait=30",
                      {"payload": {"name": "Cy"}}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["output"] == {"hello": "Cy", "path": "/"}
