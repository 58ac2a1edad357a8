"""HTTP triggers: `POST /t/<name>` runs the trigger's function with the request as its event.

The contract (docs/triggers.md; for functions with a convention, docs/porting.md):

- A function with a convention (Lambda, OpenFaaS, …) takes every method (HEAD runs as GET and
  is answered without a body) and a path after the name (`/t/<name>/<path>`); its execution's
  input is the request's description (`http_description`), which its convention turns into its
  platform's event, and its answer is always an HTTP answer (functions/conventions/base.py).
  Only headers control the platform there (`Prefer: respond-async`, `Prefer: wait=N`): the
  query string is the function's. Our own convention takes POST only, as below.
- A trigger with `cors_allowed_origins` answers those origins' CORS preflights itself.
- A trigger with a `signature` scheme authenticates by the sender's HMAC of the body
  (`triggers.signatures`) instead of the token header.

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
- Confinement (docs/security.md, "Webhooks and error pages"): the event never holds a credential
  the platform accepts (its API token, session and CSRF cookies, the CSRF header, the metrics
  token, the trigger token). On the platform's own origin every answer is inert: a CSP sandbox,
  nosniff, and only the allow-listed headers of the function pass. Only on the separate
  KUBEFUNCTION_WEBHOOK_ORIGIN does an answer pass as the function gives it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.http.request import split_domain_port
from django.urls import reverse
from rest_framework.authentication import BasicAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.settings import api_settings

from executions import idempotency
from executions.models import Execution, ExecutionStatus
from executions.services import USE_DEFAULT, execution_dispatch
from executions.waiters import execution_wait_async
from kubefunction.errors import (
    InvalidInput,
    KubeFunctionError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from kubefunction.throttles import dispatch_wait, user_ident

from . import cors, keys, signatures
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
DROPPED_HEADER = "X-KubeFunction-Dropped-Headers"

# On the platform's own origin an answer must never act as a page of that origin: `sandbox` gives
# it an opaque origin (no cookies, no storage, no same-origin fetch) and blocks scripts, forms and
# pop-ups; `default-src 'none'` stops it loading anything (no tracking pixel, no CSS exfiltration).
# Inline styles and data: images keep a plain HTML answer readable.
SANDBOX_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# The function's headers that pass on the platform's origin: they describe the body and its
# caching, nothing else. Location passes when it stays on the platform's origin (no open redirect).
PASSED_HEADERS = {"content-type", "content-disposition", "content-language", "content-encoding",
                  "cache-control", "expires", "pragma", "etag", "last-modified", "vary", "age",
                  "retry-after", "allow", "www-authenticate", "location"}
# Custom `X-…` headers pass, except the ones browsers, servers or we act on.
REFUSED_X_HEADERS = {"x-frame-options", "x-content-type-options", "x-xss-protection",
                     "x-permitted-cross-domain-policies", "x-dns-prefetch-control",
                     "x-download-options", "x-ua-compatible", "x-content-security-policy",
                     "x-webkit-csp", "x-sendfile", "x-real-ip", "x-csrftoken"}
REFUSED_X_PREFIXES = ("x-accel-", "x-forwarded-", "x-kubefunction-", "x-litespeed-")
# An absolute path on this origin: not `//host` or `/\host` (browsers read both as another host).
SAME_ORIGIN_PATH = re.compile(r"/(?![/\\])[^\s\\]*")


class Unauthorized(KubeFunctionError):
    status_code = 401


@dataclass
class WebhookAnswer:
    """What the view sends back. A header's value is a list when the function gave it more than
    once (the view sends each Set-Cookie on its own, joins the others with commas)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str | list[str]] = field(default_factory=dict)
    # False for an answer the function shaped (statusCode/headers/body): its headers are the
    # function's, checked by `confine`; True for the platform's own answers.
    ours: bool = True
    # Headers the platform itself added to a function's answer (CORS), which `confine` keeps.
    added: set[str] = field(default_factory=set)


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

def http_trigger(name: str) -> Trigger:
    """The HTTP trigger `name` (with its function, active version and owner), or NotFound."""
    # The owner too: the dispatch rate is charged to them (one query, not two).
    trigger = Trigger.objects.select_related("function__active_version", "function__owner").filter(
        name=name).first()
    if trigger is None or trigger.kind != TriggerKind.HTTP:
        raise NotFound(f"no HTTP trigger named '{name}'.")
    return trigger


def trigger_convention(trigger: Trigger) -> str:
    """The convention a call of the trigger runs under: its active version's (the function's
    when it has none yet; the dispatch then refuses it)."""
    version = trigger.function.active_version
    return version.convention if version is not None else trigger.function.convention


def webhook_authenticate(trigger: Trigger, *, token: str | None) -> Trigger:
    """`trigger` when `token` opens it (any token for a public trigger); Unauthorized (401) for
    a missing or wrong token. A disabled trigger is refused later by the dispatch (409)."""
    if trigger.public:
        return trigger
    if not token:
        raise Unauthorized(f"send the trigger's token in the {TOKEN_HEADER} header.")
    if not token_matches(trigger, token):
        raise Unauthorized(f"the {TOKEN_HEADER} header does not match this trigger's token.")
    return trigger


def webhook_trigger(*, name: str, token: str | None) -> Trigger:
    """The enabled HTTP trigger `name` that `token` opens (any token for a public trigger).

    NotFound (404) for no such HTTP trigger, Unauthorized (401) for a missing or wrong token;
    a disabled trigger is refused later by the dispatch (409).
    """
    return webhook_authenticate(http_trigger(name), token=token)


# --- The origin --------------------------------------------------------------------------------

def on_webhook_origin(request: HttpRequest) -> bool:
    """Whether the request came to the separate webhook origin (KUBEFUNCTION_WEBHOOK_ORIGIN):
    same scheme, host and port. Every other request, the platform's own host above all, is on
    the platform's origin, whichever path it names."""
    origin = settings.KUBEFUNCTION_WEBHOOK_ORIGIN
    if not origin:
        return False
    expected = urlsplit(origin)
    try:
        host, port = split_domain_port(request.get_host())
    except DisallowedHost:
        return False
    default_port = {"http": 80, "https": 443}[expected.scheme]
    return (request.scheme == expected.scheme and host == expected.hostname
            and int(port or default_port) == (expected.port or default_port))


# --- The event ---------------------------------------------------------------------------------

def _platform_accepts(authorization: str) -> bool:
    """Whether the platform itself would take this `Authorization` value: an API token of an
    active user, a live API key, a user's password (if Basic is configured), or the metrics
    bearer token."""
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    metrics_token = settings.KUBEFUNCTION_METRICS_TOKEN
    if metrics_token and scheme == "bearer" and hmac.compare_digest(
            credentials.encode(), metrics_token.encode()):
        return True
    if scheme == "bearer" and keys.api_key_find(credentials, touch=False) is not None:
        return True  # a scoped API key (triggers/keys.py)
    for authentication in api_settings.DEFAULT_AUTHENTICATION_CLASSES:
        try:
            if issubclass(authentication, TokenAuthentication):
                if scheme == authentication.keyword.lower():
                    authentication().authenticate_credentials(credentials)
                    return True
            elif issubclass(authentication, BasicAuthentication) and scheme == "basic":
                userid, _, password = base64.b64decode(credentials).decode().partition(":")
                authentication().authenticate_credentials(userid, password)
                return True
        except (AuthenticationFailed, ValueError, binascii.Error):
            continue
    return False


def _without_platform_cookies(cookie: str) -> str:
    """The Cookie header minus the platform's session and CSRF cookies (kept as sent)."""
    platform = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}
    kept = [part.strip() for part in cookie.split(";")
            if part.strip() and part.partition("=")[0].strip() not in platform]
    return "; ".join(kept)


def event_headers(request: HttpRequest) -> dict[str, str]:
    """The request's headers as a function sees them: lower-case names, and none of the
    credentials the platform accepts (whoever owns a webhook must not collect its callers'
    tokens). Everything else passes, an `Authorization` meant for the function included."""
    csrf_header = settings.CSRF_HEADER_NAME.removeprefix("HTTP_").replace("_", "-").lower()
    headers = {}
    for key, value in request.headers.items():
        name = key.lower()
        if name in (TOKEN_HEADER.lower(), csrf_header):
            continue
        if name == "authorization" and _platform_accepts(value):
            continue
        if name == "cookie":
            value = _without_platform_cookies(value)
            if not value:
                continue
        headers[name] = value
    return headers


def _envelope(request: HttpRequest, body: bytes) -> dict:
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    headers = event_headers(request)
    query = {key: values[0] if len(values) == 1 else values
             for key, values in request.GET.lists()}
    return {"body": text, "isBase64Encoded": encoded, "headers": headers, "query": query,
            "method": request.method, "path": request.path}


def http_description(request: HttpRequest, body: bytes, *, trigger: Trigger, subpath: str,
                     method: str) -> dict:
    """The request as a function with a convention receives it (functions/conventions/base.py):
    method, the path after the trigger's URL, the raw query string, the headers (none of the
    platform's credentials), the body (base64 when it is not UTF-8), the caller's address."""
    try:
        text, encoded = body.decode("utf-8"), False
        if "\x00" in text:  # valid UTF-8, but the database cannot store a NUL in JSON
            raise UnicodeDecodeError("utf-8", body, 0, 1, "NUL")
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    path = "/" + subpath.lstrip("/") if subpath else "/"
    full = request.path
    route = full[:len(full) - len(subpath)].rstrip("/") if subpath and full.endswith(subpath) \
        else full.rstrip("/")
    return {
        "method": method, "path": path, "route": route,
        "query": request.META.get("QUERY_STRING", ""),
        "headers": [[name, value] for name, value in event_headers(request).items()],
        "body": text, "isBase64Encoded": encoded,
        "sourceIp": request.META.get("REMOTE_ADDR") or "127.0.0.1",
        "scheme": request.scheme, "host": request.get_host(), "trigger": trigger.name,
        "time": round(time.time(), 3),
        "options": {"payloadFormatVersion": trigger.payload_format_version},
    }


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


def wants_async(request: HttpRequest, *, query: bool = True) -> bool:
    """`Prefer: respond-async`, or (`query`: our own convention) `?async=1` (also true/yes)."""
    flag = query and request.GET.get("async", "").lower() in ("1", "true", "yes")
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


def _header_value(name, value) -> str | list[str]:
    if isinstance(value, list | tuple):  # a header given more than once
        return [_header_value(name, one) for one in value]
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
    if isinstance(content_type, list):
        content_type = content_type[-1]
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
    return WebhookAnswer(status, data, content_type or "text/plain; charset=utf-8", headers,
                         ours=False)


def _http_answer(output: object, task_id: str) -> WebhookAnswer:
    """A convention's HTTP answer (functions/conventions/base.py `http_answer`) as served."""
    if not isinstance(output, dict) or "statusCode" not in output:
        raise _BadResponse("a function with a convention must answer an HTTP answer")
    pairs = output.get("headers") or []
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in pairs):
        raise _BadResponse("headers must be a list of [name, value] pairs")
    headers: dict[str, list[str]] = {}
    names: dict[str, str] = {}  # lower-case name -> the first spelling given
    for name, value in pairs:
        checked = _header_value(name, value)
        spelled = names.setdefault(str(name).lower(), name)
        headers.setdefault(spelled, []).append(checked)
    folded = {name: values[0] if len(values) == 1 else values
              for name, values in headers.items()}
    return _proxy_answer({**output, "headers": folded}, task_id)


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
    if execution.http_request or (isinstance(output, dict) and "statusCode" in output):
        try:
            if execution.http_request:
                return _http_answer(output, task_id)
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


def _header_passes(name: str, value: str, request: HttpRequest) -> bool:
    lower = name.lower()
    if lower == "location":
        if SAME_ORIGIN_PATH.fullmatch(value):
            return True
        own = urlsplit(request.build_absolute_uri("/"))
        target = urlsplit(value)
        return (target.scheme, target.netloc.lower()) == (own.scheme, own.netloc.lower())
    if lower in PASSED_HEADERS:
        return True
    return (lower.startswith("x-") and lower not in REFUSED_X_HEADERS
            and not lower.startswith(REFUSED_X_PREFIXES))


def confine(answer: WebhookAnswer, request: HttpRequest) -> WebhookAnswer:
    """An answer fit for the origin it is served on. On the separate webhook origin: as given.
    On the platform's origin: the allow-listed headers of the function only (the dropped names
    are listed in X-KubeFunction-Dropped-Headers, so its author sees why), a sandbox CSP and
    nosniff, so a page a function returns cannot script the admin next to it."""
    if on_webhook_origin(request):
        return answer
    headers, dropped = {}, []
    for name, value in answer.headers.items():
        if answer.ours or name == TASK_ID_HEADER or name in answer.added \
                or _header_passes(name, value, request):
            headers[name] = value
        else:
            dropped.append(name.lower())
    if dropped:
        headers[DROPPED_HEADER] = ", ".join(sorted(set(dropped)))
        logger.info("webhook answer on the platform's origin: dropped headers %s",
                    headers[DROPPED_HEADER])
    headers["Content-Security-Policy"] = SANDBOX_CSP
    headers["X-Content-Type-Options"] = "nosniff"
    return WebhookAnswer(answer.status, answer.body, answer.content_type, headers, answer.ours,
                         answer.added)


@dataclass
class WebhookWait:
    """A synchronous call, dispatched: the execution it waits for, for how long, and what its
    caller is told if the function outlives the wait."""

    execution: Execution
    seconds: float
    pending: dict
    trigger: Trigger | None = None  # for its CORS setting
    headers: dict[str, str] = field(default_factory=dict)  # the platform's, on any answer


async def webhook_call(*, name: str, request: HttpRequest, subpath: str = "") -> WebhookAnswer:
    """Authenticate, build the event, dispatch, and (synchronous calls) wait for the outcome;
    the answer is confined to the origin it is served on. The dispatch runs in the request's
    sync thread; the wait holds no thread (executions.waiters)."""
    started = await sync_to_async(webhook_start)(name=name, request=request, subpath=subpath)
    if isinstance(started, WebhookWait):
        execution = await execution_wait_async(execution=started.execution,
                                               timeout=started.seconds, release=False)
        started = webhook_finish(name=name, request=request, wait=started, execution=execution)
    if request.method == "HEAD":
        started.body = b""
    return confine(started, request)


def _method_check(request: HttpRequest, trigger: Trigger, convention: str,
                  subpath: str) -> WebhookAnswer | None:
    """The answer when the trigger does not take this method or path (None: it does)."""
    if convention:
        return None
    if subpath:
        return _json_answer(404, {"detail": f"trigger '{trigger.name}' takes no path after its "
                                            "name: its function has our own convention, whose "
                                            "event is the body (docs/porting.md)."})
    if request.method != "POST":
        return _json_answer(405, {"detail": "HTTP triggers take POST."}, Allow="POST")
    return None


def _read_body(request: HttpRequest) -> bytes:
    """The body, or PayloadTooLarge (413) past KUBEFUNCTION_MAX_PAYLOAD_BYTES."""
    limit = settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES
    length = request.META.get("CONTENT_LENGTH") or "0"  # the framing middleware checked it
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes.", field="body")
    body = request.body
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes.", field="body")
    return body


def webhook_start(*, name: str, request: HttpRequest,
                  subpath: str = "") -> WebhookAnswer | WebhookWait:
    """Everything up to the wait: the answer at once (an error, a CORS preflight, or 202 for an
    asynchronous call), or the wait of a synchronous call."""
    trigger = None  # known once found: its CORS setting applies to its refusals too
    try:
        trigger = http_trigger(name)
        convention = trigger_convention(trigger)
        preflight = cors.preflight(trigger, request)
        if preflight is not None:
            return cors.allow(WebhookAnswer(204, b"", "text/plain", preflight), trigger, request)
        refused = _method_check(request, trigger, convention, subpath)
        if refused is not None:
            return cors.allow(refused, trigger, request)
        if trigger.signature:
            body = _read_body(request)  # the signature covers the body
            signatures.verify(trigger, request, body)
        else:
            webhook_authenticate(trigger, token=request.headers.get(TOKEN_HEADER))
        # Webhook calls count against the function owner's dispatch rate, like API dispatches.
        wait = dispatch_wait(user_ident(trigger.function.owner) or f"trigger:{trigger.pk}")
        if wait is not None:
            raise RateLimited(f"too many dispatches: retry in {wait:.1f} s.", retry_after=wait)
        if not trigger.signature:
            body = _read_body(request)
        if convention:
            method = "GET" if request.method == "HEAD" else request.method
            event = http_description(request, body, trigger=trigger, subpath=subpath,
                                     method=method)
        else:
            event = webhook_event(request, body)
        is_async = wants_async(request, query=not convention)
        wait = 0.0 if is_async else wait_seconds(request, trigger)
        key = request.headers.get(idempotency.KEY_HEADER)
        execution = execution_dispatch(
            trigger=trigger, payload=event, synchronous=not is_async,
            http_request=bool(convention), idempotency_key=key,
            idempotency_scope=idempotency.webhook_scope(trigger.pk),
            request_hash=None if key is None else idempotency.webhook_sha256(
                trigger.pk, method=request.method, path=subpath,
                query=request.META.get("QUERY_STRING", ""), body=body))
    except signatures.SignatureRefused as exc:
        logger.info("webhook %s: 401 %s", name, exc)
        return cors.allow(_error_answer(Unauthorized(str(exc))), trigger, request)
    except KubeFunctionError as exc:
        logger.info("webhook %s: %s %s", name, exc.status_code, exc.message)
        return cors.allow(_error_answer(exc), trigger, request)
    result_url = _result_url(request, execution)
    pending = {"task_id": execution.task_id, "execution_id": str(execution.pk),
               "result_url": result_url}
    if is_async:
        logger.info("webhook %s: 202 task %s", name, execution.task_id)
        answer = _json_answer(202, {**pending, "status": execution.status}, execution.task_id,
                              Location=result_url, **_replayed(execution))
        return cors.allow(answer, trigger, request)
    return WebhookWait(execution, wait, pending, trigger, _replayed(execution))


def _replayed(execution: Execution) -> dict[str, str]:
    """The header saying an Idempotency-Key gave back an earlier call's execution."""
    return {idempotency.REPLAYED_HEADER: "true"} if execution.replayed else {}


def webhook_finish(*, name: str, request: HttpRequest, wait: WebhookWait,
                   execution: Execution) -> WebhookAnswer:
    """The answer of a synchronous call once its wait ended: the outcome, or 504 (no I/O)."""
    if not execution.is_finished:
        logger.info("webhook %s: 504 task %s still %s after %.1fs", name, execution.task_id,
                    execution.status, wait.seconds)
        answer = _json_answer(504, {
            **wait.pending, "status": execution.status,
            "detail": f"the function did not finish within {wait.seconds:g} s; it goes on: GET "
                      "the result URL for its outcome."}, execution.task_id)
    else:
        answer = _finished_answer(request, execution)
        logger.info("webhook %s: %s task %s", name, answer.status, execution.task_id)
    answer.headers.update(wait.headers)
    answer.added |= set(wait.headers)
    return cors.allow(answer, wait.trigger, request) if wait.trigger is not None else answer
