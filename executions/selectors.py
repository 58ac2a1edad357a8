"""Reads over executions that commands and pages share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .models import FINISHED_STATUSES, Execution


def finished_among(ids: Sequence, chunk: int = 1000) -> Iterable[tuple]:
    """(id, status, dispatched_at, finished_at) of the executions in `ids` that have finished."""
    for start in range(0, len(ids), chunk):
        yield from Execution.objects.filter(
            pk__in=ids[start:start + chunk], status__in=FINISHED_STATUSES
        ).values_list("pk", "status", "dispatched_at", "finished_at")
