"""Apache OpenWhisk: `main(args)` takes one dict and returns one; behind a webhook, a web action.

Mapping (docs/porting.md, "Apache OpenWhisk"), after OpenWhisk's controller
(core/controller/.../WebActions.scala) and its Python runtime:

- A dispatch calls `main(payload)`; the payload must be an object, and the result a dict (or a
  list), as the Python runtime requires ("The action did not return a dictionary"). A result
  with a top-level `error` is OpenWhisk's *application error*: the execution fails
  (`ApplicationError`, the error's JSON as its message).
- A webhook call is a web action's `.http` call, the trigger's URL standing for
  `/api/v1/web/<namespace>/<package>/<action>`: `args` holds `__ow_method` (lower case),
  `__ow_headers` (one value per lower-case name), `__ow_path` (the path after the trigger, ""
  for none), the query parameters, and the body: a JSON object's or a form's fields merged over
  the query's, any other JSON value, text or binary (base64) in `__ow_body`. A query or body
  naming an `__ow_` field is refused with 400, as OpenWhisk does.
- The answer is read as `resultAsHttp` reads it: `statusCode` (number or numeric string),
  `headers` (values strings, numbers, booleans or lists of them), `body`: a non-empty string
  sent as text (Content-Type text/html unless given), base64-decoded for a binary type
  (image/*, application/octet-stream, ...); a JSON value sent as application/json; no body or
  an empty one: no content (204 unless a status is given). An application error answers its
  `error` field the same way. Anything else is OpenWhisk's 400 ("Response type in header did
  not match generated content type"): here an `InvalidResponse`.
- An archive's entry point is `main` in `__main__.py`, imported (as OpenWhisk's runtime does)
  under the name `main__`.
- The action's metadata is in the environment for each call, as OpenWhisk sets it:
  `__OW_ACTIVATION_ID` (the execution id), `__OW_ACTION_NAME` (`/<namespace>/<function>`),
  `__OW_ACTION_VERSION`, `__OW_NAMESPACE` (`_`, unless the function's environment sets it),
  `__OW_DEADLINE` (epoch milliseconds), `__OW_TRANSACTION_ID` (the task id); `__OW_API_HOST`
  and `__OW_API_KEY` are not set (there is no OpenWhisk API to call back).

Not supported: raw web actions (`--web raw`: `__ow_query`, a JSON body kept whole), `.json` /
`.html` / `.text` / `.svg` extensions and result projection, `__ow_user` (no OpenWhisk
authentication), package and action default parameters (set them in the function's code or
environment).
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import sys
from urllib.parse import parse_qsl

from .base import HttpRequest, InvalidResponse, http_answer, settle

RESERVED = ("__ow_method", "__ow_headers", "__ow_path", "__ow_user", "__ow_body", "__ow_query")


class ApplicationError(Exception):
    """The action answered `{"error": ...}` (OpenWhisk's application error)."""


class _MainFinder:
    """Finds `main__` at the archive's `__main__.py`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def find_spec(self, name, path=None, target=None):
        if name != "main__":
            return None
        return importlib.util.spec_from_file_location("main__", self.path)


def _load_main(handler: str, load):
    """`__main__.main` is the archive's `__main__.py`, imported as `main__` (the name
    OpenWhisk's Python runtime gives it: `__main__` is the running program's), so that the
    runner's loader reports its errors as any other import's."""
    module, _, attr = handler.rpartition(".")
    if module != "__main__":
        return load(handler)
    path = next((os.path.join(entry or ".", "__main__.py") for entry in sys.path
                 if os.path.isfile(os.path.join(entry or ".", "__main__.py"))), None)
    if path is None:
        return load(handler)  # the runner's own HandlerNotFound
    sys.meta_path.insert(0, _MainFinder(path))
    return load("main__." + attr)


# --- the web action's arguments ------------------------------------------------------------------

def _is_binary(content_type: str) -> bool:
    """Whether a media type is binary to OpenWhisk (akka-http: text/* and the JSON, XML,
    JavaScript and form types carry a charset; images, audio, video and the rest do not)."""
    kind = content_type.split(";")[0].strip().lower()
    if not kind:
        return False
    main, _, sub = kind.partition("/")
    if main == "text" or sub.endswith(("+json", "+xml")):
        return False
    return not (main == "application" and sub in (
        "json", "xml", "javascript", "x-www-form-urlencoded", "graphql", "x-javascript"))


def web_action_args(request: HttpRequest) -> dict:
    """The argument OpenWhisk's controller gives a (non-raw) web action."""
    args: dict = {"__ow_method": request.method.lower(),
                  "__ow_headers": request.header_dict(),
                  "__ow_path": "" if request.path == "/" else request.path}
    query = request.query_dict()
    body: object = None
    kind = request.content_type.split(";")[0].strip().lower()
    if request.body:
        if request.is_json():
            try:
                body = request.json()
            except ValueError:
                raise InvalidResponse("the request body is not the JSON its content type "
                                      "says") from None
        elif kind == "application/x-www-form-urlencoded":
            body = dict(parse_qsl(request.text(), keep_blank_values=True))
        elif _is_binary(kind) or not _utf8(request.body):
            body = base64.b64encode(request.body).decode("ascii")
        else:
            body = request.text()
    fields = body if isinstance(body, dict) else {}
    clash = [key for key in (*query, *fields) if key in RESERVED]
    if clash:
        raise BadRequest(f"Request defines parameters that are not allowed (e.g., reserved "
                         f"properties): {', '.join(sorted(set(clash)))}.")
    args.update(query)
    if isinstance(body, dict):
        args.update(body)
    elif body is not None:
        args["__ow_body"] = body
    return args


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class BadRequest(Exception):
    """The request is one OpenWhisk refuses before running the action (400)."""


# --- the answer ----------------------------------------------------------------------------------

MISMATCH = "Response type in header did not match generated content type."


def _status(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidResponse(f"{MISMATCH} (statusCode must be an integer, not {value!r})")
    return value


def _headers(value: object) -> list[list[str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidResponse(f"{MISMATCH} (headers must be an object)")
    pairs = []

    def add(name: str, one: object) -> None:
        if isinstance(one, list):
            for inner in one:
                add(name, inner)
        elif isinstance(one, bool):
            pairs.append([name, "true" if one else "false"])
        elif isinstance(one, (str, int, float)):
            pairs.append([name, str(one)])
        else:
            raise InvalidResponse(f"{MISMATCH} (header {name} must be a string, number, "
                                  "boolean or a list of them)")
    for name, one in value.items():
        add(str(name), one)
    return pairs


def web_answer(result: object) -> dict:
    """The HTTP answer OpenWhisk's controller makes of a web action's result (`.http`)."""
    if not isinstance(result, dict):
        raise InvalidResponse(f"{MISMATCH} (a web action answers an object)")
    pairs = _headers(result.get("headers"))
    given = next((v for k, v in pairs if k.lower() == "content-type"), None)
    rest = [pair for pair in pairs if pair[0].lower() != "content-type"]
    body = result.get("body")
    if body is None or body == "":  # no entity; a content type given is dropped with it
        return http_answer(_status(result.get("statusCode"), 204), rest, b"")
    status = _status(result.get("statusCode"), 200)
    if not isinstance(body, str):  # a JSON value: sent as JSON (a JSON-family type only)
        kind = (given or "application/json").split(";")[0].strip().lower()
        if not (kind == "application/json" or kind.endswith("+json")):
            raise InvalidResponse(f"{MISMATCH} (a JSON body needs a JSON content type)")
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) \
            if kind == "application/json" else json.dumps(body, ensure_ascii=False, indent=2)
        return http_answer(status, rest, text, content_type=given or "application/json")
    content_type = given or "text/html; charset=UTF-8"
    kind = content_type.split(";")[0].strip().lower()
    data: bytes | str = body
    json_family = kind == "application/json" or kind.endswith("+json")
    if _is_binary(kind) or (json_family and _is_base64(body)):
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidResponse(f"{MISMATCH} (a binary content type needs a base64 body)") \
                from None
    if not _is_binary(kind) and "charset" not in content_type.lower():
        content_type += "; charset=UTF-8"
    return http_answer(status, rest, data, content_type=content_type)


def _is_base64(text: str) -> bool:
    """OpenWhisk's `Exec.isBinaryCode`: whether a string decodes as base64 (a JSON text does
    not: braces, quotes and colons are not base64)."""
    stripped = text.strip()
    if not stripped:
        return False
    try:
        base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# --- the call -------------------------------------------------------------------------------------

def _metadata(context) -> None:
    """The activation's environment (OpenWhisk's "action metadata")."""
    namespace = os.environ.setdefault("__OW_NAMESPACE", "_")
    deadline = context.deadline if context.deadline is not None else 0
    os.environ.update({
        "__OW_ACTIVATION_ID": context.execution_id,
        "__OW_ACTION_NAME": f"/{namespace}/{context.function_name}",
        "__OW_ACTION_VERSION": f"0.0.{context.function_version}",
        "__OW_DEADLINE": str(int(deadline * 1000)),
        "__OW_TRANSACTION_ID": context.task_id,
    })


class OpenWhisk:
    def __init__(self, func) -> None:
        self.func = func

    def call(self, event: object, context, http: bool) -> object:
        _metadata(context)
        if not http:
            if event is None:
                event = {}
            if not isinstance(event, dict):
                raise TypeError(f"an OpenWhisk action takes an object, not "
                                f"{type(event).__name__}")
            result = settle(self.func(event))
            if not isinstance(result, (dict, list)):
                raise InvalidResponse("The action did not return a dictionary or array.")
            if isinstance(result, dict) and "error" in result:
                raise ApplicationError(json.dumps(result["error"], ensure_ascii=False))
            return result
        try:
            args = web_action_args(HttpRequest(event))
        except BadRequest as exc:
            return http_answer(400, body=json.dumps({"error": str(exc), "code": context.
                                                     execution_id}),
                               content_type="application/json")
        result = settle(self.func(args))
        if isinstance(result, dict) and "error" in result:  # the error is the answer
            result = result["error"]
        return web_answer(result)


def adapter(name: str, handler: str, load) -> OpenWhisk:
    return OpenWhisk(_load_main(handler, load))
