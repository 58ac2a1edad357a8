"""Nuclio (Python runtime): `def handler(context, event)`, and `init_context(context)` run once
before the first event when the module defines it.

The event, context and Response are lightweight equivalents of nuclio-sdk-py's (`nuclio_sdk.
Event`, `Context`, `Response`), built as nuclio's Python wrapper builds them from what its HTTP
trigger sends (the runner is stdlib-only and the convention installs nothing; a function that
imports `nuclio_sdk` itself lists it in its requirements.txt, and a `nuclio_sdk.Response` it
returns is read like ours). Mapping (docs/porting.md, "Nuclio"):

- `event.body`: bytes; for a Content-Type of exactly `application/json` the parsed JSON (bytes
  again when it does not parse), as the wrapper decodes it. `event.headers`: one value per name
  (the last one of a repeated header), names in canonical case (`Content-Type`, `X-Custom`), as
  the trigger's fasthttp gives them; `event.get_header(name)` in any case. `event.fields`: the
  query parameters (the last value of a repeated one). `event.path`: the path after the trigger;
  `event.url`: the full URL called (nuclio's HTTP trigger leaves it empty); `event.id`: the
  execution id; `event.timestamp`: a naive UTC datetime, to the second; `event.trigger`: kind
  "http", name the trigger's; `event.content_type`, `event.method`, `event.size`.
- `context`: `logger` (debug/info/warn/error and the `*_with(message, **kwargs)` variants, one
  JSON line `{"datetime", "level", "message", "with"}` each in the execution's logs, as the
  wrapper's JSONFormatter writes them), `user_data` (kept while the runner is warm), `Response`,
  `platform` (kind "local", namespace "default"), `worker_id` (0), `trigger` / `trigger_name`.
- Answers, as `Response.from_entrypoint_output` encodes them and the HTTP trigger writes them: a
  str (200 text/plain), a dict or list (JSON, application/json), a `(status, body)` tuple (a str
  body as text/plain, anything else JSON), a `Response(body, headers, content_type,
  status_code)` (a dict body as JSON), bytes (200, raw); anything else is written as its str().
  Response headers are a dict: string and integer values are sent, others dropped, as the
  trigger does. A generator (a streamed answer) is refused (InvalidResponse).
- A dispatch is the event of `POST /` with the payload as its JSON body (so `event.body` is the
  payload); the output is the answer's body, parsed when it is JSON, else its text.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import sys
import time
import types

from .base import (
    HttpRequest,
    InvalidResponse,
    answer_output,
    canonical_header,
    http_answer,
    request_of,
    settle,
)

# --- the event ------------------------------------------------------------------------------------

class TriggerInfo:
    def __init__(self, kind: str = "", name: str = "") -> None:
        self.kind = kind
        self.name = name


class Event:
    """nuclio_sdk.Event's attributes and methods."""

    def __init__(self, body=None, content_type=None, trigger=None, fields=None, headers=None,
                 _id=None, method=None, path=None, size=None, timestamp=None, url=None,
                 shard_id=None, num_shards=None, _type=None, type_version=None, version=None,
                 last_in_batch=None, offset=None, topic=None) -> None:
        self.body = body
        self.content_type = content_type
        self.trigger = trigger or TriggerInfo()
        self.fields = fields or {}
        self.headers = headers or {}
        self.id = _id
        self.method = method
        self.path = path or "/"
        self.size = size
        self.timestamp = timestamp or 0
        self.url = url
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.type = _type
        self.type_version = type_version
        self.version = version
        self.last_in_batch = last_in_batch or False
        self.offset = offset or 0
        self.topic = topic

    def get_header(self, header_key: str):
        for key, value in self.headers.items():
            if key.lower() == header_key.lower():
                return value
        return None

    def to_json(self) -> str:
        obj = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        obj["trigger"] = {"kind": self.trigger.kind, "name": self.trigger.name}
        if isinstance(self.timestamp, datetime.datetime):
            obj["timestamp"] = str(self.timestamp)
        if isinstance(obj["body"], bytes):
            obj["body"] = base64.b64encode(obj["body"]).decode("ascii")
        return json.dumps(obj, default=str)

    __repr__ = to_json


def event_of(request: HttpRequest, event_id: str) -> Event:
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers[canonical_header(name)] = value  # a repeated one: the last value (a Go map)
    content_type = request.content_type
    body: object = request.body
    if content_type == "application/json":  # the wrapper's decoding, exactly this type only
        try:
            body = json.loads(request.body.decode("utf-8"))
        except ValueError as exc:
            sys.stderr.write(f"Failed deserializing json body, error message: {exc}\n")
    stamp = datetime.datetime.fromtimestamp(int(request.time), datetime.timezone.utc)  # noqa: UP017 (3.10)
    return Event(
        body=body, content_type=content_type, trigger=TriggerInfo("http", request.trigger),
        fields=request.query_dict(), headers=headers, _id=event_id, method=request.method,
        path=request.path, size=len(request.body), timestamp=stamp.replace(tzinfo=None),
        url=request.url, shard_id=0, num_shards=0, _type="", type_version="", version="",
        offset=0, topic="")


# --- the context ----------------------------------------------------------------------------------

class Logger:
    """nuclio_sdk.Logger's methods; each record one JSON line in the execution's logs."""

    def __init__(self) -> None:
        self._bound: dict = {}

    def _log(self, level: str, message: object, args: tuple, kwargs: dict) -> None:
        text = str(message) % args if args else str(message)
        record = {"datetime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
                  "level": level, "message": text, "with": {**kwargs, **self._bound}}
        sys.stderr.write(_encode(record) + "\n")

    def debug(self, message, *args):
        self._log("debug", message, args, {})

    def info(self, message, *args):
        self._log("info", message, args, {})

    def warn(self, message, *args):
        self._log("warning", message, args, {})

    def error(self, message, *args):
        self._log("error", message, args, {})

    def debug_with(self, message, *args, **kwargs):
        self._log("debug", message, args, kwargs)

    def info_with(self, message, *args, **kwargs):
        self._log("info", message, args, kwargs)

    def warn_with(self, message, *args, **kwargs):
        self._log("warning", message, args, kwargs)

    def error_with(self, message, *args, **kwargs):
        self._log("error", message, args, kwargs)

    def bind(self, **kwargs):
        self._bound.update(kwargs)


class Platform:
    def __init__(self, kind: str = "local", namespace: str = "default") -> None:
        self.kind = kind
        self.namespace = namespace

    def call_function(self, *args, **kwargs):
        raise NotImplementedError("context.platform.call_function is not supported here: "
                                  "dispatch to the other function through its trigger")


class Response:
    """nuclio_sdk.Response's constructor and attributes."""

    def __init__(self, headers=None, body=None, content_type=None, status_code=200,
                 event_id=None) -> None:
        self.headers = headers or {}
        self.body = body
        self.status_code = status_code
        self.content_type = content_type or "text/plain"
        self.event_id = event_id

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Response({fields})"


class Context:
    def __init__(self, trigger: TriggerInfo) -> None:
        self.platform = Platform()
        self.logger = Logger()
        self.user_data = types.SimpleNamespace()
        self.Response = Response
        self.worker_id = 0
        self.trigger = trigger
        self.trigger_name = trigger.name


# --- the answer -----------------------------------------------------------------------------------

def _plain(value: object) -> object:
    """`value` with what nuclio_sdk's JSON encoder writes apart: NaN and infinities as strings,
    other objects as their repr()."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _encode(value: object) -> str:
    return json.dumps(_plain(value), default=repr)


def _is_response(value: object) -> bool:
    return isinstance(value, Response) or (
        type(value).__name__ == "Response" and all(
            hasattr(value, a) for a in ("status_code", "body", "headers", "content_type")))


def response_answer(value: object) -> dict:
    """The HTTP answer nuclio gives for the handler's output."""
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)) or (
            _is_response(value) and isinstance(value.body, (types.GeneratorType,
                                                            types.AsyncGeneratorType))):
        raise InvalidResponse("streamed (generator) answers are not supported")
    status: object = 200
    content_type = "text/plain"
    headers: dict = {}
    if isinstance(value, str):
        body: object = value
    elif isinstance(value, tuple) and len(value) == 2:
        status = value[0]
        if isinstance(value[1], str):
            body = value[1]
        else:
            body, content_type = _encode(value[1]), "application/json"
    elif isinstance(value, (dict, list)):
        body, content_type = _encode(value), "application/json"
    elif _is_response(value):
        if isinstance(value.body, dict):
            body, content_type = json.dumps(value.body), "application/json"
        else:
            body, content_type = value.body, value.content_type
        headers = value.headers if isinstance(value.headers, dict) else {}
        status = value.status_code
    else:
        body = value
    if not isinstance(body, (bytes, bytearray)):
        body = str(body)
    if isinstance(status, bool) or not isinstance(status, int):
        raise InvalidResponse(f"the status code must be an integer, not {status!r}")
    pairs = [[str(k), str(v)] for k, v in headers.items()
             if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))]
    if not status:  # 0: the trigger leaves fasthttp's default
        status = 200
    return http_answer(status, pairs, body, content_type=content_type or None)


# --- the call -------------------------------------------------------------------------------------

class Nuclio:
    def __init__(self, func, handler: str) -> None:
        self.func = func
        self.module = sys.modules.get(getattr(func, "__module__", "") or "")
        self.context: Context | None = None

    def call(self, event: object, context, http: bool) -> object:
        request = request_of(event, http)
        if self.context is None:  # init_context once, before the first event
            nuclio_context = Context(TriggerInfo("http", request.trigger))
            init = getattr(self.module, "init_context", None)
            if callable(init):
                settle(init(nuclio_context))
            self.context = nuclio_context
        nuclio_event = event_of(request, context.execution_id)
        answer = response_answer(settle(self.func(self.context, nuclio_event)))
        return answer if http else answer_output(answer)


def adapter(name: str, handler: str, load) -> Nuclio:
    return Nuclio(load(handler), handler)
