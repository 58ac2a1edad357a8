"""The `azure` and `nuclio` conventions through the real webhook and dispatch paths with a real
worker: functions written as for Azure Functions (v1 `main(req)` in `<FunctionName>/__init__.py`,
v2 `function_app.py` routes) and for Nuclio (`handler(context, event)`), unchanged.

Oracles we did not write: the azure function receives the real `azure.functions.HttpRequest` and
`Context` types and reports what those types give (`get_json()`, `params`, `route_params`,
`headers`), compared with a `func.HttpRequest` built here the way the Functions host builds it;
the nuclio function's event is compared with a `nuclio_sdk.Event` deserialized by nuclio-sdk-py's
own deserializer from what nuclio's HTTP trigger sends, and its answers with what nuclio-sdk-py's
`Response.from_entrypoint_output` encodes when the same source runs here with nuclio_sdk's own
Context and Event.
"""

import base64
import json
import logging
import types

import azure.functions as func
import nuclio_sdk
import nuclio_sdk.json_encoder
import pytest
from django.test import Client

from executions.models import Execution
from functions.selectors import version_wait
from functions.services import function_register
from tests.archives import make_zip
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

# --- Azure ---------------------------------------------------------------------------------------

AZURE_V1 = '''import base64
import json
import logging

import azure.functions as func


def main(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    logging.info("Python HTTP trigger function processed a request.")
    action = req.params.get("action")
    if action == "describe":
        try:
            body = req.get_json()
        except ValueError:
            body = None
        return func.HttpResponse(json.dumps({
            "types": [isinstance(req, func.HttpRequest), isinstance(context, func.Context)],
            "method": req.method, "url": req.url, "params": dict(req.params),
            "route_params": dict(req.route_params), "headers": dict(req.headers),
            "json": body, "body": base64.b64encode(req.get_body()).decode(),
            "invocation_id": context.invocation_id, "function_name": context.function_name,
            "function_directory": context.function_directory,
            "trace_parent": context.trace_context.trace_parent,
            "retry_count": context.retry_context.retry_count,
        }), mimetype="application/json")
    if action == "text":
        return "plain text"
    if action == "nothing":
        return None
    if action == "dict":
        return {"not": "an HttpResponse"}
    if action == "fail":
        raise ValueError("the order service is down")
    if action == "reverse":
        return func.HttpResponse(req.get_body()[::-1], mimetype="application/octet-stream")
    if action == "cookies":
        response = func.HttpResponse("created", status_code=201,
                                     headers={"X-Order": "7", "X-Tag": "a"})
        response.headers.add("X-Tag", "b")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    name = req.params.get("name")
    if not name:
        try:
            req_body = req.get_json()
        except ValueError:
            pass
        else:
            name = req_body.get("name")
    if name:
        return func.HttpResponse(f"Hello, {name}. This HTTP triggered function executed "
                                 "successfully.")
    return func.HttpResponse(
        "This HTTP triggered function executed successfully. Pass a name in the query string "
        "or in the request body for a personalized response.", status_code=200)
'''
AZURE_V2 = '''import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="orders/{order_id:int}", methods=["GET"])
async def get_order(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"order_id": req.route_params["order_id"],
                                         "q": req.params.get("q")}),
                             mimetype="application/json")


@app.route(route="hello", methods=["POST"])
def hello(req: func.HttpRequest, context: func.Context) -> str:
    return f"Hello, {req.get_json()['name']} from {context.function_name}"
'''


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


def execution_of(answer) -> Execution:
    return Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"])


@pytest.fixture
def azure_functions(user, worker):
    """One archive, one build for both models: v1 in HttpOrders/, v2 in function_app.py."""
    source = make_zip({"HttpOrders/__init__.py": AZURE_V1,
                       "HttpOrders/function.json": json.dumps({"bindings": [
                           {"authLevel": "anonymous", "type": "httpTrigger", "direction": "in",
                            "name": "req", "methods": ["get", "post"]},
                           {"type": "http", "direction": "out", "name": "$return"}]}),
                       "function_app.py": AZURE_V2, "host.json": '{"version": "2.0"}'})
    versions = {}
    for name, handler in (("az-orders", "HttpOrders.main"), ("az-app", "function_app.app")):
        version = function_register(name=name, owner=user, filename="app.zip", data=source,
                                    handler=handler, convention="azure")
        trigger_create(name=name, function=version.function, user=user, kind="http",
                       public=True)
        versions[name] = version
    for name, version in versions.items():
        version = version_wait(version=version, timeout=180)
        assert version.status == "ready", version.build_log
        assert "azure-functions" in version.function.versions.get(
            pk=version.pk).requirements  # implied by the convention
        versions[name] = version
    return versions


def test_azure_v1_the_template_function_answers_get_and_post(azure_functions):
    got = Client().get("/t/az-orders?name=Ada")
    assert got.status_code == 200, got.content
    assert got.content == b"Hello, Ada. This HTTP triggered function executed successfully."
    assert got["Content-Type"] == "text/plain; charset=utf-8"  # mimetype and charset
    assert "Python HTTP trigger function processed a request." in execution_of(got).logs

    posted = Client().post("/t/az-orders", data=json.dumps({"name": "Bo"}),
                           content_type="application/json")
    assert posted.status_code == 200 and posted.content.startswith(b"Hello, Bo.")
    assert Client().get("/t/az-orders").content.startswith(b"This HTTP triggered")


def test_azure_v1_request_and_context_are_azure_functions_own_types(azure_functions):
    answer = Client().post(
        "/t/az-orders/orders/42?action=describe&tag=a&tag=b", data=json.dumps({"sku": "A-1"}),
        content_type="application/json",
        headers={"X-Custom": "yes", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    assert answer.status_code == 200, answer.content
    got = answer.json()
    assert got["types"] == [True, True]
    execution = execution_of(answer)
    # The oracle: the request the Functions host would build, in azure.functions' own type.
    body = json.dumps({"sku": "A-1"}).encode()
    expected = func.HttpRequest(
        "POST", "http://testserver/t/az-orders/orders/42?action=describe&tag=a&tag=b",
        headers={"Content-Type": "application/json", "X-Custom": "yes",
                 "Content-Length": str(len(body))},
        params={"action": "describe", "tag": "a,b"}, route_params={"path": "orders/42"},
        body=body)
    assert got["method"] == expected.method and got["url"] == expected.url
    assert got["params"] == dict(expected.params)  # a repeated parameter joined with ","
    assert got["route_params"] == dict(expected.route_params)
    assert got["json"] == expected.get_json() == {"sku": "A-1"}
    assert base64.b64decode(got["body"]) == expected.get_body()
    for name, value in expected.headers.items():  # lower-case names, as the type keeps them
        assert got["headers"][name] == value
    assert got["invocation_id"] == str(execution.id)
    assert got["function_name"] == "HttpOrders"  # the function's folder, as on Azure
    assert got["function_directory"].endswith("/HttpOrders")
    assert got["trace_parent"] == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    assert got["retry_count"] == 0

    bare = Client().get("/t/az-orders?action=describe").json()
    assert bare["route_params"] == {} and bare["json"] is None and bare["body"] == ""


def test_azure_v1_answers_status_headers_cookies_binary_and_refusals(azure_functions,
                                                                   settings):
    settings.KUBEFUNCTION_WEBHOOK_ORIGIN = "http://hooks.testserver"  # cookies: its own origin
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "hooks.testserver"]
    made = Client().get("/t/az-orders?action=cookies", HTTP_HOST="hooks.testserver")
    assert made.status_code == 201 and made.content == b"created"
    assert made["X-Order"] == "7"
    assert made["X-Tag"] == "b"  # the worker's converter keeps one value per name: the last
    assert {n: c.value for n, c in made.cookies.items()} == {"a": "1", "b": "2"}

    data = bytes(range(256))
    flipped = Client().post("/t/az-orders?action=reverse", data=data,
                            content_type="application/octet-stream")
    assert flipped.status_code == 200 and flipped.content == data[::-1]
    assert flipped["Content-Type"] == "application/octet-stream"

    text = Client().get("/t/az-orders?action=text")
    assert text.status_code == 200 and text.content == b"plain text"
    assert text["Content-Type"] == "text/plain; charset=utf-8"
    nothing = Client().get("/t/az-orders?action=nothing")
    assert nothing.status_code == 204 and nothing.content == b""  # the HTTP trigger's default

    refused = Client().get("/t/az-orders?action=dict")
    assert refused.status_code == 502
    assert refused.json()["error_type"] == "InvalidResponse"
    assert 'Python type "dict"' in refused.json()["error"]
    failed = Client().get("/t/az-orders?action=fail")
    assert failed.status_code == 502 and failed.json()["error_type"] == "ValueError"
    assert execution_of(failed).status == "failed"
    assert "the order service is down" in execution_of(failed).error


def test_azure_dispatch_is_a_post_with_the_payload_and_v2_routes(azure_functions, api):
    out = api.post("/api/triggers/az-orders/dispatch/?wait=30", {"payload": {"name": "Cy"}},
                   format="json")
    assert out.status_code == 200, out.content
    assert out.json()["output"].startswith("Hello, Cy.")

    # v2: the route template picks the function and fills route_params; async works.
    order = Client().get("/t/az-app/orders/42?q=x")
    assert order.status_code == 200, order.content
    assert order.json() == {"order_id": "42", "q": "x"}
    assert order["Content-Type"] == "application/json"
    assert Client().get("/t/az-app/orders/abc").status_code == 404  # {order_id:int}
    assert Client().post("/t/az-app/orders/42").status_code == 404  # methods=["GET"]
    hello = Client().post("/t/az-app/hello", data=json.dumps({"name": "Di"}),
                          content_type="application/json")
    assert hello.status_code == 200 and hello.content == b"Hello, Di from hello"
    # A dispatch (POST /) to an app of two functions, none routed at "/", fails.
    failed = api.post("/api/triggers/az-app/dispatch/?wait=30", {"payload": {}}, format="json")
    assert failed.json()["status"] == "failed"
    assert failed.json()["error_type"] == "InvalidResponse"


# --- Nuclio --------------------------------------------------------------------------------------

NUCLIO = '''import base64


def init_context(context):
    context.user_data.greeting = "hello"
    context.logger.info_with("initialized", greeting=context.user_data.greeting)


def handler(context, event):
    context.logger.info_with("got event", method=event.method, path=event.path)
    mode = event.fields.get("mode") or event.get_header("X-Mode")
    if mode == "describe":
        body = event.body
        if isinstance(body, bytes):
            body = {"base64": base64.b64encode(body).decode()}
        return {
            "body": body, "content_type": event.content_type, "headers": event.headers,
            "fields": event.fields, "method": event.method, "path": event.path,
            "size": event.size, "id": event.id, "url": event.url,
            "timestamp": str(event.timestamp),
            "trigger": [event.trigger.kind, event.trigger.name],
            "greeting": context.user_data.greeting, "worker_id": context.worker_id,
        }
    if mode == "text":
        return "a string"
    if mode == "status":
        return 201, "a string after status"
    if mode == "status_dict":
        return 202, {"a": "dict after status"}
    if mode == "list":
        return [{"a": 1}, {"b": 2}]
    if mode == "response":
        return context.Response(body="response body", content_type="text/csv", status_code=203,
                                headers={"X-One": "1", "X-Count": 5, "X-Skipped": ["a", "b"]})
    if mode == "response_dict":
        return context.Response(body={"k": "v"}, status_code=201)
    if mode == "reverse":
        return event.body[::-1]
    if mode == "fail":
        raise RuntimeError("some error")
    return {"echo": event.body}
'''
MODES = ["text", "status", "status_dict", "list", "response", "response_dict"]


@pytest.fixture
def nuclio_function(user, worker):
    version = function_register(name="nu", owner=user, filename="main.py",
                                data=NUCLIO.encode(), convention="nuclio")
    assert version.handler == "main.handler"
    trigger_create(name="nu", function=version.function, user=user, kind="http", public=True)
    return version


def sdk_run(mode: str, body: bytes = b"", content_type: str = "") -> dict:
    """Run the same source here with nuclio_sdk's own Context, Event and response encoding;
    the HTTP answer nuclio's trigger writes of it."""
    module = types.ModuleType("nuclio_main")
    exec(compile(NUCLIO, "main.py", "exec"), module.__dict__)  # noqa: S102 - our test source
    logger = nuclio_sdk.Logger(logging.CRITICAL)
    context = nuclio_sdk.Context(logger, nuclio_sdk.Platform("local"), worker_id=0)
    module.init_context(context)
    event = sdk_event(body, content_type, {"mode": mode}, {}, method="POST", path="/")
    output = module.handler(context, event)
    response = nuclio_sdk.Response.from_entrypoint_output(
        nuclio_sdk.json_encoder.Encoder().encode, output)
    data = base64.b64decode(response["body"]) if response["body_encoding"] == "base64" else \
        response["body"].encode()
    headers = {k: str(v) for k, v in response["headers"].items() if isinstance(v, (str, int))}
    return {"status": response["status_code"] or 200, "content_type": response["content_type"],
            "body": data, "headers": headers}


def sdk_event(body: bytes, content_type: str, fields: dict, headers: dict, **more):
    """A nuclio_sdk.Event as the wrapper deserializes it from what the HTTP trigger sends
    (pkg/processor/runtime/rpc/encoder: the event as a map, the body as bytes)."""
    sent = {"body": body, "content_type": content_type, "content-type": content_type,
            "trigger": {"kind": "http", "name": more.get("trigger", "nu")}, "fields": fields,
            "headers": headers, "id": more.get("id", "id"), "method": more["method"],
            "path": more["path"], "size": len(body), "timestamp": more.get("timestamp", 0),
            "url": more.get("url", ""), "shard_id": 0, "num_shards": 0, "type": "",
            "type_version": "", "version": "", "offset": 0, "topic": ""}
    return nuclio_sdk.Event.deserialize(sent, kind=nuclio_sdk.EventDeserializerKinds.msgpack)


def test_nuclio_event_is_what_nuclio_sdk_deserializes(nuclio_function):
    answer = Client().post("/t/nu/orders/42?mode=describe&q=1&q=2",
                           data=json.dumps({"sku": "A-1"}), content_type="application/json",
                           headers={"X-Custom-Id": "yes", "X-Dup": "one"})
    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"] == "application/json"
    got = answer.json()
    execution = execution_of(answer)
    expected = sdk_event(json.dumps({"sku": "A-1"}).encode(), "application/json",
                         {"mode": "describe", "q": "2"}, got["headers"], method="POST",
                         path="/orders/42", id=str(execution.id))
    assert got["body"] == expected.body == {"sku": "A-1"}  # JSON decoded for application/json
    assert got["content_type"] == expected.content_type
    assert got["fields"] == expected.fields  # the last value of a repeated parameter
    assert got["method"] == expected.method and got["path"] == expected.path
    assert got["size"] == expected.size and got["id"] == expected.id
    assert got["trigger"] == [expected.trigger.kind, expected.trigger.name]
    # fasthttp's canonical header names
    assert got["headers"]["X-Custom-Id"] == "yes" and got["headers"]["Content-Type"] == \
        "application/json"
    assert got["url"] == "http://testserver/t/nu/orders/42?mode=describe&q=1&q=2"
    assert got["greeting"] == "hello" and got["worker_id"] == 0  # init_context ran
    logs = [json.loads(line) for line in execution.logs.splitlines() if line.startswith("{")]
    assert {"datetime", "level", "message", "with"} <= set(logs[-1])
    assert logs[-1]["message"] == "got event" and logs[-1]["level"] == "info"
    assert logs[-1]["with"] == {"method": "POST", "path": "/orders/42"}

    data = b"\xff\x00binary"
    raw = Client().put("/t/nu?mode=describe", data=data, content_type="application/octet-stream")
    got = raw.json()
    expected = sdk_event(data, "application/octet-stream", {"mode": "describe"}, {},
                         method="PUT", path="/")
    assert isinstance(expected.body, bytes)
    assert base64.b64decode(got["body"]["base64"]) == expected.body  # bytes otherwise
    assert got["path"] == "/" and got["method"] == "PUT"
    assert "initialized" not in execution_of(raw).logs  # init_context once, while warm


@pytest.mark.parametrize("mode", MODES)
def test_nuclio_answers_are_encoded_as_nuclio_sdk_encodes_them(nuclio_function, mode):
    expected = sdk_run(mode)
    answer = Client().post(f"/t/nu?mode={mode}")
    assert answer.status_code == expected["status"], answer.content
    assert answer.content == expected["body"]
    assert answer["Content-Type"] == expected["content_type"]
    for name, value in expected["headers"].items():
        assert answer[name] == value
    if mode == "response":
        assert answer["X-Count"] == "5" and "X-Skipped" not in answer  # lists are dropped


def test_nuclio_binary_dispatch_and_a_raised_error(nuclio_function, api):
    data = bytes(range(256))
    flipped = Client().post("/t/nu?mode=reverse", data=data,
                            content_type="application/octet-stream")
    assert flipped.status_code == 200 and flipped.content == data[::-1]

    out = api.post("/api/triggers/nu/dispatch/?wait=30", {"payload": {"n": 1}}, format="json")
    assert out.status_code == 200, out.content
    assert out.json()["output"] == {"echo": {"n": 1}}  # event.body is the payload

    failed = Client().get("/t/nu?mode=fail")
    assert failed.status_code == 502 and failed.json()["error_type"] == "RuntimeError"
    assert execution_of(failed).status == "failed"
