"""Fission's python environment: `def main():` with no arguments, reading `flask.request`.

Fission's environment server (fission/environments python/server.py) is a Flask app that routes
`/` and `/<path:path>`, for GET, POST, PUT, HEAD, OPTIONS and DELETE, to one view calling the
user's `main()` with no arguments and returning what it returns, which Flask turns into the
answer (a string, a dict as JSON, a `(body, status[, headers])` tuple, a `Response`). This
adapter builds that app around the loaded `main` and drives it with the webhook's request
(`HttpRequest.environ()`), so the answer is Flask's: status, every header (repeats kept), body;
a PATCH is Flask's 405, as on Fission. Differences: the app has no static route (Fission's
app keeps Flask's `/static/...`), nor Fission's own `/healthz` and `/specialize` routes; and an
error `main` raises fails the execution with its traceback (PROPAGATE_EXCEPTIONS) instead of
Flask's 500 page. A dispatch is `dispatch_request` (POST / with the payload as JSON) and its
output the answer's body, parsed when it is JSON.
"""

from __future__ import annotations

from .base import HttpRequest, answer_output, dispatch_request, wsgi_answer

METHODS = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]


def fission_app(userfunc):
    """The Flask app Fission's python environment serves `userfunc` with."""
    import flask

    app = flask.Flask("fission", static_folder=None)
    app.config["PROPAGATE_EXCEPTIONS"] = True

    def userfunc_call(*args, **kwargs):
        return userfunc(*args)

    app.add_url_rule("/", "userfunc_call", userfunc_call, methods=METHODS)
    app.add_url_rule("/<path:path>", "userfunc_call", userfunc_call, methods=METHODS)
    return app


class Fission:
    def __init__(self, func) -> None:
        self.app = fission_app(func)

    def call(self, event: object, context, http: bool) -> object:
        if http:
            return wsgi_answer(self.app, HttpRequest(event))
        return answer_output(wsgi_answer(self.app, dispatch_request(event)))


def adapter(name: str, handler: str, load) -> Fission:
    return Fission(load(handler))
