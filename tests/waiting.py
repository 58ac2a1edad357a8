"""Polling for the tests: wait until something the code under test does in the background holds."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], seconds: float = 5.0, *,
               every: float = 0.1) -> bool:
    """True as soon as `predicate()` holds (polled every `every` seconds), False if it still
    fails after `seconds` (asked once more at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())
