"""CORS for HTTP triggers: `cors_allowed_origins` lets browsers on those origins call a trigger.

With origins set, the platform answers a CORS preflight itself (`OPTIONS` with `Origin` and
`Access-Control-Request-Method`, no credentials, so no token is asked): 204 allowing the asked
method and headers for PREFLIGHT_MAX_AGE seconds when the origin is allowed, 204 without
`Access-Control-Allow-Origin` (the browser then refuses the call) when it is not. Every other
answer to an allowed origin carries `Access-Control-Allow-Origin` and exposes the task id
header. `["*"]` allows any origin. Without origins the platform does nothing of this: OPTIONS
reaches a function with a convention (which may answer CORS itself, as Cloud Functions' samples
do) and is refused (405) by ours.

Cookies are never involved (`Access-Control-Allow-Credentials` is not sent): the platform's own
cookies never reach a function anyway.
"""

from __future__ import annotations

from django.http import HttpRequest

from .models import Trigger

PREFLIGHT_MAX_AGE = 600
EXPOSED = "X-KubeFunction-Task-Id, Location, Retry-After"


def _allowed_origin(trigger: Trigger | None, request: HttpRequest) -> str | None:
    """What Access-Control-Allow-Origin answers (`*` or the origin), None when not allowed."""
    origins = (trigger.cors_allowed_origins or []) if trigger is not None else []
    origin = request.headers.get("Origin")
    if not origins or not origin:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def preflight(trigger: Trigger, request: HttpRequest) -> dict[str, str] | None:
    """The headers of the platform's answer to a CORS preflight, or None when the request is
    not one the trigger's CORS setting governs."""
    if request.method != "OPTIONS" or not trigger.cors_allowed_origins:
        return None
    asked = request.headers.get("Access-Control-Request-Method")
    if not asked or not request.headers.get("Origin"):
        return None
    headers = {"Vary": "Origin"}
    if _allowed_origin(trigger, request) is None:
        return headers
    headers["Access-Control-Allow-Methods"] = asked.strip().upper()
    asked_headers = request.headers.get("Access-Control-Request-Headers")
    if asked_headers:
        headers["Access-Control-Allow-Headers"] = asked_headers
    headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return headers


def _take(headers: dict, name: str) -> list[str]:
    """Remove header `name` (any spelling: a convention's answer names headers in lower case)
    from `headers`; return its values."""
    values: list[str] = []
    for key in [k for k in headers if k.lower() == name.lower()]:
        value = headers.pop(key)
        values.extend(value if isinstance(value, list) else [value])
    return values


def _merged(values: list[str], *more: str) -> str:
    """Comma-separated list values, each once, case-insensitively, in order."""
    seen: dict[str, str] = {}
    for value in [*values, *more]:
        for item in str(value).split(","):
            item = item.strip()
            if item and item.lower() not in seen:
                seen[item.lower()] = item
    return ", ".join(seen.values())


def allow(answer, trigger: Trigger | None, request: HttpRequest):
    """`answer` (a WebhookAnswer) with the CORS headers an allowed origin needs: ours replace a
    function's own Access-Control-Allow-Origin; its exposed headers and Vary are kept, ours
    added to them."""
    allowed = _allowed_origin(trigger, request)
    if allowed is None:
        return answer
    _take(answer.headers, "Access-Control-Allow-Origin")
    added = {"Access-Control-Allow-Origin": allowed,
             "Access-Control-Expose-Headers": _merged(
                 _take(answer.headers, "Access-Control-Expose-Headers"), EXPOSED)}
    if allowed != "*":
        added["Vary"] = _merged(_take(answer.headers, "Vary"), "Origin")
    answer.headers.update(added)
    answer.added.update(added)
    return answer
