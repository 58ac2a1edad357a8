"""Retries of failed attempts, and dead letters (docs/executions.md).

An attempt that ends `failed` or `timed_out` because of the function is retried while the
execution has retries left (`max_retries`, copied from its trigger at dispatch; none for a
synchronous call), after `retry_backoff_seconds * 2**(n-1)` seconds for the n-th retry, capped by
`KUBEFUNCTION_RETRY_MAX_BACKOFF`. A platform failure (the runtime was unavailable or crashed) is
retried whatever the trigger says, up to `KUBEFUNCTION_PLATFORM_RETRIES` times. Errors that would
only repeat (`NOT_RETRIED`) and permanent platform failures are not retried.

A retried attempt is appended to `Execution.attempts` and the execution goes back to `queued`
with the next attempt number in one conditional UPDATE; it gets no terminal record and no Celery
result. When no retry is left the execution ends for good; an asynchronous one is then a dead
letter.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from .models import Execution, ExecutionStatus
from .run_store import Claimed, bounded_figures, storable
from .runtimes.base import Outcome

# The function's contract was broken in a way another attempt would repeat exactly.
NOT_RETRIED = frozenset({"OutputTooLarge", "NonSerializableResult", "HandlerNotFound"})
# Characters kept of each earlier attempt's error and logs (head and tail).
ATTEMPT_TEXT_CHARS = 4000


class Cause(enum.Enum):
    """Who failed an attempt, which decides whether it is retried."""

    FUNCTION = "function"  # the function's error, exception, timeout or memory limit
    PLATFORM = "platform"  # the runtime was unavailable or crashed: always retried (bounded)
    PERMANENT = "permanent"  # the platform can never run it (e.g. no image): not retried


def bounded(text: str, limit: int = ATTEMPT_TEXT_CHARS) -> str:
    """`text` cut to its first and last `limit / 2` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n… ({len(text) - limit} characters cut) …\n{text[-half:]}"


def backoff(base: float, retry: int) -> float:
    """Seconds before the `retry`-th retry (1-based): base * 2**(retry-1), capped."""
    base = max(float(settings.KUBEFUNCTION_RETRY_MIN_BACKOFF), base)
    return min(float(settings.KUBEFUNCTION_RETRY_MAX_BACKOFF), base * 2 ** min(retry - 1, 40))


def attempt_record(claimed: Claimed, outcome: Outcome, *, worker: str, cause: Cause,
                   finished_at: datetime) -> dict[str, Any]:
    """What `Execution.attempts` keeps of one failed attempt."""
    return {
        "attempt": claimed.attempt, "status": outcome.status,
        "error_type": storable(outcome.error_type[:200]), "error": storable(bounded(outcome.error)),
        "logs": storable(bounded(outcome.logs)), "worker": worker,
        "exit_code": bounded_figures({"exit_code": outcome.exit_code})["exit_code"],
        "platform": cause is Cause.PLATFORM, "started_at": claimed.started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
    }


def retry_delay(execution_id: str, claimed: Claimed, outcome: Outcome, *,
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


def retry_delay_after(claimed: Claimed, outcome: Outcome, *, earlier: list[dict],
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


def requeue(execution_id: str, claimed: Claimed, outcome: Outcome, *, worker: str,
            cause: Cause, earlier: list[dict], countdown: float = 0.0) -> bool:
    """Record the failed attempt and put the execution back in the queue as the next attempt,
    due at a worker in `countdown` seconds (`due_at`, which the reaper watches).

    One conditional UPDATE from `running` at this attempt: False (nothing written) when the
    execution moved on meanwhile.
    """
    now = timezone.now()
    record = attempt_record(claimed, outcome, worker=worker, cause=cause, finished_at=now)
    return bool(Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, attempt=claimed.attempt,
    ).update(status=ExecutionStatus.QUEUED, attempt=F("attempt") + 1,
             attempts=[*earlier, record], started_at=None, worker="",
             due_at=now + timedelta(seconds=max(0.0, countdown))))


def platform_retry_left(earlier: list[dict]) -> bool:
    """Whether an execution with these earlier attempts may have one more platform retry."""
    used = sum(1 for record in earlier if record.get("platform"))
    return used < settings.KUBEFUNCTION_PLATFORM_RETRIES


def requeue_lost(execution_id: str, *, attempt: int, worker: str, started_at: datetime | None,
                 earlier: list[dict], reason: str) -> bool:
    """Record a `running` attempt whose worker process died (error type `WorkerLost`, a
    platform failure) and put the execution back in the queue as the next attempt, due now.

    Conditional on the execution still being `running` at that attempt on that worker, so a
    run that finishes at the same moment, or another recovery, wins and nothing is written.
    """
    now = timezone.now()
    record = {
        "attempt": attempt, "status": ExecutionStatus.FAILED, "error_type": "WorkerLost",
        "error": bounded(reason), "logs": "", "exit_code": None, "worker": worker,
        "platform": True, "started_at": started_at.isoformat() if started_at else None,
        "finished_at": now.isoformat(),
    }
    return bool(Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, attempt=attempt, worker=worker,
    ).update(status=ExecutionStatus.QUEUED, attempt=F("attempt") + 1,
             attempts=[*earlier, record], started_at=None, worker="", due_at=now))
