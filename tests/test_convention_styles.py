"""The `openfaas`, `openfaas-http`, `openwhisk`, `knative` and `windmill` conventions through the
real webhook and dispatch paths with a real worker: functions written in each platform's
documented style, unchanged. Oracles we did not write: OpenWhisk's published web-action
examples (docs/webactions.md: the arguments a `.json` call shows, the redirect, cookie and
image answers); Flask itself for the answers OpenFaaS' python3-http template hands it; uvicorn
(a real ASGI server) for the scope a Knative function gets and the answer it gives."""

import base64
import json
import socket
import threading
import time

import pytest
import uvicorn
from django.test import Client
from flask import Flask

from executions.models import Execution
from functions.services import function_register
from tests.archives import make_zip
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


@pytest.fixture
def hooks_origin(settings):
    """Answers served as given (Set-Cookie, an absolute Location) on a webhook origin."""
    settings.KUBEFUNCTION_WEBHOOK_ORIGIN = "http://hooks.testserver"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "hooks.testserver"]
    return {"HTTP_HOST": "hooks.testserver"}


def deploy(user, name, convention, filename, source, **trigger):
    version = function_register(name=name, owner=user, filename=filename, data=source,
                                convention=convention)
    trigger_create(name=name, function=version.function, user=user, kind="http", public=True,
                   **trigger)
    return version


def dispatch(api, name, payload):
    answer = api.post(f"/api/triggers/{name}/dispatch/?wait=30", {"payload": payload},
                      format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()


def execution_of(answer) -> Execution:
    return Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"])


# --- OpenFaaS classic (template python3: function/handler.py) -------------------------------------

CLASSIC = b'''import os


def handle(req):
    """handle a request to the function
    Args:
        req (str): request body
    """
    return "Hello " + req + " via " + os.getenv("Http_Method", "?") + \\
        " " + os.getenv("Http_Path", "?") + "?" + os.getenv("Http_Query", "") + \\
        " from " + os.getenv("Http_User_Agent", "?")
'''


def test_openfaas_classic_takes_the_body_as_text_and_answers_what_it_prints(user, worker, api):
    version = deploy(user, "faas-classic", "openfaas", "handler.py", CLASSIC)
    assert version.handler == "handler.handle"
    answer = Client().post("/t/faas-classic/sub?x=1", data="world", content_type="text/plain",
                           headers={"User-Agent": "probe/2", "Path": "/posing"})
    assert answer.status_code == 200, answer.content
    # index.py prints the return value (a newline); the watchdog echoes the caller's type
    assert answer.content == b"Hello world via POST /sub?x=1 from probe/2\n"
    assert answer["Content-Type"] == "text/plain"
    empty = Client().get("/t/faas-classic")
    assert empty.content == b"Hello  via GET /? from ?\n"
    assert empty["Content-Type"] == "text/plain; charset=utf-8"  # Go's sniffed default
    # A dispatch: the payload as its JSON text, the returned string as the output.
    body = dispatch(api, "faas-classic", {"n": 1})
    assert body["output"] == 'Hello {"n": 1} via ? ?? from ?'


# --- OpenFaaS python3-http (function/handler.py: handle(event, context)) -------------------------

HTTP_HANDLER = b'''import json


def handle(event, context):
    if event.path == "/json":
        return {"statusCode": 201, "body": {"method": event.method,
                                            "q": event.query.get("q"),
                                            "all": event.query.getlist("q"),
                                            "agent": event.headers.get("user-agent"),
                                            "host_known": bool(context.hostname)}}
    if event.path == "/bytes":
        return {"statusCode": 200, "body": event.body[::-1],
                "headers": {"Content-type": "application/octet-stream"}}
    if event.path == "/text":
        return {"statusCode": 200, "body": "plain", "headers": {"X-Kind": "text"}}
    if event.path == "/string":
        return "just a string"
    return {"statusCode": 200, "body": json.loads(event.body) if event.body else None}
'''


def flask_oracle(value):
    """What Flask answers for a view returning `value` (the template returns its
    format_response to Flask)."""
    app = Flask("oracle")
    app.add_url_rule("/", "view", lambda: value)
    response = app.test_client().get("/")
    return response.status_code, response.headers.get("Content-Type"), response.get_data()


def test_openfaas_http_event_and_answers_are_the_templates(user, worker, api):
    deploy(user, "faas-http", "openfaas-http", "handler.py", HTTP_HANDLER)
    got = Client().get("/t/faas-http/json?q=1&q=2", headers={"User-Agent": "probe/3"})
    assert got.status_code == 201, got.content
    expected = {"method": "GET", "q": "1", "all": ["1", "2"], "agent": "probe/3",
                "host_known": True}
    # jsonify(body) as Flask serves it
    with Flask("oracle").app_context():
        from flask import jsonify
        oracle = jsonify(expected)
    assert got["Content-Type"] == oracle.headers["Content-Type"]
    assert got.content == oracle.get_data()

    data = bytes(range(200))
    flipped = Client().put("/t/faas-http/bytes", data=data,
                           content_type="application/octet-stream")
    assert flipped.status_code == 200 and flipped.content == data[::-1]
    assert flipped["Content-Type"] == "application/octet-stream"

    text = Client().get("/t/faas-http/text")
    status, content_type, body = flask_oracle(("plain", 200, [("X-Kind", "text")]))
    assert (text.status_code, text["Content-Type"], text.content) == (status, content_type,
                                                                       body)
    assert text["X-Kind"] == "text"
    string = Client().get("/t/faas-http/string")
    assert (string.status_code, string["Content-Type"], string.content) == \
        flask_oracle("just a string")

    # A dispatch is POST / with the payload; the output is the answer's body.
    body = dispatch(api, "faas-http", {"k": [1, 2]})
    assert body["output"] == {"k": [1, 2]}  # a dict body is jsonify'd


# --- Apache OpenWhisk (an archive with __main__.py, and web actions) -----------------------------

WHISK_MAIN = '''import base64
import json
import os

PNG = base64.b64encode(bytes([0x89, 0x50, 0x4E, 0x47, 0, 1, 2, 255])).decode()


def main(args):
    path = args.get("__ow_path", "")
    if path == "/redirect":
        return {"headers": {"location": "http://openwhisk.org"}, "statusCode": 302}
    if path == "/cookie":
        return {"headers": {"Set-Cookie": "UserID=Jane; Max-Age=3600; Version=",
                            "Content-Type": "text/html"},
                "statusCode": 200, "body": "<html><body><h3>hello</h3></body></html>"}
    if path == "/png":
        return {"headers": {"Content-Type": "image/png"}, "statusCode": 200, "body": PNG}
    if path == "/json":
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                "body": base64.b64encode(json.dumps(args).encode()).decode()}
    if path == "/error":
        return {"error": {"statusCode": 400, "body": "no such order"}}
    if path == "/nothing":
        return {}
    if "__ow_method" not in args:  # invoked, not a web action
        if args.get("fail"):
            return {"error": "asked to fail"}
        return {"greeting": "hello " + args.get("name", "stranger"),
                "activation": os.environ["__OW_ACTIVATION_ID"],
                "action": os.environ["__OW_ACTION_NAME"],
                "deadline": int(os.environ["__OW_DEADLINE"])}
    return {"body": {"response": args}}
'''


def test_openwhisk_web_action_arguments_are_the_published_examples(user, worker):
    version = deploy(user, "whisk", "openwhisk", "action.zip",
                     make_zip({"__main__.py": WHISK_MAIN, "helper.py": "X = 1\n"}))
    assert version.handler == "__main__.main"
    headers = {"User-Agent": "curl/7.43.0", "Accept": "*/*"}

    def response_of(answer):
        assert answer.status_code == 200, answer.content
        assert answer["Content-Type"] == "application/json"
        return answer.json()["response"]

    # docs/webactions.md: "hello.json" without and with a query parameter...
    args = response_of(Client().get("/t/whisk", headers=headers))
    assert args["__ow_method"] == "get" and args["__ow_path"] == ""
    assert args["__ow_headers"]["accept"] == "*/*"
    assert args["__ow_headers"]["user-agent"] == "curl/7.43.0"
    assert set(args) == {"__ow_method", "__ow_headers", "__ow_path"}
    args = response_of(Client().get("/t/whisk?name=Jane", headers=headers))
    assert args["name"] == "Jane"
    # ...form data and a JSON object become arguments; a text body is __ow_body.
    args = response_of(Client().post("/t/whisk", data="name=Jane",
                                     content_type="application/x-www-form-urlencoded"))
    assert args["name"] == "Jane" and args["__ow_method"] == "post"
    assert args["__ow_headers"]["content-type"] == "application/x-www-form-urlencoded"
    args = response_of(Client().post("/t/whisk?name=Query", data=json.dumps({"name": "Jane"}),
                                     content_type="application/json"))
    assert args["name"] == "Jane" and "__ow_body" not in args  # the body wins over the query
    args = response_of(Client().post("/t/whisk", data="Jane", content_type="text/plain"))
    assert args["__ow_body"] == "Jane" and "name" not in args
    binary = response_of(Client().post("/t/whisk", data=b"\x00\xff",
                                       content_type="application/octet-stream"))
    assert base64.b64decode(binary["__ow_body"]) == b"\x00\xff"
    # A request may not set an __ow_ field (OpenWhisk answers 400 before running the action).
    refused = Client().get("/t/whisk?__ow_method=put")
    assert refused.status_code == 400 and "__ow_method" in refused.json()["error"]


def test_openwhisk_web_action_answers(user, worker, hooks_origin):
    deploy(user, "whisk-out", "openwhisk", "action.zip", make_zip({"__main__.py": WHISK_MAIN}))
    redirect = Client().get("/t/whisk-out/redirect", **hooks_origin)
    assert redirect.status_code == 302 and redirect["Location"] == "http://openwhisk.org"
    assert redirect.content == b""
    cookie = Client().get("/t/whisk-out/cookie", **hooks_origin)
    assert cookie.status_code == 200 and cookie.content.startswith(b"<html>")
    assert cookie["Content-Type"].startswith("text/html")
    assert cookie["Set-Cookie"] == "UserID=Jane; Max-Age=3600; Version="
    png = Client().get("/t/whisk-out/png", **hooks_origin)
    assert png["Content-Type"] == "image/png"
    assert png.content == bytes([0x89, 0x50, 0x4E, 0x47, 0, 1, 2, 255])  # base64-decoded
    as_json = Client().get("/t/whisk-out/json?a=1", **hooks_origin)
    assert as_json.json()["a"] == "1"  # a base64 JSON body is decoded (legacy web actions)
    error = Client().get("/t/whisk-out/error", **hooks_origin)
    assert error.status_code == 400 and error.content == b"no such order"
    nothing = Client().get("/t/whisk-out/nothing", **hooks_origin)
    assert nothing.status_code == 204 and nothing.content == b""


def test_openwhisk_invocation_takes_and_returns_a_dictionary(user, worker, api):
    deploy(user, "whisk-call", "openwhisk", "action.zip", make_zip({"__main__.py": WHISK_MAIN}))
    body = dispatch(api, "whisk-call", {"name": "Jane"})
    out = body["output"]
    assert out["greeting"] == "hello Jane" and out["activation"] == body["id"]
    assert out["action"] == "/_/whisk-call"
    assert 0 < out["deadline"] - time.time() * 1000 <= 300_000  # epoch ms, within the timeout
    failed = api.post("/api/triggers/whisk-call/dispatch/?wait=30",
                      {"payload": {"fail": True}}, format="json").json()
    assert failed["status"] == "failed" and failed["error_type"] == "ApplicationError"
    assert "asked to fail" in failed["error"]
    refused = api.post("/api/triggers/whisk-call/dispatch/?wait=30", {"payload": [1]},
                       format="json").json()
    assert refused["status"] == "failed" and "takes an object" in refused["error"]


# --- Knative func, python http template (function/func.py) ---------------------------------------

KNATIVE = b'''# Function
import json
import logging


def new():
    """ New is the only method that must be implemented by a Function.
    The instance returned can be of any name.
    """
    return Function()


class Function:
    def __init__(self):
        self.started = None

    async def handle(self, scope, receive, send):
        """ Handle all HTTP requests to this Function other than readiness
        and liveness probes."""
        logging.info("OK: Request Received")
        message = await receive()
        seen = {key: scope[key] for key in ("type", "http_version", "method", "scheme",
                                            "path", "root_path")}
        seen["raw_path"] = scope["raw_path"].decode()
        seen["query_string"] = scope["query_string"].decode()
        seen["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]
                           if k in (b"x-one", b"content-type")]
        seen["body"] = message["body"].decode()
        seen["more_body"] = message.get("more_body", False)
        seen["started"] = self.started
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                [b"content-type", b"application/json"],
                [b"x-tag", b"a"],
                [b"x-tag", b"b"],
            ],
        })
        text = json.dumps(seen)
        await send({"type": "http.response.body", "body": text[:10].encode(),
                    "more_body": True})
        await send({"type": "http.response.body", "body": text[10:].encode()})

    def start(self, cfg):
        self.started = "PATH" in cfg

    def alive(self):
        return True, "Alive"

    def ready(self):
        return False, "Not yet"
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def uvicorn_oracle(source: bytes, method: str, target: str, body: bytes, headers: dict):
    """The answer uvicorn (a real ASGI server) gives for the same function and request."""
    import http.client

    namespace: dict = {}
    exec(compile(source, "func.py", "exec"), namespace)
    instance = namespace["new"]()
    instance.start({"PATH": "/usr/bin"})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(instance.handle, host="127.0.0.1", port=port,
                                           interface="asgi3", lifespan="off",
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_knative_function_gets_the_scope_an_asgi_server_gives(user, worker, api):
    version = deploy(user, "kn", "knative", "function.zip",
                     make_zip({"function/__init__.py": "", "function/func.py": KNATIVE}))
    assert version.handler == "function.func.new"
    headers = {"Content-Type": "text/plain", "X-One": "1"}
    ours = Client().post("/t/kn/a/b?x=1&y=", data=b"payload", content_type="text/plain",
                         headers={"X-One": "1"})
    assert ours.status_code == 200, ours.content
    status, oracle_headers, oracle_body = uvicorn_oracle(KNATIVE, "POST", "/a/b?x=1&y=",
                                                         b"payload", headers)
    assert ours.status_code == status
    assert ours.json() == json.loads(oracle_body)
    assert ours.json()["path"] == "/a/b" and ours.json()["started"] is True
    assert ours["X-Tag"] == ", ".join(v for k, v in oracle_headers if k.lower() == "x-tag")
    assert ours["Content-Type"] == "application/json"

    assert Client().get("/t/kn/health/liveness").content == b"Alive"
    not_ready = Client().get("/t/kn/health/readiness")
    assert not_ready.status_code == 500, not_ready.content
    assert not_ready.content == b"Not yet"

    out = dispatch(api, "kn", {"n": 1})["output"]
    assert out["method"] == "POST" and out["path"] == "/" and json.loads(out["body"]) == \
        {"n": 1}


# --- Windmill (a script's main with typed parameters) --------------------------------------------

WINDMILL = b'''import datetime


def main(
    no_default: str,
    name="Nicolas Bourbaki",
    age: int = 42,
    ratio: float = 0.5,
    flag: bool = False,
    obj: dict = {"even": "dicts"},
    l: list = ["or", "lists!"],
    file_: bytes = bytes(0),
    when: datetime.date = None,
):
    return {"no_default": no_default, "name": name, "age": age, "ratio": ratio,
            "flag": flag, "obj": obj, "l": l, "file_": file_.decode(),
            "when": when.isoformat() if when else None, "types": [type(age).__name__,
                                                                    type(flag).__name__]}
'''


def test_windmill_arguments_come_from_the_event_typed_by_the_signature(user, worker, api):
    version = deploy(user, "wm", "windmill", "script.py", WINDMILL)
    assert version.handler == "script.main"
    out = dispatch(api, "wm", {"no_default": "x", "age": 7, "file_": "aGk=", "unknown": 1,
                               "when": "2026-12-04"})["output"]
    assert out == {"no_default": "x", "name": "Nicolas Bourbaki", "age": 7, "ratio": 0.5,
                   "flag": False, "obj": {"even": "dicts"}, "l": ["or", "lists!"],
                   "file_": "hi", "when": "2026-12-04", "types": ["int", "bool"]}
    # A webhook: query parameters (converted by the annotations) under the JSON body.
    answer = Client().post("/t/wm?age=9&flag=true&name=Query&ratio=2",
                           data=json.dumps({"no_default": "y", "name": "Body"}),
                           content_type="application/json")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
    got = answer.json()
    assert (got["age"], got["flag"], got["name"], got["ratio"]) == (9, True, "Body", 2.0)
    payload = base64.urlsafe_b64encode(json.dumps({"no_default": "z"}).encode()).decode()
    assert Client().get(f"/t/wm?payload={payload}").json()["no_default"] == "z"
    missing = Client().get("/t/wm")
    assert missing.status_code == 502
    assert execution_of(missing).error_type == "TypeError"
    assert "no_default" in execution_of(missing).error
