"""AWS Lambda: `handler(event, context)` with Lambda's context object; behind a webhook, API
Gateway's proxy events (payload format 1.0, REST API, or 2.0, HTTP API) and proxy answers.

Mapping (docs/porting.md, "AWS Lambda"): the trigger's URL `/t/<name>` is the API's base URL
(as a custom domain maps an API, stage `$default`), so `path` / `rawPath` is the path after it,
`pathParameters` is `{"proxy": "<that path>"}` (a `/{proxy+}` resource) or null, and
`requestContext.requestId` is the execution id, like `context.aws_request_id`. The shapes follow
AWS's documentation and the sample events Powertools for AWS Lambda tests with.

Answers, as API Gateway reads them: format 1.0 wants `{"statusCode", "headers",
"multiValueHeaders", "body" (a string), "isBase64Encoded"}` and answers anything else with 502
("Malformed Lambda proxy response"); format 2.0 takes the same (plus `cookies`) and turns any
other JSON value into 200 `application/json` with that value as the body.
"""

from __future__ import annotations

import base64
import json
import os
import time

from .base import HttpRequest, InvalidResponse, http_answer, settle

ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or \
        DEFAULT_REGION


def _clf_time(epoch: float) -> str:
    """`04/Mar/2020:19:15:17 +0000`, as requestContext.requestTime reads."""
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch))


# --- the context ----------------------------------------------------------------------------------

class CognitoIdentity:
    cognito_identity_id = None
    cognito_identity_pool_id = None


class LambdaContext:
    """The attributes and method of the Lambda Python runtime's context (awslambdaric)."""

    def __init__(self, context) -> None:
        self._context = context
        name = context.function_name
        self.function_name = name
        self.function_version = str(context.function_version)
        self.invoked_function_arn = f"arn:aws:lambda:{_region()}:{ACCOUNT}:function:{name}"
        self.memory_limit_in_mb = str(context.memory_mb or 128)
        self.aws_request_id = context.execution_id
        self.log_group_name = f"/aws/lambda/{name}"
        day = time.strftime("%Y/%m/%d", time.gmtime())
        self.log_stream_name = f"{day}/[{self.function_version}]{context.execution_id}"
        self.identity = CognitoIdentity()
        self.client_context = None
        self.tenant_id = None

    def get_remaining_time_in_millis(self) -> int:
        return self._context.remaining_time_ms()

    def __repr__(self) -> str:
        return (f"LambdaContext([aws_request_id={self.aws_request_id},"
                f"log_group_name={self.log_group_name},log_stream_name={self.log_stream_name},"
                f"function_name={self.function_name},memory_limit_in_mb="
                f"{self.memory_limit_in_mb},function_version={self.function_version},"
                f"invoked_function_arn={self.invoked_function_arn}])")


def _lambda_environment(context: LambdaContext, handler: str) -> None:
    """The Lambda runtime's environment variables, where the function did not set its own."""
    for key, value in (
            ("AWS_LAMBDA_FUNCTION_NAME", context.function_name),
            ("AWS_LAMBDA_FUNCTION_VERSION", context.function_version),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", context.memory_limit_in_mb),
            ("AWS_LAMBDA_LOG_GROUP_NAME", context.log_group_name),
            ("AWS_LAMBDA_LOG_STREAM_NAME", context.log_stream_name),
            ("AWS_REGION", _region()), ("AWS_DEFAULT_REGION", _region()),
            ("LAMBDA_TASK_ROOT", os.getcwd()), ("_HANDLER", handler)):
        os.environ.setdefault(key, value)


# --- the events -----------------------------------------------------------------------------------

def _body(request: HttpRequest) -> tuple[str | None, bool]:
    if not request.body:
        return None, False
    return request.body_text_or_base64()


def rest_event(request: HttpRequest, request_id: str) -> dict:
    """API Gateway REST API proxy event (payload format 1.0)."""
    proxy = request.path.lstrip("/")
    resource = "/{proxy+}" if proxy else "/"
    headers = request.header_dict()
    body, encoded = _body(request)
    query = request.query_dict()
    multi_query = request.query_lists()
    return {
        "version": "1.0",
        "resource": resource,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers or None,
        "multiValueHeaders": request.header_lists() or None,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "requestContext": {
            "accountId": ACCOUNT, "apiId": request.trigger, "authorizer": None,
            "domainName": request.host.partition(":")[0], "domainPrefix": request.trigger,
            "extendedRequestId": request_id, "httpMethod": request.method,
            "identity": {
                "accessKey": None, "accountId": None, "caller": None,
                "cognitoAuthenticationProvider": None, "cognitoAuthenticationType": None,
                "cognitoIdentityId": None, "cognitoIdentityPoolId": None,
                "principalOrgId": None, "sourceIp": request.source_ip, "user": None,
                "userAgent": headers.get("user-agent"), "userArn": None, "clientCert": None,
            },
            "path": request.path, "protocol": "HTTP/1.1", "requestId": request_id,
            "requestTime": _clf_time(request.time),
            "requestTimeEpoch": int(request.time * 1000), "resourceId": None,
            "resourcePath": resource, "stage": "$default",
        },
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "body": body,
        "isBase64Encoded": encoded,
    }


def http_api_event(request: HttpRequest, request_id: str) -> dict:
    """API Gateway HTTP API proxy event (payload format 2.0; also Lambda function URLs')."""
    proxy = request.path.lstrip("/")
    headers = request.header_dict()
    cookie = headers.pop("cookie", "")
    body, encoded = _body(request)
    query = {key: ",".join(values) for key, values in request.query_lists().items()}
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": request.query_string,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT, "apiId": request.trigger,
            "domainName": request.host.partition(":")[0], "domainPrefix": request.trigger,
            "http": {"method": request.method, "path": request.path, "protocol": "HTTP/1.1",
                     "sourceIp": request.source_ip, "userAgent": headers.get("user-agent", "")},
            "requestId": request_id, "routeKey": "$default", "stage": "$default",
            "time": _clf_time(request.time), "timeEpoch": int(request.time * 1000),
        },
        "isBase64Encoded": encoded,
    }
    # Absent, not empty, when there are none (as API Gateway sends them).
    if cookie:
        event["cookies"] = [part.strip() for part in cookie.split(";") if part.strip()]
    if query:
        event["queryStringParameters"] = query
    if proxy:
        event["pathParameters"] = {"proxy": proxy}
    if body is not None:
        event["body"] = body
    return event


# --- the answers ----------------------------------------------------------------------------------

MALFORMED = "Malformed Lambda proxy response"


def _status(value: object) -> int:
    if isinstance(value, str) and value.isdigit():  # API Gateway takes "200" too
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidResponse(f"{MALFORMED}: statusCode must be an integer, not {value!r}")
    return value


def proxy_answer(value: object, version: str) -> dict:
    """The HTTP answer API Gateway makes of the function's return value."""
    if not (isinstance(value, dict) and "statusCode" in value):
        if version == "2.0":  # inferred: the value itself is the JSON body
            return http_answer(200, body=json.dumps(value), content_type="application/json")
        raise InvalidResponse(f"{MALFORMED}: a REST API (payload format 1.0) proxy answer is "
                              "an object with a statusCode")
    status = _status(value["statusCode"])
    pairs: list = []
    headers = value.get("headers") or {}
    multi = value.get("multiValueHeaders") or {}
    if not isinstance(headers, dict) or not isinstance(multi, dict):
        raise InvalidResponse(f"{MALFORMED}: headers and multiValueHeaders must be objects")
    for name, one in headers.items():
        pairs.append([name, one])
    for name, values in multi.items():
        if not isinstance(values, list):
            raise InvalidResponse(f"{MALFORMED}: multiValueHeaders.{name} must be a list")
        given = [v for n, v in pairs if n.lower() == str(name).lower()]
        pairs.extend([name, one] for one in values if one not in given)
    if version == "2.0":
        cookies = value.get("cookies") or []
        if not isinstance(cookies, list):
            raise InvalidResponse(f"{MALFORMED}: cookies must be a list")
        pairs.extend(["Set-Cookie", cookie] for cookie in cookies)
    body = value.get("body")
    if body is not None and not isinstance(body, str):
        raise InvalidResponse(f"{MALFORMED}: body must be a string (json.dumps it), not "
                              f"{type(body).__name__}")
    data: bytes | str | None = body
    if body is not None and value.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise InvalidResponse(f"{MALFORMED}: isBase64Encoded but the body is not base64: "
                                  f"{exc}") from None
    return http_answer(status, pairs, data, content_type="application/json")


# --- the call -------------------------------------------------------------------------------------

class Lambda:
    def __init__(self, func, handler: str) -> None:
        self.func = func
        self.handler = handler
        self.environment_set = False

    def call(self, event: object, context, http: bool) -> object:
        lambda_context = LambdaContext(context)
        if not self.environment_set:
            _lambda_environment(lambda_context, self.handler)
            self.environment_set = True
        if not http:
            return settle(self.func(event, lambda_context))
        request = HttpRequest(event)
        version = str(request.options.get("payloadFormatVersion") or "1.0")
        build = http_api_event if version == "2.0" else rest_event
        value = settle(self.func(build(request, context.execution_id), lambda_context))
        return proxy_answer(value, version)


def adapter(name: str, handler: str, load) -> Lambda:
    return Lambda(load(handler), handler)
