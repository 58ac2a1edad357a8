"""The `lambda` convention through the real webhook and dispatch paths with a real worker:
Lambda handlers written as for AWS, unchanged. The events are checked against an oracle we did
not write — Powertools for AWS Lambda's event classes parse them, and their keys are those of
the sample events Powertools tests with — and a function using Powertools' own Logger and REST
event handler (installed from the archive's requirements.txt) runs as it does on Lambda."""

import base64
import json

import pytest
from aws_lambda_powertools.utilities.data_classes import (
    APIGatewayProxyEvent,
    APIGatewayProxyEventV2,
)
from django.test import Client

from executions.models import Execution
from functions.selectors import version_wait
from functions.services import function_register
from tests.archives import make_zip
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

# The acceptance case: body parsed with json.loads, the query read, 201 with headers.
ORDERS = b'''import json


def lambda_handler(event, context):
    body = json.loads(event["body"]) if event["body"] else {}
    params = event["queryStringParameters"] or {}
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Request-Id": context.aws_request_id},
        "body": json.dumps({"q": params.get("q"), "body": body,
                            "request_id": context.aws_request_id}),
    }
'''
ECHO = b'''import json


def lambda_handler(event, context):
    return {"statusCode": 200, "body": json.dumps(event)}
'''
CONTEXT = b'''def lambda_handler(event, context):
    import os
    return {"event": event, "request_id": context.aws_request_id,
            "function_name": context.function_name, "version": context.function_version,
            "arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
            "log_group": context.log_group_name, "log_stream": context.log_stream_name,
            "remaining": context.get_remaining_time_in_millis(),
            "env_name": os.environ["AWS_LAMBDA_FUNCTION_NAME"]}
'''
# Payload format 2.0 infers an answer from any JSON value, and sends cookies apart.
V2_PLAIN = b'''def handler(event, context):
    return {"cookies": event.get("cookies"), "method": event["requestContext"]["http"]["method"],
            "path": event["rawPath"], "query": event.get("queryStringParameters")}
'''
V2_COOKIES = b'''def handler(event, context):
    return {"statusCode": 200, "cookies": ["a=1; Path=/", "b=2; Path=/"],
            "headers": {"content-type": "text/plain"}, "body": "with cookies"}
'''
MULTI = b'''import base64


def lambda_handler(event, context):
    if event["httpMethod"] == "PUT":
        data = base64.b64decode(event["body"]) if event["isBase64Encoded"] else b""
        return {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream"},
                "body": base64.b64encode(data[::-1]).decode(), "isBase64Encoded": True}
    return {"statusCode": 200, "headers": {"X-One": "1"},
            "multiValueHeaders": {"X-Tag": ["a", "b"]}, "body": "tagged"}
'''
MALFORMED = b'''def lambda_handler(event, context):
    return {"message": "no statusCode"}
'''
POWERTOOLS = '''from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver

logger = Logger(service="orders")
app = APIGatewayRestResolver()


@app.get("/orders/<order_id>")
def get_order(order_id):
    logger.info("reading an order")
    return {"order_id": order_id, "q": app.current_event.get_query_string_value("q")}


@logger.inject_lambda_context
def lambda_handler(event, context):
    return app.resolve(event, context)
'''


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


def lambda_trigger(user, name, source, filename="lambda_function.py", **fields):
    version = function_register(name=name, owner=user, filename=filename, data=source,
                                convention="lambda")
    trigger_create(name=name, function=version.function, user=user, kind="http", public=True,
                   **fields)
    return version


def execution_of(answer) -> Execution:
    return Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"])


@pytest.mark.parametrize("payload_format", ["1.0", "2.0"])
def test_a_lambda_handler_answers_get_and_post_with_its_status_headers_and_body(
        user, worker, payload_format):
    source = ORDERS
    if payload_format == "2.0":  # an HTTP API event leaves out a body or query it has none of
        source = ORDERS.replace(b'event["body"]', b'event.get("body")').replace(
            b'event["queryStringParameters"]', b'event.get("queryStringParameters")')
    version = lambda_trigger(user, "orders", source, payload_format_version=payload_format)
    assert version.handler == "lambda_function.lambda_handler"

    got = Client().get("/t/orders?q=1")
    assert got.status_code == 201, got.content
    assert got["Content-Type"] == "application/json"
    execution = execution_of(got)
    assert got.json() == {"q": "1", "body": {}, "request_id": str(execution.id)}
    assert got["X-Request-Id"] == str(execution.id)  # context.aws_request_id

    posted = Client().post("/t/orders?q=1", data=json.dumps({"sku": "A-1"}),
                           content_type="application/json")
    assert posted.status_code == 201, posted.content
    assert posted.json()["body"] == {"sku": "A-1"} and posted.json()["q"] == "1"


def test_our_rest_api_event_is_what_powertools_reads_and_has_the_sample_events_keys(user,
                                                                                      worker):
    lambda_trigger(user, "echo-v1", ECHO)
    answer = Client().post("/t/echo-v1/orders/42?q=1&q=2&empty=", data=b"\xff\x00binary",
                           content_type="application/octet-stream",
                           headers={"User-Agent": "probe/1", "X-Custom": "yes"})
    assert answer.status_code == 200, answer.content
    raw = json.loads(answer.content)
    event = APIGatewayProxyEvent(raw)
    assert event.http_method == "POST" and event.path == "/orders/42"
    assert event.resource == "/{proxy+}" and event.path_parameters == {"proxy": "orders/42"}
    assert event.query_string_parameters == {"q": "2", "empty": ""}  # the last value, as AWS
    assert event.multi_value_query_string_parameters == {"q": ["1", "2"], "empty": [""]}
    assert event.headers["x-custom"] == "yes" and event.multi_value_headers["x-custom"] == ["yes"]
    assert event.is_base64_encoded and base64.b64decode(event.body) == b"\xff\x00binary"
    assert event.request_context.request_id == str(execution_of(answer).id)
    assert event.request_context.identity.source_ip == "127.0.0.1"
    assert event.request_context.identity.user_agent == "probe/1"
    assert event.request_context.http_method == "POST"
    # The keys of Powertools' published sample (tests/events/apiGatewayProxyEvent.json).
    assert set(raw) == {"version", "resource", "path", "httpMethod", "headers",
                        "multiValueHeaders", "queryStringParameters",
                        "multiValueQueryStringParameters", "requestContext", "pathParameters",
                        "stageVariables", "body", "isBase64Encoded"}
    assert set(raw["requestContext"]) >= {
        "accountId", "apiId", "domainName", "domainPrefix", "extendedRequestId", "httpMethod",
        "identity", "path", "protocol", "requestId", "requestTime", "requestTimeEpoch",
        "resourceId", "resourcePath", "stage"}

    empty = json.loads(Client().get("/t/echo-v1").content)
    assert empty["body"] is None and empty["queryStringParameters"] is None
    assert empty["pathParameters"] is None and empty["resource"] == "/"


def test_our_http_api_event_is_what_powertools_reads(user, worker):
    lambda_trigger(user, "echo-v2", ECHO, payload_format_version="2.0")
    answer = Client().put("/t/echo-v2/a/b?x=1&x=2", data=json.dumps({"k": "v"}),
                          content_type="application/json", headers={"Cookie": "c1=1; c2=2"})
    assert answer.status_code == 200, answer.content
    raw = json.loads(answer.content)
    event = APIGatewayProxyEventV2(raw)
    assert event.version == "2.0" and event.route_key == "$default"
    assert event.request_context.http.method == "PUT" and event.raw_path == "/a/b"
    assert event.raw_query_string == "x=1&x=2"
    assert event.query_string_parameters == {"x": "1,2"}  # comma-joined, as HTTP APIs do
    assert event.cookies == ["c1=1", "c2=2"] and "cookie" not in event.headers
    assert event.json_body == {"k": "v"} and event.path_parameters == {"proxy": "a/b"}
    assert event.request_context.request_id == str(execution_of(answer).id)
    # The keys of Powertools' published sample (tests/events/apiGatewayProxyV2Event.json),
    # less the authorizer's and stage variables', which a call without them does not carry.
    assert set(raw) >= {"version", "routeKey", "rawPath", "rawQueryString", "cookies",
                        "headers", "queryStringParameters", "requestContext", "body",
                        "pathParameters", "isBase64Encoded"}
    assert set(raw["requestContext"]) >= {"accountId", "apiId", "domainName", "domainPrefix",
                                          "http", "requestId", "routeKey", "stage", "time",
                                          "timeEpoch"}


def test_payload_format_2_infers_a_json_answer_and_sends_cookies(user, worker, settings):
    lambda_trigger(user, "plain-v2", V2_PLAIN, filename="app.py", payload_format_version="2.0")
    answer = Client().get("/t/plain-v2/x?y=1", headers={"Cookie": "k=v"})
    assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
    assert answer.json() == {"cookies": ["k=v"], "method": "GET", "path": "/x",
                             "query": {"y": "1"}}

    lambda_trigger(user, "cookies-v2", V2_COOKIES, filename="app.py",
                   payload_format_version="2.0")
    settings.KUBEFUNCTION_WEBHOOK_ORIGIN = "http://hooks.testserver"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "hooks.testserver"]
    answer = Client().get("/t/cookies-v2", HTTP_HOST="hooks.testserver")
    assert answer.status_code == 200 and answer.content == b"with cookies"
    assert answer["Content-Type"] == "text/plain"
    assert {name: cookie.value for name, cookie in answer.cookies.items()} == \
        {"a": "1", "b": "2"}  # both Set-Cookie headers, on the webhook origin


def test_repeated_headers_and_a_binary_body_in_and_out(user, worker):
    lambda_trigger(user, "multi", MULTI)
    answer = Client().get("/t/multi")
    assert answer.status_code == 200 and answer.content == b"tagged"
    assert answer["X-Tag"] == "a, b" and answer["X-One"] == "1"
    data = bytes(range(256))
    flipped = Client().put("/t/multi", data=data, content_type="application/octet-stream")
    assert flipped.status_code == 200, flipped.content
    assert flipped.content == data[::-1]
    assert flipped["Content-Type"] == "application/octet-stream"


def test_a_malformed_rest_api_answer_is_a_502_as_api_gateway_gives(user, worker):
    lambda_trigger(user, "malformed", MALFORMED)
    answer = Client().get("/t/malformed")
    assert answer.status_code == 502
    assert answer.json()["error_type"] == "InvalidResponse"
    assert "Malformed Lambda proxy response" in answer.json()["error"]
    assert execution_of(answer).status == "failed"


def test_a_dispatch_gets_the_plain_event_and_a_lambda_context(user, worker, api):
    version = lambda_trigger(user, "ctx", CONTEXT)
    answer = api.post("/api/triggers/ctx/dispatch/?wait=30", {"payload": {"n": 1}},
                      format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    out = body["output"]
    assert out["event"] == {"n": 1}
    assert out["request_id"] == body["id"] and out["function_name"] == "ctx"
    assert out["version"] == "1" and out["memory"] == str(version.function.memory_mb)
    assert out["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:ctx"
    assert out["log_group"] == "/aws/lambda/ctx" and out["log_stream"].endswith(body["id"])
    assert 0 < out["remaining"] <= version.function.timeout_seconds * 1000
    assert out["env_name"] == "ctx"


def test_powertools_logger_and_rest_resolver_run_unchanged(user, worker):
    source = make_zip({"lambda_function.py": POWERTOOLS,
                       "requirements.txt": "aws-lambda-powertools==3.37.0\n"})
    version = function_register(name="pt-orders", owner=user, filename="code.zip",
                                data=source, convention="lambda")
    trigger_create(name="pt-orders", function=version.function, user=user, kind="http",
                   public=True)
    version = version_wait(version=version, timeout=180)
    assert version.status == "ready", version.build_log
    answer = Client().get("/t/pt-orders/orders/7?q=x")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"order_id": "7", "q": "x"}
    execution = execution_of(answer)
    log = json.loads(next(line for line in execution.logs.splitlines() if "reading" in line))
    assert log["message"] == "reading an order" and log["service"] == "orders"
    assert log["function_request_id"] == str(execution.id)  # from our context
    assert log["function_name"] == "pt-orders" and log["function_memory_size"] == \
        str(version.function.memory_mb)
    assert Client().get("/t/pt-orders/nowhere").status_code == 404  # the resolver's own 404
