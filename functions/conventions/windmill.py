"""Windmill: `main(name: str, n: int = 1)`: the event's fields are the script's keyword
arguments, typed by its signature; the return value is the result.

Mapping (docs/porting.md, "Windmill"), after Windmill's Python wrapper and its webhooks
(`/api/w/<workspace>/jobs/run_wait_result/p/<path>`):

- A dispatch's payload is the arguments object; a webhook's JSON body object too, merged over
  its query parameters (a `payload` query parameter holds base64url JSON arguments, as
  Windmill's GET webhooks take them). A body that is JSON but not an object is the argument
  `body`; `?raw=true` adds the body text as `raw_string`; `?include_header=a,b` adds those
  request headers as arguments (their names with `-` as `_`).
- Only the parameters `main` declares are passed (all with `**kwargs`); a missing required one
  fails with a TypeError naming it. Values are converted to the annotation as Windmill's UI
  and wrapper do: `int`, `float`, `bool` from strings (query parameters), `bytes` from base64,
  `datetime`/`date` from ISO 8601 strings.
- A webhook answers the result as JSON (200 application/json), as `run_wait_result` does; a
  dispatch's output is the result.

Not supported: Windmill resources and variables (`wmill.get_resource`, `wmill.get_variable`):
give the function environment variables instead; flows; `wmill` state.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import inspect
import json
import typing

from .base import HttpRequest, http_answer, settle

RESERVED_QUERY = ("payload", "raw", "include_header")


def webhook_args(request: HttpRequest) -> dict:
    """The arguments a Windmill webhook call carries."""
    query = request.query_dict()
    args: dict = {k: v for k, v in query.items() if k not in RESERVED_QUERY}
    if query.get("payload"):
        text = query["payload"]
        try:
            payload = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            raise TypeError("the payload query parameter is not base64url JSON") from None
        if isinstance(payload, dict):
            args.update(payload)
    if request.body.strip() and request.is_json():
        body = request.json()
        if isinstance(body, dict):
            args.update(body)
        else:
            args["body"] = body
    if query.get("raw") == "true":
        args["raw_string"] = request.text()
    for name in filter(None, (n.strip() for n in query.get("include_header", "").split(","))):
        value = request.header(name)
        if value is not None:
            args[name.replace("-", "_")] = value
    return args


def _convert(value: object, annotation: object) -> object:
    """`value` as the parameter's annotation wants it (values already right are kept)."""
    if annotation is inspect.Parameter.empty or value is None:
        return value
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[int]: the first type that is not None
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0] if options else annotation
    if annotation is bool and isinstance(value, str):
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off", ""):
            return False
    elif annotation in (int, float) and isinstance(value, str):
        try:
            return annotation(value)
        except ValueError:
            raise TypeError(f"{value!r} is not an {annotation.__name__}") from None
    elif annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif annotation is bytes and isinstance(value, str):
        return base64.b64decode(value)
    elif annotation is datetime.datetime and isinstance(value, str):
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif annotation is datetime.date and isinstance(value, str):
        return datetime.date.fromisoformat(value)
    return value


class Windmill:
    def __init__(self, func) -> None:
        self.func = func
        signature = inspect.signature(func)
        self.params = signature.parameters
        try:
            self.hints = typing.get_type_hints(func)
        except Exception:  # an annotation that does not resolve: use the raw ones
            self.hints = {}
        self.takes_any = any(p.kind == p.VAR_KEYWORD for p in self.params.values())

    def arguments(self, args: dict) -> dict:
        kwargs = {}
        for name, value in args.items():
            param = self.params.get(name)
            if param is None:
                if self.takes_any:
                    kwargs[name] = value
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                continue
            kwargs[name] = _convert(value, self.hints.get(name, param.annotation))
        missing = [name for name, p in self.params.items()
                   if p.default is p.empty and name not in kwargs
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise TypeError(f"main() is missing the argument{'s' * (len(missing) > 1)} "
                            f"{', '.join(missing)}")
        return kwargs

    def call(self, event: object, context: object, http: bool) -> object:
        args = webhook_args(HttpRequest(event)) if http else event
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise TypeError(f"a Windmill script takes its arguments from an object, not "
                            f"{type(args).__name__}")
        result = settle(self.func(**self.arguments(args)))
        if http:
            return http_answer(200, body=json.dumps(result, default=str),
                               content_type="application/json")
        return result


def adapter(name: str, handler: str, load) -> Windmill:
    return Windmill(load(handler))
