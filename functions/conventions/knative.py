"""Knative Functions (`func`), the Python `http` template: `new()` returns an instance whose
`async handle(scope, receive, send)` is an ASGI application; a module-level `handle` works too.

Mapping (docs/porting.md, "Knative Functions"), after the template (function/func.py) and the
middleware that serves it (knative-extensions/func-python, func_python/http.py):

- The instance is made once per runner process (`new()`, as the middleware does at start) and
  its optional `start(cfg)` is called then with a copy of the environment; `stop()` is not
  called (a runner process is simply ended).
- Each call is one ASGI 3.0 `http` scope: method, scheme, `path` and `raw_path` (the path after
  the trigger), `query_string` (raw bytes), `headers` (lower-case byte pairs, as sent), `client`
  and `server`, `root_path` "". `receive()` gives the whole body in one `http.request` message,
  then `http.disconnect`. `send()` takes `http.response.start` (status, headers) and
  `http.response.body` messages (`more_body` joins them).
- `/health/liveness` and `/health/readiness` answer from the instance's `alive()` / `ready()`
  (`True` or `(ok, message)`, 200 or 500, text/plain) as the middleware routes them.
- A dispatch is `POST /` with the payload as its JSON body; its output is the answer's body
  (parsed when JSON).
- An exception fails the execution with its traceback (the middleware would answer
  `500 Error: ...`; a failed execution keeps the reason, and the webhook answers its failure).

Not supported: the `cloudevents` template (CloudEvent `handle(scope, receive, send)` with
`scope["event"]`), websockets and lifespan events beyond `start`.
"""

from __future__ import annotations

import os

from .base import HttpRequest, InvalidResponse, answer_output, http_answer, request_of, settle


def scope_of(request: HttpRequest) -> dict:
    host, _, port = request.host.partition(":")
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": request.method, "scheme": request.scheme,
        "path": request.path, "raw_path": request.path.encode("utf-8"),
        "query_string": request.query_string.encode("latin-1", "replace"),
        "root_path": "",
        "headers": [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
                    for k, v in request.headers],
        "client": (request.source_ip, 0),
        "server": (host or "localhost", int(port) if port.isdigit() else 80),
        "state": {},
    }


class Exchange:
    """One request's `receive` and `send`, and the answer `send` collects."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.received = False
        self.status: int | None = None
        self.headers: list = []
        self.chunks: list[bytes] = []

    async def receive(self) -> dict:
        if not self.received:
            self.received = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self.status is not None:
                raise InvalidResponse("http.response.start sent twice")
            self.status = message.get("status")
            self.headers = [[_text(k), _text(v)] for k, v in message.get("headers") or []]
        elif kind == "http.response.body":
            if self.status is None:
                raise InvalidResponse("http.response.body sent before http.response.start")
            body = message.get("body") or b""
            if not isinstance(body, (bytes, bytearray)):
                raise InvalidResponse("an ASGI body is bytes, not " + type(body).__name__)
            self.chunks.append(bytes(body))
        else:
            raise InvalidResponse(f"an ASGI http answer does not send {kind!r}")

    def answer(self) -> dict:
        if self.status is None:
            raise InvalidResponse("the function sent no http.response.start")
        return http_answer(self.status, self.headers, b"".join(self.chunks))


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def _health(check, default: str = "OK") -> dict:
    ok, message = True, default
    if check is not None:
        result = check()
        if isinstance(result, tuple):
            ok, message = result
        else:
            ok = result
    return http_answer(200 if ok else 500, [["content-type", "text/plain"]], f"{message}")


class Knative:
    def __init__(self, target, handler: str) -> None:
        if handler.rpartition(".")[2] == "new":  # a constructor, as the middleware tells
            self.instance = target()
            if not hasattr(self.instance, "handle"):
                raise InvalidResponse("Function must implement a 'handle' method.")
            start = getattr(self.instance, "start", None)
            if start is not None:
                start(os.environ.copy())
        else:
            self.instance = None
        self.handle = target if self.instance is None else self.instance.handle

    def call(self, event: object, context, http: bool) -> object:
        request = request_of(event, http)
        if request.path == "/health/liveness":
            answer = _health(getattr(self.instance, "alive", None))
        elif request.path == "/health/readiness":
            answer = _health(getattr(self.instance, "ready", None))
        else:
            exchange = Exchange(request.body)
            settle(self.handle(scope_of(request), exchange.receive, exchange.send))
            answer = exchange.answer()
        return answer if http else answer_output(answer)


def adapter(name: str, handler: str, load) -> Knative:
    return Knative(load(handler), handler)
