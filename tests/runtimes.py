"""A runtime for one test: built under the test's settings, closed after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

R = TypeVar("R")


def runtime_under(settings: Any, build: Callable[[], R], **values: Any) -> Iterator[R]:
    """For a fixture to `yield from`: set `values` on pytest-django's `settings`, then yield
    `build()` and close it once the test is done."""
    for name, value in values.items():
        setattr(settings, name, value)
    runtime = build()
    yield runtime
    runtime.close()  # type: ignore[attr-defined]
