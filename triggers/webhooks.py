"""HTTP triggers: `POST /t/<name>` runs the trigger's function with the request as its event.

The contract (docs/triggers.md):

- 404 for an unknown name or a trigger that is not an HTTP trigger; 401 for a missing or wrong
  `X-KubeFunction-Token` (unless the trigger is public); 409 when the trigger is disabled or its
  function has no ready version; 413 for a body over KUBEFUNCTION_MAX_PAYLOAD_BYTES.
- The event is the JSON body; a body that is not JSON becomes an envelope with the raw body,
  the headers (minus the token), the query, the method and the path; an empty body sends the
  trigger's default payload.
- Synchronous by default: 200 with the output (or the status, headers and body of a Lambda-style
  `{"statusCode": ...}` answer), 502 when the function fails or times out, 504 when it outlives
  the wait (it goes on; its result stays at the result URL). `Prefer: respond-async` or
  `?async=1`: 202 at once, an ordinary asynchronous execution (retries apply).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse

from executions.models import Execution, ExecutionStatus
from executions.services import USE_DEFAULT, execution_dispatch, execution_wait
from kubefunction.errors import (
    InvalidInput,
    KubeFunctionError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from kubefunction.throttles import dispatch_wait, user_ident

from .models import Trigger, TriggerKind
from .services import token_matches

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-KubeFunction-Token"
TASK_ID_HEADER = "X-KubeFunction-Task-Id"
# Seconds beyond the function's own timeout a synchronous call waits (queueing, cold start),
# so a function that times out is normally answered with its 502, not a 504.
WAIT_MARGIN_SECONDS = 10
LENIENT_CONTENT_TYPES = ("", "application/x-www-form-urlencoded")  # what `curl -d` sends
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length"}


class Unauthorized(KubeFunctionError):
    status_code = 401


@dataclass
class WebhookAnswer:
    """What the view sends back."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_answer(status: int, data, task_id: str = "", **headers: str) -> WebhookAnswer:
    if task_id:
        headers[TASK_ID_HEADER] = task_id
    return WebhookAnswer(status, json.dumps(data, ensure_ascii=False).encode(),
                         headers=headers)


def _error_answer(exc: KubeFunctionError) -> WebhookAnswer:
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = TOKEN_HEADER
    retry_after = getattr(exc, "retry_after", None)  # a rate limit says when to come back
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    return _json_answer(exc.status_code, exc.as_dict(), **headers)


# --- Authentication ----------------------------------------------------------------------------

def webhook_trigger(*, name: str, token: str | None) -> Trigger:
    """The enabled HTTP trigger `name` that `token` opens (any token for a public trigger).

    NotFound (404) for no such HTTP trigger, Unauthorized (401) for a missing or wrong token;
    a disabled trigger is refused later by the dispatch (409).
    """
    trigger = Trigger.objects.select_related("function__active_version").filter(
        name=name).first()
    if trigger is None or trigger.kind != TriggerKind.HTTP:
        raise NotFound(f"no HTTP trigger named '{name}'.")
    if trigger.public:
        return trigger
    if not token:
        raise Unauthorized(f"send the trigger's token in the {TOKEN_HEADER} header.")
    if not token_matches(trigger, token):
        raise Unauthorized(f"the {TOKEN_HEADER} header does not match this trigger's token.")
    return trigger


# --- The event ---------------------------------------------------------------------------------

def _envelope(request: HttpRequest, body: bytes) -> dict:
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    headers = {key.lower(): value for key, value in request.headers.items()
               if key.lower() != TOKEN_HEADER.lower()}
    query = {key: values[0] if len(values) == 1 else values
             for key, values in request.GET.lists()}
    return {"body": text, "isBase64Encoded": encoded, "headers": headers, "query": query,
            "method": request.method, "path": request.path}


def webhook_event(request: HttpRequest, body: bytes):
    """The event a request sends: its JSON body; the envelope for any other body; the trigger's
    default payload (USE_DEFAULT) for an empty one. A body declared JSON must parse."""
    if not body.strip():
        return USE_DEFAULT
    content_type = (request.content_type or "").lower()
    declared_json = content_type == "application/json" or content_type.endswith("+json")
    if declared_json or content_type in LENIENT_CONTENT_TYPES:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            if declared_json:
                raise InvalidInput(f"the body is declared JSON but is not: {exc}",
                                   field="body") from exc
    return _envelope(request, body)


# --- Options -----------------------------------------------------------------------------------

def _prefer(request: HttpRequest) -> dict[str, str]:
    """RFC 7240 preferences, e.g. `Prefer: respond-async, wait=5` → {respond-async: '', wait: 5}."""
    prefs = {}
    for part in request.headers.get("Prefer", "").replace(";", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key:
            prefs[key.lower()] = value.strip().strip('"')
    return prefs


def wants_async(request: HttpRequest) -> bool:
    """`Prefer: respond-async` or `?async=1` (also true/yes)."""
    flag = request.GET.get("async", "").lower() in ("1", "true", "yes")
    return flag or "respond-async" in _prefer(request)


def wait_seconds(request: HttpRequest, trigger: Trigger) -> float:
    """How long a synchronous call waits: KUBEFUNCTION_HTTP_WAIT_SECONDS, at most the
    function's timeout plus a margin, lowered by `Prefer: wait=N`."""
    wait = min(float(settings.KUBEFUNCTION_HTTP_WAIT_SECONDS),
               trigger.function.timeout_seconds + WAIT_MARGIN_SECONDS)
    asked = _prefer(request).get("wait")
    if asked:
        try:
            wait = min(wait, max(0.0, float(asked)))
        except ValueError:
            raise InvalidInput("Prefer: wait=N takes a number of seconds.", field="wait") from None
    return wait


# --- The answer --------------------------------------------------------------------------------

class _BadResponse(ValueError):
    pass


def _header_value(name, value) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in " :\r\n\t"):
        raise _BadResponse(f"header name {name!r} is not valid")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, str | int | float):
        raise _BadResponse(f"header {name} must be a string or a number")
    text = str(value)
    if "\r" in text or "\n" in text:
        raise _BadResponse(f"header {name} holds a line break")
    return text


def _proxy_answer(output: dict, task_id: str) -> WebhookAnswer:
    """The status, headers and body a Lambda-style handler answer asks for."""
    status = output["statusCode"]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise _BadResponse("statusCode must be an integer between 100 and 599")
    raw_headers = output.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise _BadResponse("headers must be an object")
    headers = {name: _header_value(name, value) for name, value in raw_headers.items()
               if str(name).lower() not in HOP_BY_HOP}
    content_type = next((headers.pop(k) for k in list(headers) if k.lower() == "content-type"),
                        None)
    body = output.get("body")
    if body is None:
        data = b""
    elif isinstance(body, str) and output.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _BadResponse(f"isBase64Encoded is set but body is not base64: {exc}") from exc
        content_type = content_type or "application/octet-stream"
    elif isinstance(body, str):
        data = body.encode()
        content_type = content_type or "text/plain; charset=utf-8"
    else:
        data = json.dumps(body, ensure_ascii=False).encode()
        content_type = content_type or "application/json"
    headers[TASK_ID_HEADER] = task_id
    return WebhookAnswer(status, data, content_type or "text/plain; charset=utf-8", headers)


def _result_url(request: HttpRequest, execution: Execution) -> str:
    return request.build_absolute_uri(
        reverse("execution-detail", kwargs={"task_id": execution.task_id}))


def _finished_answer(request: HttpRequest, execution: Execution) -> WebhookAnswer:
    task_id = execution.task_id
    if execution.status != ExecutionStatus.SUCCEEDED:
        return _json_answer(502, {
            "task_id": task_id, "status": execution.status, "error_type": execution.error_type,
            "error": execution.error, "result_url": _result_url(request, execution)}, task_id)
    output = execution.output
    if isinstance(output, dict) and "statusCode" in output:
        try:
            return _proxy_answer(output, task_id)
        except _BadResponse as exc:
            return _json_answer(502, {
                "task_id": task_id, "status": execution.status,
                "error_type": "InvalidResponse", "error": f"the function's answer: {exc}",
                "result_url": _result_url(request, execution)}, task_id)
    answer = _json_answer(200, output, task_id)
    if execution.output_truncated:
        answer.headers["X-KubeFunction-Output-Truncated"] = "true"
    return answer


def webhook_call(*, name: str, request: HttpRequest) -> WebhookAnswer:
    """Authenticate, build the event, dispatch, and (synchronous calls) wait for the outcome."""
    try:
        trigger = webhook_trigger(name=name, token=request.headers.get(TOKEN_HEADER))
        # Webhook calls count against the function owner's dispatch rate, like API dispatches.
        wait = dispatch_wait(user_ident(trigger.function.owner) or f"trigger:{trigger.pk}")
        if wait is not None:
            raise RateLimited(f"too many dispatches: retry in {wait:.1f} s.", retry_after=wait)
        limit = settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes.", field="body")
        body = request.body
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes.", field="body")
        event = webhook_event(request, body)
        is_async = wants_async(request)
        wait = 0.0 if is_async else wait_seconds(request, trigger)
        execution = execution_dispatch(trigger=trigger, payload=event, synchronous=not is_async)
    except KubeFunctionError as exc:
        logger.info("webhook %s: %s %s", name, exc.status_code, exc.message)
        return _error_answer(exc)
    result_url = _result_url(request, execution)
    pending = {"task_id": execution.task_id, "execution_id": str(execution.pk),
               "result_url": result_url}
    if is_async:
        logger.info("webhook %s: 202 task %s", name, execution.task_id)
        return _json_answer(202, {**pending, "status": execution.status}, execution.task_id,
                            Location=result_url)
    execution = execution_wait(execution=execution, timeout=wait)
    if not execution.is_finished:
        logger.info("webhook %s: 504 task %s still %s after %.1fs", name, execution.task_id,
                    execution.status, wait)
        return _json_answer(504, {
            **pending, "status": execution.status,
            "detail": f"the function did not finish within {wait:g} s; it goes on: GET the "
                      "result URL for its outcome."}, execution.task_id)
    answer = _finished_answer(request, execution)
    logger.info("webhook %s: %s task %s", name, answer.status, execution.task_id)
    return answer
