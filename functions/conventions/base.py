"""What every convention shares: the HTTP request a webhook call describes, and the HTTP answer.

The webhook (triggers/webhooks.py `http_description`) stores an HTTP call as a JSON description,
the execution's input, and the runner hands it to the convention with `http` true:

    {"method": "GET", "path": "/orders/42", "route": "/t/<trigger>", "query": "q=1&q=2",
     "headers": [["content-type", "application/json"], ...], "body": "...",
     "isBase64Encoded": false, "sourceIp": "127.0.0.1", "scheme": "http",
     "host": "127.0.0.1:8000", "trigger": "<trigger>", "time": 1764750000.123,
     "options": {"payloadFormatVersion": "1.0"}}

`path` is what follows the trigger's URL (`/t/<name>/orders/42` → `/orders/42`, "/" for none);
header names are lower case, in the order sent, repeated names repeated, and never hold a
credential of the platform's; `body` is UTF-8 text, or base64 with `isBase64Encoded`.

A dispatch (API, admin, command, schedule) to a convention whose functions only take HTTP
requests is the request `dispatch_request` makes: `POST /` with the payload as its JSON body.

Every HTTP answer is the dict `http_answer` makes, whatever shape the function answered in:

    {"statusCode": 201, "headers": [["content-type", "text/plain"], ["set-cookie", "a=1"]],
     "body": "...", "isBase64Encoded": false}
"""

from __future__ import annotations

import base64
import json
import time
import types
from urllib.parse import parse_qsl, quote

ANSWER_KEYS = ("statusCode", "headers", "body", "isBase64Encoded")


class HttpRequest:
    """One HTTP request, read from its description (a webhook call) or made for a dispatch."""

    def __init__(self, description: object) -> None:
        d = description if isinstance(description, dict) else {}
        self.method = str(d.get("method") or "POST").upper()
        path = str(d.get("path") or "/")
        self.path = path if path.startswith("/") else "/" + path
        self.route = str(d.get("route") or "")
        self.query_string = str(d.get("query") or "")
        self.headers: list[tuple[str, str]] = [
            (str(k).lower(), str(v)) for k, v in (d.get("headers") or [])]
        self.is_base64 = bool(d.get("isBase64Encoded"))
        text = str(d.get("body") or "")
        self.body: bytes = base64.b64decode(text) if self.is_base64 else text.encode("utf-8")
        self.source_ip = str(d.get("sourceIp") or "127.0.0.1")
        self.scheme = str(d.get("scheme") or "http")
        self.host = str(d.get("host") or self.header("host") or "localhost")
        self.trigger = str(d.get("trigger") or "")
        self.time = float(d.get("time") or time.time())
        self.options: dict = d.get("options") if isinstance(d.get("options"), dict) else {}

    # -- reading it ---------------------------------------------------------------------------

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (any case), or `default`."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), default)

    def header_dict(self) -> dict[str, str]:
        """Headers as one value per name: repeated ones joined with ", " (cookies with "; ")."""
        joined: dict[str, str] = {}
        for key, value in self.headers:
            if key in joined:
                joined[key] += ("; " if key == "cookie" else ", ") + value
            else:
                joined[key] = value
        return joined

    def header_lists(self) -> dict[str, list[str]]:
        lists: dict[str, list[str]] = {}
        for key, value in self.headers:
            lists.setdefault(key, []).append(value)
        return lists

    def query_pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query_string, keep_blank_values=True)

    def query_dict(self) -> dict[str, str]:
        """One value per name (the last one, as API Gateway's queryStringParameters)."""
        return dict(self.query_pairs())

    def query_lists(self) -> dict[str, list[str]]:
        lists: dict[str, list[str]] = {}
        for key, value in self.query_pairs():
            lists.setdefault(key, []).append(value)
        return lists

    @property
    def content_type(self) -> str:
        return self.header("content-type", "") or ""

    @property
    def full_path(self) -> str:
        """The path as the caller sent it: the trigger's route and the path after it."""
        if not self.route:
            return self.path
        return self.route + ("" if self.path == "/" else self.path)

    @property
    def url(self) -> str:
        query = f"?{self.query_string}" if self.query_string else ""
        return f"{self.scheme}://{self.host}{quote(self.full_path)}{query}"

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> object:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.body.decode("utf-8"))

    def is_json(self) -> bool:
        kind = self.content_type.split(";")[0].strip().lower()
        return kind == "application/json" or kind.endswith("+json")

    def body_text_or_base64(self) -> tuple[str, bool]:
        """The body as a string for a JSON event, and whether that string is base64."""
        try:
            return self.body.decode("utf-8"), False
        except UnicodeDecodeError:
            return base64.b64encode(self.body).decode("ascii"), True

    def environ(self) -> dict:
        """A WSGI environ for this request (for frameworks that take one: Flask, werkzeug)."""
        import io
        import sys

        host, _, port = self.host.partition(":")
        environ = {
            "REQUEST_METHOD": self.method, "SCRIPT_NAME": "",
            "PATH_INFO": self.path, "QUERY_STRING": self.query_string,
            "SERVER_NAME": host or "localhost",
            "SERVER_PORT": port or ("443" if self.scheme == "https" else "80"),
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": self.source_ip,
            "wsgi.version": (1, 0), "wsgi.url_scheme": self.scheme,
            "wsgi.input": io.BytesIO(self.body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(self.body)),
        }
        for key, value in self.header_dict().items():
            if key == "content-type":
                environ["CONTENT_TYPE"] = value
            elif key != "content-length":
                environ["HTTP_" + key.upper().replace("-", "_")] = value
        return environ


def canonical_header(name: str) -> str:
    """A header name as Go's net/http and werkzeug show it: `x-custom-id` → `X-Custom-Id`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def dispatch_request(event: object) -> HttpRequest:
    """The request a dispatch stands for: `POST /` with the payload as its JSON body."""
    body = json.dumps(event, ensure_ascii=False)
    return HttpRequest({"method": "POST", "path": "/", "body": body,
                        "headers": [["content-type", "application/json"],
                                    ["content-length", str(len(body.encode("utf-8")))]]})


def request_of(event: object, http: bool) -> HttpRequest:
    """The invocation's HTTP request: the webhook's, or the one a dispatch stands for."""
    return HttpRequest(event) if http else dispatch_request(event)


# --- the answer ----------------------------------------------------------------------------------

class InvalidResponse(TypeError):
    """The function answered in a shape its platform would refuse (raised in the runner: the
    execution fails with error type InvalidResponse)."""


def header_pairs(headers: object) -> list[list[str]]:
    """Headers given as a dict (values a string, number or list of them), a list of pairs, or
    any object with `.items()` (werkzeug's Headers keeps repeats), as [[name, value], ...]."""
    if headers is None:
        return []
    if hasattr(headers, "to_wsgi_list"):  # werkzeug Headers: every repeat, in order
        items = headers.to_wsgi_list()
    elif isinstance(headers, dict) or hasattr(headers, "items"):
        items = list(headers.items())
    elif isinstance(headers, (list, tuple)):
        items = list(headers)
    else:
        raise InvalidResponse(f"headers must be an object or a list of pairs, not "
                        f"{type(headers).__name__}")
    pairs = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise InvalidResponse(f"a header is not a (name, value) pair: {item!r}") from None
        values = value if isinstance(value, (list, tuple)) else [value]
        for one in values:
            if isinstance(one, bool):
                one = "true" if one else "false"
            if not isinstance(one, (str, int, float)):
                raise InvalidResponse(f"header {name} must be a string or a number")
            pairs.append([str(name), str(one)])
    return pairs


def http_answer(status: object = 200, headers: object = None, body: object = b"",
                content_type: str | None = None) -> dict:
    """The one JSON shape of an HTTP answer. `body`: bytes (kept as text when it is UTF-8, else
    base64), a string, or None; `content_type` is added when no Content-Type header is given."""
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise InvalidResponse(f"the status must be an integer between 100 and 599, not {status!r}")
    pairs = header_pairs(headers)
    if content_type and not any(k.lower() == "content-type" for k, _ in pairs):
        pairs.append(["Content-Type", content_type])
    if body is None:
        data = b""
    elif isinstance(body, str):
        data = body.encode("utf-8")
    elif isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
    else:
        raise InvalidResponse(f"the body must be text or bytes, not {type(body).__name__}")
    try:
        text, encoded = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(data).decode("ascii"), True
    return {"statusCode": status, "headers": pairs, "body": text, "isBase64Encoded": encoded}


def wsgi_answer(app, request: HttpRequest) -> dict:
    """Run `request` through the WSGI `app`; its status, headers (repeats kept) and body as
    `http_answer`. An exception the app propagates is raised."""
    started: dict = {}
    chunks: list[bytes] = []

    def start_response(status, headers, exc_info=None):
        if exc_info:
            raise exc_info[1].with_traceback(exc_info[2])
        started["status"], started["headers"] = status, list(headers)
        return chunks.append

    result = app(request.environ(), start_response)
    try:
        for chunk in result:
            chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in started:
        raise InvalidResponse("the app answered without starting a response")
    try:
        status = int(str(started["status"]).split(" ", 1)[0])
    except ValueError:
        raise InvalidResponse(f"the status {started['status']!r} is not a number") from None
    return http_answer(status, started["headers"], b"".join(chunks))


def answer_output(answer: dict) -> object:
    """A dispatch's output when the function answers HTTP: the answer's body, parsed when its
    Content-Type is JSON, else its text (base64 when binary)."""
    request = HttpRequest({"headers": answer["headers"], "body": answer["body"],
                           "isBase64Encoded": answer["isBase64Encoded"]})
    if request.is_json():
        try:
            return request.json()
        except ValueError:
            pass
    return answer["body"]


def is_http_answer(value: object) -> bool:
    return isinstance(value, dict) and set(value) == set(ANSWER_KEYS)


# --- calling ------------------------------------------------------------------------------------

def settle(result: object) -> object:
    """`result`, awaited when the function was a coroutine function."""
    if isinstance(result, types.CoroutineType) or (
            hasattr(result, "__await__") and not isinstance(result, type)):
        import asyncio

        async def wait() -> object:
            return await result

        return asyncio.run(wait())
    return result


def positional_count(func: object) -> int | None:
    """How many positional arguments `func` takes (None: any number)."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for param in params:
        if param.kind == param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count
