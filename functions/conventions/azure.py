"""Azure Functions (Python): the v1 programming model, `def main(req: func.HttpRequest) ->
func.HttpResponse` in `<FunctionName>/__init__.py`, and the v2 model, `app = func.FunctionApp()`
with `@app.route(...)` functions in `function_app.py`. The request, response and context types
are the real `azure.functions` package's (the convention's `requires` installs it).

Mapping (docs/porting.md, "Azure Functions"):

- The trigger's URL `/t/<name>` is the function's URL. v1: `https://<app>/api/<FunctionName>`,
  and what follows it is a catch-all route parameter, as if function.json's route were
  `<FunctionName>/{*path}`: `req.route_params == {"path": "orders/42"}` (no key for none).
  function.json is not read (its httpTrigger `methods`, `route` and `authLevel` do not apply: the
  trigger's own access decides). v2: the trigger's URL is the app's `/api` route prefix; the path
  after it picks the `@app.route` function whose route template matches (`orders/{id:int}`,
  `{name?}`, `{*rest}`; the default route is the function's name) and whose `methods` allow the
  request's method, else 404 as the Functions host answers; `route_params` are the template's.
- `func.HttpRequest(method, url, headers, params, route_params, body)`: `url` is the full URL
  called; header names lower case (the type does that), a repeated header or query parameter
  joined with "," as the host's StringValues are.
- `context` (a parameter named `context`, as the worker detects it): a `func.Context` with
  `invocation_id` (the execution id), `function_name` (v1: the function's folder,
  `<FunctionName>`, or ours for a single file; v2: the function's name in the app),
  `function_directory` (the function's module's folder), `trace_context` (`traceparent` and
  `tracestate` from the request, else a new W3C traceparent), `retry_context` (retry_count =
  attempt - 1), `thread_local_storage`.
- Answers, as the worker's HttpResponseConverter encodes them (it is the one used): a
  `func.HttpResponse` (its status, headers, mimetype/charset as Content-Type when none is set;
  repeated headers keep the last value, except Set-Cookie, sent one by one), a `str` (200
  `text/plain; charset=utf-8`), None (204 No Content, the HTTP trigger's default); anything else
  (a dict, bytes, a number) is refused as the worker refuses it: InvalidResponse, webhook 502.
- `logging` (the root logger, which Azure's templates log with) goes to the execution's logs at
  INFO and above, as the worker forwards it.
- A dispatch is `POST /` with the payload as its JSON body; the output is the answer's body,
  parsed when its Content-Type is JSON, else its text. In a v2 app, the route that takes
  `POST /`, else the app's only HTTP function; none: InvalidResponse.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import secrets
import sys
import threading

from .base import HttpRequest, InvalidResponse, answer_output, dispatch_request, http_answer, settle

STRING_TYPE = "text/plain; charset=utf-8"


def _joined(pairs) -> dict[str, str]:
    joined: dict[str, str] = {}
    for key, value in pairs:
        joined[key] = joined[key] + "," + value if key in joined else value
    return joined


# --- routes ---------------------------------------------------------------------------------------

_CONSTRAINTS = {"int": r"-?\d+", "long": r"-?\d+", "alpha": r"[A-Za-z]+",
                "bool": r"(?i:true|false)",
                "guid": r"[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}"}


def route_match(template: str, path: str) -> dict[str, str] | None:
    """The route parameters when `path` (after the /api prefix) matches the ASP.NET route
    `template`, else None. Parameters fill whole segments: `{name}`, `{name?}`, `{name:int}`,
    `{*name}` (the rest of the path); literals match without regard to case."""
    wanted = [part for part in template.strip("/").split("/") if part]
    given = [part for part in path.strip("/").split("/") if part]
    params: dict[str, str] = {}
    for index, segment in enumerate(wanted):
        match = re.fullmatch(r"\{(\*{1,2})?([A-Za-z_]\w*)((?::[^}?]+)*)(\?)?\}", segment)
        if match is None:
            if index >= len(given) or given[index].lower() != segment.lower():
                return None
            continue
        star, name, constraints, optional = match.groups()
        if star:
            if index < len(given):
                params[name] = "/".join(given[index:])
            return params
        if index >= len(given):
            if optional:
                continue
            return None
        for constraint in filter(None, constraints.split(":")):
            pattern = _CONSTRAINTS.get(constraint.split("(")[0].lower())
            if pattern and not re.fullmatch(pattern, given[index]):
                return None
        params[name] = given[index]
    return params if len(given) <= len(wanted) else None


# --- the context ----------------------------------------------------------------------------------

def _context_types():
    import azure.functions as func

    class TraceContext(func._abc.TraceContext):
        def __init__(self, parent: str, state: str) -> None:
            self._parent, self._state = parent, state

        @property
        def trace_parent(self) -> str:
            return self._parent

        @property
        def trace_state(self) -> str:
            return self._state

        @property
        def attributes(self) -> dict:
            return {}

    class RetryContext(func._abc.RetryContext):
        def __init__(self, count: int) -> None:
            self._count = count

        @property
        def retry_count(self) -> int:
            return self._count

        @property
        def max_retry_count(self) -> int:
            return 0  # no retry policy of Azure's: the trigger's own retries count in retry_count

        @property
        def exception(self):
            return None

    class Context(func.Context):
        def __init__(self, invocation_id, function_name, directory, trace, retry) -> None:
            self._invocation_id = invocation_id
            self._function_name = function_name
            self._directory = directory
            self._trace, self._retry = trace, retry
            self._local = threading.local()
            self._local.invocation_id = invocation_id

        @property
        def invocation_id(self) -> str:
            return self._invocation_id

        @property
        def function_name(self) -> str:
            return self._function_name

        @property
        def function_directory(self) -> str:
            return self._directory

        @property
        def trace_context(self):
            return self._trace

        @property
        def retry_context(self):
            return self._retry

        @property
        def thread_local_storage(self):
            return self._local

    return TraceContext, RetryContext, Context


class _StderrHandler(logging.Handler):
    """The root logger's records to the current sys.stderr (the runner swaps it per call)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must not fail the function
            self.handleError(record)


def _install_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


# --- the answer -----------------------------------------------------------------------------------

def response_answer(value: object) -> dict:
    """The HTTP answer the Functions host gives for the function's return value."""
    import azure.functions as func
    from azure.functions.http import HttpResponseConverter

    if value is None:
        return http_answer(204)
    if isinstance(value, str):
        return http_answer(200, body=value, content_type=STRING_TYPE)
    if not isinstance(value, func._abc.HttpResponse):
        raise InvalidResponse(f'unable to encode outgoing TypedData: unsupported type "http" for '
                              f'Python type "{type(value).__name__}" (return a '
                              "func.HttpResponse or a str)")
    datum = HttpResponseConverter.encode(value, expected_type=None).value
    try:
        status = int(datum["status_code"].value)
    except ValueError:
        raise InvalidResponse(f"the status code is not a number: "
                              f"{datum['status_code'].value!r}") from None
    pairs = [[name, one.value] for name, one in datum["headers"].items()]
    for cookie in datum.get("cookies") or []:
        pairs.extend(["Set-Cookie", morsel.OutputString()] for morsel in cookie.values())
    return http_answer(status, pairs, datum["body"].value)


# --- the call -------------------------------------------------------------------------------------

class Azure:
    def __init__(self, target, handler: str) -> None:
        import azure.functions as func

        self.func = func
        self.handler = handler
        self.types = _context_types()
        # v2: a FunctionApp's HTTP functions, as (route, methods, binding name, function).
        self.routes: list[tuple[str, set[str] | None, str, str, object]] | None = None
        if hasattr(target, "get_functions"):
            self.routes = []
            for function in target.get_functions():
                trigger = function.get_trigger()
                if getattr(trigger, "type", "") != "httpTrigger":
                    continue
                route = trigger.route if trigger.route is not None else \
                    function.get_function_name()
                methods = {str(getattr(m, "value", m)).upper() for m in trigger.methods or ()}
                self.routes.append((route, methods or None, function.get_function_name(),
                                    trigger.name, function.get_user_function()))
        else:
            self.target = target
        _install_logging()
        os.environ.setdefault("FUNCTIONS_WORKER_RUNTIME", "python")

    def _request(self, request: HttpRequest, route_params: dict):
        return self.func.HttpRequest(
            request.method, request.url, headers=_joined(request.headers),
            params=_joined(request.query_pairs()), route_params=route_params,
            body=request.body)

    def _context(self, context, request: HttpRequest, function, name: str | None) -> object:
        trace, retry, make = self.types
        parent = request.header("traceparent") or \
            f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        try:
            path = os.path.abspath(inspect.getfile(function))
        except TypeError:
            path = os.path.join(os.getcwd(), "function_app.py")
        directory = os.path.dirname(path)
        if name is None:  # v1: the function is its folder, <FunctionName>/__init__.py
            name = os.path.basename(directory) if os.path.basename(path) == "__init__.py" \
                else context.function_name
        return make(context.execution_id, name, directory,
                    trace(parent, request.header("tracestate") or ""),
                    retry(max(0, context.attempt - 1)))

    def _invoke(self, function, binding: str | None, request, context) -> object:
        """Call `function` as the worker does: the request by its binding's name (v1: the first
        parameter that is not `context`), the context when a parameter is named `context`."""
        try:
            names = list(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            names = []
        kwargs = {}
        if "context" in names:
            kwargs["context"] = context
        if binding is None:
            binding = next((n for n in names if n != "context"), None)
        if binding is None:
            raise InvalidResponse("the function takes no HTTP request parameter")
        kwargs[binding] = request
        return settle(function(**kwargs))

    def call(self, event: object, context, http: bool) -> object:
        request = HttpRequest(event) if http else dispatch_request(event)
        if self.routes is None:
            rest = request.path.strip("/")
            route_params = {"path": rest} if rest else {}
            value = self._invoke(self.target, None, self._request(request, route_params),
                                 self._context(context, request, self.target, None))
        else:
            found = self._route(request, http)
            if found is None:
                if not http:
                    raise InvalidResponse("a dispatch is POST / and no route of the app takes it "
                                          "(an app of one HTTP function gets every dispatch)")
                return http_answer(404)  # as the Functions host answers an unknown route
            function, name, binding, route_params = found
            value = self._invoke(function, binding, self._request(request, route_params),
                                 self._context(context, request, function, name))
        answer = response_answer(value)
        return answer if http else answer_output(answer)

    def _route(self, request: HttpRequest, http: bool):
        for route, methods, name, binding, function in self.routes or ():
            params = route_match(route, request.path)
            if params is not None and (methods is None or request.method in methods):
                return function, name, binding, params
        if not http and len(self.routes or ()) == 1:  # a dispatch: the app's one function
            _, _, name, binding, function = self.routes[0]
            return function, name, binding, {}
        return None


def _load(handler: str, load):
    """The handler's object: a function (v1), or a FunctionApp (v2), which is not callable."""
    try:
        return load(handler)
    except Exception as exc:
        if getattr(exc, "error_type", "") != "HandlerNotFound" or "." not in handler:
            raise
        module, _, attr = handler.rpartition(".")
        found = getattr(sys.modules.get(module), attr, None)
        if found is None or not hasattr(found, "get_functions"):
            raise
        return found


def adapter(name: str, handler: str, load) -> Azure:
    return Azure(_load(handler, load), handler)
