"""Reads over executions that commands, pages and the API share."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.db.models import Count

from .models import FINISHED_STATUSES, Execution, ExecutionStatus


def finished_among(ids: Sequence, chunk: int = 1000) -> Iterable[tuple]:
    """(id, status, dispatched_at, finished_at) of the executions in `ids` that have finished."""
    for start in range(0, len(ids), chunk):
        yield from Execution.objects.filter(
            pk__in=ids[start:start + chunk], status__in=FINISHED_STATUSES
        ).values_list("pk", "status", "dispatched_at", "finished_at")


def waiting_counts(function_ids: Iterable[int]) -> dict[int, int]:
    """Queued executions per function among `function_ids` (functions with none are absent):
    one grouped query over the queued rows, never one query per function."""
    ids = list(function_ids)
    if not ids:
        return {}
    return dict(Execution.objects.filter(status=ExecutionStatus.QUEUED, function_id__in=ids)
                .order_by().values("function_id").annotate(n=Count("pk"))
                .values_list("function_id", "n"))


def running_count(function_id: int) -> int:
    """Executions of the function running now."""
    return Execution.objects.filter(function_id=function_id,
                                    status=ExecutionStatus.RUNNING).count()


def execution_wait(*, execution: Execution, timeout: float) -> Execution:
    """Re-read the execution until it finishes or `timeout` seconds pass (bounded polling)."""
    deadline = time.monotonic() + min(timeout, settings.KUBEFUNCTION_MAX_WAIT)
    delay = 0.005
    while not execution.is_finished and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.2)
        execution.refresh_from_db()
    return execution
