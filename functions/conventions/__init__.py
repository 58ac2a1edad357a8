"""Conventions: how a function written for another platform is called, and how its answer is read.

A function's *convention* (`Function.convention`, copied to each version) names the platform whose
calling style its source follows. The runner (functions/runner.py) hands the invocation to the
convention's adapter, which builds that platform's event, context or request object, calls the
function as that platform would, and turns its answer into JSON: for an HTTP invocation (a
webhook call) always the HTTP answer `base.http_answer` makes, which the webhook serves.

Standard library only, no Django: the runner loads this package by path, next to itself (in
images at /opt/kubefunction/conventions/, in the local sandbox at /function/conventions/), under
a private module name so it cannot collide with the function's own modules. A convention that
needs a platform's own types either builds faithful lightweight equivalents here or imports the
real package, which `requires` makes the version's build install. The Django side reads only
`CONVENTIONS` (choices, default entry points, implied requirements).

The default convention ("") is not here: the runner's own `Handler` serves it unchanged.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    """What the platform side knows of a convention."""

    name: str
    label: str
    # Entry-point function names tried, in order, when the handler is not named: a single file
    # `f.py` gets `f.<name>`; an archive `<module>.<name>` for each of `modules`.
    entry_points: tuple[str, ...]
    modules: tuple[str, ...] = ()
    # Requirements the version's build installs when the upload does not name them (the
    # platform's own package the function imports or the adapter runs it with).
    requires: tuple[str, ...] = ()
    # The adapter module in this package (runner side).
    module: str = ""


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("lambda", "AWS Lambda (handler(event, context); API Gateway events)",
               ("lambda_handler", "handler"), ("lambda_function", "app", "handler"),
               module="aws_lambda"),
    Convention("openfaas", "OpenFaaS classic python3 (handle(req): string in, string out)",
               ("handle",), ("handler", "function.handler"), module="openfaas"),
    Convention("openfaas-http", "OpenFaaS python3-http (handle(event, context))",
               ("handle",), ("handler", "function.handler"), module="openfaas"),
    Convention("openwhisk", "Apache OpenWhisk (main(args); web actions)",
               ("main",), ("__main__", "main"), module="openwhisk"),
    Convention("cloudfunctions", "Google Cloud Functions (Functions Framework)",
               ("function", "main"), ("main",), requires=("functions-framework>=3,<4",),
               module="cloudfunctions"),
    Convention("fission", "Fission python environment (main() with flask.request)",
               ("main",), ("main", "user"), requires=("flask>=2,<4",), module="fission"),
    Convention("knative", "Knative func python http template (new() -> ASGI handle)",
               ("new", "handle"), ("function.func", "func"), module="knative"),
    Convention("azure", "Azure Functions v1 model (main(req: func.HttpRequest))",
               ("main", "app"), ("__init__", "function_app"),
               requires=("azure-functions>=1.11,<3",), module="azure"),
    Convention("nuclio", "Nuclio (handler(context, event))",
               ("handler",), ("main", "handler"), module="nuclio"),
    Convention("windmill", "Windmill (main(**arguments from the event))",
               ("main",), ("main", "script"), module="windmill"),
)}

DEFAULT = ""
CHOICES = [(DEFAULT, "KubeFunction (default): handle(event[, context])")] + [
    (c.name, c.label) for c in CONVENTIONS.values()]


def adapter(name: str, handler: str, load):
    """The runner's callable target for `handler` under convention `name`.

    `load(handler)` is the runner's loader: it imports `module.attr` and returns the object, or
    raises the runner's `Failure` (HandlerNotFound, ImportError) the way the default convention
    reports it. The adapter answers `call(event, context, http)`: `event` is the dispatch's
    payload, or with `http` true the webhook's request description (`base.HttpRequest`).
    """
    convention = CONVENTIONS.get(name)
    if convention is None:
        raise ValueError(f"unknown convention {name!r}")
    module = importlib.import_module(f"{__name__}.{convention.module}")
    return module.adapter(convention.name, handler, load)
