"""What the functions app needs of the executions app, which sits above it.

executions/ runs what functions/ defines and builds, so it imports functions/ and never the
reverse. Two things functions/ needs come from there: the runtime a version is built for (whether
it runs images; otherwise its `prepare`, e.g. the local runtime installing the requirements on
the worker) and how many executions of a function wait or run (the function's admin page and API
show them). functions/ asks them through this one narrow interface, which the executions app
connects when Django starts (`executions/apps.py`); nothing in functions/ imports executions/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured

from .specs import FunctionSpec, PrepareResult


class BuildTarget(Protocol):
    """What a build needs of a runtime (`executions.runtimes.base.Runtime` is one)."""

    runs_images: bool  # the version runs as the image `functions.images` builds

    def needs_prepare(self, spec: FunctionSpec) -> bool: ...

    def prepare(self, spec: FunctionSpec) -> PrepareResult: ...


@dataclass(frozen=True)
class Executor:
    runtime: Callable[[str], BuildTarget]  # the runtime called `name`
    waiting_counts: Callable[[Iterable[int]], dict[int, int]]  # queued executions per function
    running_count: Callable[[int], int]  # executions of one function running now


_connected: Executor | None = None


def connect(executor: Executor) -> None:
    """Called once by the executions app when it is ready."""
    global _connected
    _connected = executor


def _executor() -> Executor:
    if _connected is None:
        raise ImproperlyConfigured("no executor is connected: the executions app connects it "
                                   "when Django starts (it must be in INSTALLED_APPS)")
    return _connected


def runtime(name: str) -> BuildTarget:
    """The runtime called `name`, as a build sees it."""
    return _executor().runtime(name)


def waiting_counts(function_ids: Iterable[int]) -> dict[int, int]:
    """Queued executions per function among `function_ids` (functions with none are absent),
    in one query."""
    return _executor().waiting_counts(function_ids)


def running_count(function_id: int) -> int:
    """Executions of the function running now."""
    return _executor().running_count(function_id)
