"""Google Cloud Functions (Cloud Run functions), Python: the Functions Framework runs the function.

The function runs inside the real framework (`functions-framework` 3.x, which the registry's
`requires` makes the build install): `functions_framework.create_app(target, source)` loads the
source file (`main.py`, as GCF does) and builds its Flask app, deciding the signature type as
GCF does: the `@functions_framework.http` / `@functions_framework.cloud_event` decorators, else
the FUNCTION_SIGNATURE_TYPE environment variable (a function's environment may set `cloudevent`
or `event`), else `http`. The app gets PROPAGATE_EXCEPTIONS, so an error the function raises
fails the execution with the function's traceback (on GCF: a 500 page, `X-Google-Status:
crash`); a werkzeug HTTPException (`flask.abort(404)`) is still the framework's answer.

Mapping (docs/porting.md, "Google Cloud Functions"):
- A webhook call is the WSGI request `HttpRequest.environ()` describes, driven through the
  app: `request.path` is the path after the trigger's URL (the function's URL on GCF), and the
  answer is whatever Flask made of the return value (a string, a dict as JSON, a
  `(body, status[, headers])` tuple, a `flask.Response`): status, every header (repeats kept),
  body. A CloudEvent function behind a webhook gets the request as GCF passes it: a CloudEvent
  in binary (`ce-*` headers) or structured mode, answered "OK"; anything else is the framework's
  400, a GET its 405.
- A dispatch to an HTTP function is `dispatch_request` (POST / with the payload as JSON); the
  output is the answer's body, parsed when its content type is JSON, else its text (base64 when
  it is not UTF-8). A dispatch to a CloudEvent function is a structured CloudEvent (specversion
  1.0, type `dev.kubefunction.dispatch`, source `//kubefunction/<function name>`, id the
  execution id, data the payload), parsed by the framework's own `from_http`; the output is the
  function's return value (GCF ignores it). A legacy background function (`event` type) gets
  (payload, Context) alike.
- Environment, where the function's own does not set them: K_SERVICE (the function's name),
  K_REVISION (its version), PORT=8080; the framework sets FUNCTION_TARGET and
  FUNCTION_SIGNATURE_TYPE.
- Not supported: `@functions_framework.aio` (ASGI) functions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

from .base import HttpRequest, InvalidResponse, answer_output, dispatch_request, wsgi_answer

DISPATCH_TYPE = "dev.kubefunction.dispatch"


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + \
        f".{int(epoch % 1 * 1000000):06d}Z"


# --- the adapter ------------------------------------------------------------------------------

class Broken:
    """A function the framework refused to load: every call reports why."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def call(self, event: object, context, http: bool) -> object:
        raise self.exc


class CloudFunction:
    def __init__(self, app, function, signature_type: str) -> None:
        self.app = app
        self.function = function
        self.signature_type = signature_type
        self.environment_set = False

    def call(self, event: object, context, http: bool) -> object:
        if not self.environment_set:
            os.environ.setdefault("K_SERVICE", context.function_name)
            os.environ.setdefault("K_REVISION", str(context.function_version))
            os.environ.setdefault("PORT", "8080")
            self.environment_set = True
        if http:
            return wsgi_answer(self.app, HttpRequest(event))
        if self.signature_type == "cloudevent":
            return self._cloud_event(event, context)
        if self.signature_type == "event":
            return self._background_event(event, context)
        return answer_output(wsgi_answer(self.app, dispatch_request(event)))

    def _cloud_event(self, event: object, context) -> object:
        import flask
        from cloudevents.http import from_http

        structured = json.dumps({
            "specversion": "1.0", "type": DISPATCH_TYPE,
            "source": f"//kubefunction/{context.function_name}", "id": context.execution_id,
            "time": rfc3339(time.time()), "datacontenttype": "application/json",
            "data": event}, ensure_ascii=False)
        request = HttpRequest({"method": "POST", "path": "/", "body": structured,
                               "headers": [["content-type", "application/cloudevents+json"]]})
        with self.app.request_context(request.environ()):
            cloud_event = from_http(flask.request.headers, flask.request.get_data())
            return self.function(cloud_event)

    def _background_event(self, event: object, context) -> object:
        from google.cloud.functions.context import Context

        background = Context(eventId=context.execution_id, timestamp=rfc3339(time.time()),
                             eventType=DISPATCH_TYPE,
                             resource=f"//kubefunction/{context.function_name}")
        with self.app.test_request_context("/", method="POST"):
            return self.function(event, background)


def _source_file(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return origin if origin and origin.endswith(".py") and os.path.isfile(origin) else None


def adapter(name: str, handler: str, load):
    module, _, target = handler.rpartition(".")
    source = _source_file(module) if module and target else None
    if source is None:
        load(handler)  # the runner's own HandlerNotFound
        return Broken(ImportError(f"the source of module '{module}' is not a .py file"))
    try:
        import functions_framework
        from functions_framework import _function_registry
    except ImportError as exc:
        return Broken(exc)
    try:
        app = functions_framework.create_app(target, source)
    except Exception as exc:  # the module raised on import, or the target is not a function
        stem = os.path.splitext(os.path.basename(source))[0]
        sys.modules.pop(stem, None)
        sys.modules.pop(module, None)
        load(handler)  # reports an import error or a missing function as every convention does
        return Broken(exc)
    if not hasattr(app, "wsgi_app"):  # an ASGI app: @functions_framework.aio
        return Broken(InvalidResponse("ASGI functions (@functions_framework.aio) are not "
                                      "supported: use the WSGI decorators"))
    app.config["PROPAGATE_EXCEPTIONS"] = True
    signature_type = _function_registry.get_func_signature_type(target, None)
    loaded = sys.modules.get(os.path.splitext(os.path.basename(source))[0])
    function = getattr(loaded, target, None)
    return CloudFunction(app, function, signature_type)

