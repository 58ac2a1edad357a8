"""Database writes of the run path that must survive a Postgres restart.

A worker that has run a function holds its outcome in memory; if the database is away when the
outcome is stored, `retrying` keeps trying (reconnecting each time) for a bounded time instead
of losing the outcome or running the function again. The claim uses the same loop, and when the
database stays away it raises `ServiceUnavailable`, so the run task rejects its message with
requeue (it is not acknowledged) and the execution is tried again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from kubefunction.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _reconnect() -> None:
    """Drop the broken connection: the next query opens a new one."""
    try:
        connection.close()
    except Exception:  # closing a dead connection may itself fail; it is dropped either way
        logger.debug("closing the broken database connection failed", exc_info=True)


def retrying(write: Callable[..., T], *args, what: str, seconds: float | None = None,
             **kwargs) -> T:
    """Call `write(*args, **kwargs)`, retrying on a lost database connection with backoff
    (0.2 s doubling up to 5 s) for up to `seconds` (KUBEFUNCTION_DB_RETRY_SECONDS); then raise
    `ServiceUnavailable`. Inside a transaction nothing is retried (the transaction is lost)."""
    budget = settings.KUBEFUNCTION_DB_RETRY_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + budget
    delay = 0.2
    attempt = 1
    while True:
        try:
            return write(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable(
                    f"the database is unavailable: could not {what} after {attempt} "
                    f"attempt(s) in {budget:.0f} s ({exc})") from exc
            logger.warning("database unavailable (%s); %s: attempt %d failed, retrying in "
                           "%.1f s", exc.__class__.__name__, what, attempt, min(delay, left))
            _reconnect()
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
            attempt += 1
