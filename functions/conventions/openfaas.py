"""OpenFaaS: the classic `python3` template (`handle(req)`: a string in, a string out) and the
`python3-http` template (`handle(event, context)`, an answer dict).

Mapping (docs/porting.md, "OpenFaaS"), after the templates' own index.py and the watchdogs:

- `openfaas` (classic watchdog, template `python3`): `req` is the request body as text (a
  dispatch: the payload, a string as is, anything else as its JSON). The watchdog's
  environment is set for the call: `Http_Method`, `Http_Path`, `Http_Query` (raw) and one
  `Http_<Header_Name>` per request header (`Http_Content_Type`, `Http_X_Forwarded_For`...). The
  answer is what index.py prints: the returned value's `str()` and a newline, nothing for
  None, status 200, the request's Content-Type echoed (the watchdog's default without a
  `content_type` setting), else Go's sniffed `text/plain; charset=utf-8`. A dispatch's output
  is the returned string (or None).
- `openfaas-http` (of-watchdog, template `python3-http`): `event` has `body` (bytes),
  `headers` (case-insensitive, werkzeug-like), `method`, `query` (a multi-dict: `get` gives the
  first value, `getlist` all), `path`; `context.hostname` is `$HOSTNAME`. The answer follows
  the template's `format_response`: a dict's `statusCode` (200), `headers` (a dict or a list
  of pairs) and `body` (a dict as JSON, `application/octet-stream` passed as is, anything else
  `str()`), served as Flask serves it (text/html unless a Content-Type is given); any other
  return value as Flask serves a view's (a string, a `(body, status[, headers])` tuple). A
  dispatch is `POST /` with the payload as JSON; its output is the answer's body (parsed when
  JSON).

Not supported: the templates' Flask objects themselves (`event.headers` is a mapping, not
werkzeug's `EnvironHeaders`, and there is no `flask.request`), `python3-flask`'s bytes `req`
(use `openfaas-http`), OpenFaaS secrets files under /var/openfaas/secrets (use environment
variables), the watchdog's `content_type`, `write_debug` and `combine_output` settings.
"""

from __future__ import annotations

import json
import os

from .base import (
    HttpRequest,
    InvalidResponse,
    answer_output,
    canonical_header,
    http_answer,
    request_of,
    settle,
)

FLASK_TYPE = "text/html; charset=utf-8"  # Flask's default for a text answer


class Headers:
    """Request headers looked up in any case (as werkzeug's), repeats joined."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = [(canonical_header(k), v) for k, v in pairs]

    def get(self, key: str, default: object = None, type=None) -> object:
        values = self.getlist(key)
        if not values:
            return default
        value = ", ".join(values)
        return type(value) if type else value

    def getlist(self, key: str) -> list[str]:
        key = key.lower()
        return [v for k, v in self._pairs if k.lower() == key]

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.getlist(key))

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self._pairs))

    def items(self) -> list[tuple[str, str]]:
        return [(k, self.get(k)) for k in self.keys()]

    def __iter__(self):
        return iter(self.items())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class MultiDict(dict):
    """Query parameters: a dict of each name's first value, with `getlist` for all of them."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self._lists: dict[str, list[str]] = {}
        for key, value in pairs:
            self._lists.setdefault(key, []).append(value)
            self.setdefault(key, value)

    def get(self, key, default=None, type=None):
        if key not in self:
            return default
        return type(self[key]) if type else self[key]

    def getlist(self, key: str) -> list[str]:
        return list(self._lists.get(key, []))

    def to_dict(self, flat: bool = True) -> dict:
        return dict(self) if flat else {k: list(v) for k, v in self._lists.items()}


class Event:
    """python3-http's `event`."""

    def __init__(self, request: HttpRequest) -> None:
        self.body = request.body
        self.headers = Headers(request.headers)
        self.method = request.method
        self.query = MultiDict(request.query_pairs())
        self.path = request.path


class Context:
    """python3-http's `context`."""

    def __init__(self) -> None:
        self.hostname = os.getenv("HOSTNAME", "localhost")


# --- python3-http's format_response, then Flask -------------------------------------------------

def flask_answer(value: object) -> dict:
    """The answer Flask makes of a view's return value (a string, bytes, a dict, a tuple)."""
    status, headers = 200, []
    if isinstance(value, tuple):
        if len(value) == 3:
            value, status, headers = value
        elif len(value) == 2:
            value, second = value
            if isinstance(second, (dict, list)):
                headers = second
            else:
                status = second
        else:
            raise InvalidResponse("a tuple answer is (body, status), (body, headers) or "
                                  "(body, status, headers)")
    if isinstance(status, str) and status.split(" ")[0].isdigit():
        status = int(status.split(" ")[0])
    if value is None:
        raise InvalidResponse("the view function did not return a valid response (None)")
    if isinstance(value, (dict, list)):
        # Flask's JSON provider: sorted keys, compact, ASCII, a newline
        text = json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"
        answer = http_answer(status, headers, text, content_type="application/json")
    elif isinstance(value, (str, bytes, bytearray)):
        answer = http_answer(status, headers, value, content_type=FLASK_TYPE)
    else:
        raise InvalidResponse(f"the view function returned a {type(value).__name__}: Flask "
                              "takes a string, bytes, a dict, a list or a tuple")
    return answer


def format_response(res: object) -> dict:
    """python3-http's index.py `format_response`, then Flask."""
    if res is None:
        return flask_answer(("", 200))
    if not isinstance(res, dict):
        return flask_answer(res)
    status = res.get("statusCode", 200)
    headers = res.get("headers", [])
    content_type = headers.get("Content-type", "") if isinstance(headers, dict) else ""
    if content_type == "application/octet-stream":
        body = res["body"]
    elif "body" not in res:
        body = ""
    elif isinstance(res["body"], dict):
        body = res["body"]  # jsonify
    else:
        body = str(res["body"])
    if isinstance(headers, dict):
        headers = list(headers.items())
    return flask_answer((body, status, headers))


# --- the calls ------------------------------------------------------------------------------------

class Classic:
    """`openfaas`: handle(req) with the body as a string."""

    def __init__(self, func) -> None:
        self.func = func

    def call(self, event: object, context, http: bool) -> object:
        if not http:
            req = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
            return settle(self.func(req))
        request = HttpRequest(event)
        names = self._environment(request)
        try:
            value = settle(self.func(request.text()))
        finally:
            for name in names:
                os.environ.pop(name, None)
        body = "" if value is None else f"{value}\n"
        content_type = request.header("content-type") or "text/plain; charset=utf-8"
        return http_answer(200, [], body, content_type=content_type)

    @staticmethod
    def _environment(request: HttpRequest) -> list[str]:
        values = {"Http_" + canonical_header(key).replace("-", "_"): value
                  for key, value in request.header_dict().items()}
        # The request's own, after the headers: a caller's `Path:` header cannot pose as them.
        values.update(Http_Method=request.method, Http_Path=request.path,
                      Http_Query=request.query_string)
        os.environ.update(values)
        return list(values)


class Http:
    """`openfaas-http`: handle(event, context) answering a dict."""

    def __init__(self, func) -> None:
        self.func = func

    def call(self, event: object, context, http: bool) -> object:
        request = request_of(event, http)
        answer = format_response(settle(self.func(Event(request), Context())))
        return answer if http else answer_output(answer)


def adapter(name: str, handler: str, load):
    func = load(handler)
    return Classic(func) if name == "openfaas" else Http(func)
