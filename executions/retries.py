"""Retries of failed attempts, and dead letters (docs/executions.md).

An attempt that ends `failed` or `timed_out` because of the function is retried while the
execution has retries left (`max_retries`, copied from its trigger at dispatch; none for a
synchronous call), after `retry_backoff_seconds * 2**(n-1)` seconds for the n-th retry, capped by
`KUBEFUNCTION_RETRY_MAX_BACKOFF`. A platform failure (the runtime was unavailable or crashed) is
retried whatever the trigger says, up to `KUBEFUNCTION_PLATFORM_RETRIES` times. Errors that would
only repeat (`NOT_RETRIED`) and permanent platform failures are not retried.

This module is the policy: whether, and after how long, a failed attempt runs again. The writes
are `executions.transitions`': a retried attempt is appended to `Execution.attempts` and the
execution goes back to `queued` with the next attempt number in one conditional UPDATE
(`transitions.requeue`); it gets no terminal record and no Celery result. When no retry is left
the execution ends for good; an asynchronous one is then a dead letter.
"""

from __future__ import annotations

import enum
from typing import Protocol

from django.conf import settings

from .models import Execution, ExecutionStatus
from .runtimes.base import Outcome

# The function's contract was broken in a way another attempt would repeat exactly.
NOT_RETRIED = frozenset({"OutputTooLarge", "NonSerializableResult", "HandlerNotFound"})


class RetrySettings(Protocol):
    """What the policy reads of a claimed attempt (`transitions.Claimed`)."""

    max_retries: int
    retry_backoff_seconds: float


class Cause(enum.Enum):
    """Who failed an attempt, which decides whether it is retried."""

    FUNCTION = "function"  # the function's error, exception, timeout or memory limit
    PLATFORM = "platform"  # the runtime was unavailable or crashed: always retried (bounded)
    PERMANENT = "permanent"  # the platform can never run it (e.g. no image): not retried


def backoff(base: float, retry: int) -> float:
    """Seconds before the `retry`-th retry (1-based): base * 2**(retry-1), capped."""
    base = max(float(settings.KUBEFUNCTION_RETRY_MIN_BACKOFF), base)
    return min(float(settings.KUBEFUNCTION_RETRY_MAX_BACKOFF), base * 2 ** min(retry - 1, 40))


def retry_delay(execution_id: str, claimed: RetrySettings, outcome: Outcome, *,
                cause: Cause) -> tuple[float, list[dict]] | None:
    """(seconds before the retry, earlier attempts) when the failed attempt is retried, else
    None. Reads the earlier attempts only when a retry is possible at all, so a failure with
    no retries allowed costs no query."""
    if cause is Cause.PERMANENT or outcome.status == ExecutionStatus.SUCCEEDED:
        return None
    if cause is Cause.FUNCTION and (claimed.max_retries == 0
                                    or outcome.error_type in NOT_RETRIED):
        return None
    earlier = Execution.objects.filter(pk=execution_id).values_list(
        "attempts", flat=True).first() or []
    delay = retry_delay_after(claimed, outcome, earlier=earlier, cause=cause)
    return None if delay is None else (delay, earlier)


def retry_delay_after(claimed: RetrySettings, outcome: Outcome, *, earlier: list[dict],
                      cause: Cause) -> float | None:
    """Seconds before the retry of a failed attempt after the `earlier` attempts, or None
    when no retry is left."""
    if cause is Cause.PERMANENT or outcome.status == ExecutionStatus.SUCCEEDED:
        return None
    platform = cause is Cause.PLATFORM
    retry = 1 + sum(1 for record in earlier if bool(record.get("platform")) == platform)
    # An execution stored before the bounds (or a re-run of one) keeps within them too.
    allowed = settings.KUBEFUNCTION_PLATFORM_RETRIES if platform else min(
        claimed.max_retries, settings.KUBEFUNCTION_MAX_RETRIES_LIMIT)
    if retry > allowed:
        return None
    return backoff(1.0 if platform else claimed.retry_backoff_seconds, retry)


def platform_retry_left(earlier: list[dict]) -> bool:
    """Whether an execution with these earlier attempts may have one more platform retry."""
    used = sum(1 for record in earlier if record.get("platform"))
    return used < settings.KUBEFUNCTION_PLATFORM_RETRIES

