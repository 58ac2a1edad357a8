"""Batches: progress of many executions dispatched together, and closing a batch when its last
execution ends.

Counts come from the `exec_batch_status` index (batch, status); the retrieval-time percentiles
(dispatched → finished) are computed in the database with `percentile_cont` on Postgres and in
Python on the embedded SQLite database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import connection
from django.db.models import Count, FloatField, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from metrics.stats import percentile

from .models import Batch, Execution, ExecutionStatus

ACTIVE = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
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


def batch_close_if_done(*, batch_id) -> bool:
    """Set the batch's `finished_at` (its last execution's end) when none of its executions is
    queued or running and all `size` of them exist. One conditional UPDATE: the unfinished check
    comes first (an index probe), so the count runs only once the batch looks done.
    """
    execution, batch = Execution._meta.db_table, Batch._meta.db_table
    sql = f"""
        UPDATE {batch} SET finished_at = COALESCE(
            (SELECT max(finished_at) FROM {execution} WHERE batch_id = {batch}.id), %s)
        WHERE id = %s AND finished_at IS NULL AND CASE
            WHEN EXISTS (SELECT 1 FROM {execution}
                         WHERE batch_id = {batch}.id AND status IN (%s, %s)) THEN FALSE
            ELSE (SELECT count(*) FROM {execution} WHERE batch_id = {batch}.id) >= size END"""
    key = Batch._meta.pk.get_db_prep_value(uuid.UUID(str(batch_id)), connection)
    now = Batch._meta.get_field("finished_at").get_db_prep_value(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, key, *(status.value for status in ACTIVE)])
        return cursor.rowcount == 1
