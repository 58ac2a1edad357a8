"""Runtimes: where an invocation runs. `get_runtime(name)` returns one shared instance per name."""

from __future__ import annotations

from functools import cache

from django.utils.module_loading import import_string

from .base import Runtime

RUNTIMES = {
    "local": "executions.runtimes.local.LocalRuntime",
}


@cache
def get_runtime(name: str) -> Runtime:
    """The runtime called `name`, built once per process."""
    try:
        path = RUNTIMES[name]
    except KeyError:
        known = ", ".join(sorted(RUNTIMES))
        raise ValueError(f"unknown runtime '{name}' (known: {known})") from None
    return import_string(path)()
