"""Reads over executions and batches that commands, pages and the API share.

A batch's progress counts come from the `exec_batch_status` index (batch, status); the
retrieval-time percentiles (dispatched → finished) are computed in the database with
`percentile_cont` on Postgres and in Python on the embedded SQLite database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import connection
from django.db.models import Count, FloatField, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce

from kubefunction.stats import percentile

from .models import FINISHED_STATUSES, Batch, Execution, ExecutionStatus


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


# -- batches -------------------------------------------------------------------------------------

_COUNTED = {
    "n_succeeded": ExecutionStatus.SUCCEEDED, "n_failed": ExecutionStatus.FAILED,
    "n_timed_out": ExecutionStatus.TIMED_OUT, "n_queued": ExecutionStatus.QUEUED,
    "n_running": ExecutionStatus.RUNNING, "n_cancelled": ExecutionStatus.CANCELLED,
}


@dataclass(frozen=True)
class BatchProgress:
    size: int
    succeeded: int = 0
    failed: int = 0  # failed or timed out
    timed_out: int = 0
    queued: int = 0
    running: int = 0
    cancelled: int = 0  # finished without a result: counted in `done`, not in `failed`
    p50_seconds: float | None = None  # retrieval time: dispatched → finished
    p95_seconds: float | None = None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.size if self.size else 100.0


def _status_count(status: str) -> Coalesce:
    rows = Execution.objects.filter(batch_id=OuterRef("pk"), status=status).order_by()\
        .values("batch_id").annotate(n=Count("*")).values("n")[:1]
    return Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))


def _percentile_sql(fraction: float) -> RawSQL:
    execution, batch = Execution._meta.db_table, Batch._meta.db_table
    return RawSQL(
        "SELECT percentile_cont(%s) WITHIN GROUP (ORDER BY date_part('epoch', "
        f"e.finished_at - e.dispatched_at)) FROM {execution} e "
        f"WHERE e.batch_id = {batch}.id AND e.finished_at IS NOT NULL",
        (fraction,), output_field=FloatField())


def with_progress(queryset: QuerySet[Batch]) -> QuerySet[Batch]:
    """Annotate each batch with its counts (and percentiles on Postgres): read them with
    `progress_of`."""
    annotations = {name: _status_count(status) for name, status in _COUNTED.items()}
    if connection.vendor == "postgresql":
        annotations.update(p50=_percentile_sql(0.5), p95=_percentile_sql(0.95))
    return queryset.annotate(**annotations)


def _python_percentiles(batch_id) -> tuple[float | None, float | None]:
    rows = Execution.objects.filter(batch_id=batch_id, finished_at__isnull=False)\
        .values_list("dispatched_at", "finished_at")
    seconds = [(end - start).total_seconds() for start, end in rows]
    return percentile(seconds, 0.5), percentile(seconds, 0.95)


def progress_of(batch: Batch) -> BatchProgress:
    """The progress of a batch from `with_progress` (or queried now when not annotated)."""
    if not hasattr(batch, "n_succeeded"):
        batch = with_progress(Batch.objects.filter(pk=batch.pk)).get()
    if hasattr(batch, "p50"):
        p50, p95 = batch.p50, batch.p95
    else:
        p50, p95 = _python_percentiles(batch.pk)
    return BatchProgress(size=batch.size, succeeded=batch.n_succeeded,
                         failed=batch.n_failed + batch.n_timed_out, timed_out=batch.n_timed_out,
                         queued=batch.n_queued, running=batch.n_running,
                         cancelled=batch.n_cancelled,
                         p50_seconds=p50, p95_seconds=p95)
