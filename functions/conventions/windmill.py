"""Windmill: `main(a: str, b: int = 1)` takes the event's fields as keyword arguments.

(Minimal first cut: the event object's keys as arguments; a webhook's JSON body object, merged
over its query parameters.)
"""

from __future__ import annotations

import json

from .base import HttpRequest, http_answer, settle


class Windmill:
    def __init__(self, func) -> None:
        self.func = func

    def call(self, event: object, context: object, http: bool) -> object:
        if http:
            request = HttpRequest(event)
            args: object = dict(request.query_pairs())
            if request.body.strip():
                body = request.json()
                if isinstance(body, dict):
                    args.update(body)
        else:
            args = event
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise TypeError(f"a Windmill script takes its arguments from an object, not "
                            f"{type(args).__name__}")
        result = settle(self.func(**args))
        if http:  # a webhook answers the result as JSON
            return http_answer(200, body=json.dumps(result), content_type="application/json")
        return result


def adapter(name: str, handler: str, load) -> Windmill:
    return Windmill(load(handler))
