"""What happens after an execution reaches its terminal record: its callback is scheduled, and
its batch closed when it was the batch's last.

Called by the run path after every terminal write; cheap when there is nothing to do: no query
at all for an execution with neither a callback URL nor a batch.
"""

from __future__ import annotations

import uuid

from django.db import connection, transaction
from django.utils import timezone

from .callbacks import callback_schedule
from .models import Batch, Execution, ExecutionStatus

ACTIVE = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


def execution_finished(execution_id: str, *, callback_url: str = "",
                       batch_id: str | None = None) -> None:
    """React to a finished execution: schedule its callback, close its batch when it was the
    last. Runs after the surrounding transaction commits, so the batch check sees this
    execution's terminal record."""
    if not callback_url and batch_id is None:
        return

    def react() -> None:
        if callback_url:
            callback_schedule(execution_id=execution_id)
        if batch_id is not None:
            batch_close_if_done(batch_id=batch_id)

    transaction.on_commit(react)


def batch_close_if_done(*, batch_id=None, limit: int = 1000) -> int:
    """Set a batch's `finished_at` (its last execution's end) when none of its executions is
    queued or running and all `size` of them exist; how many batches it closed. One conditional
    UPDATE: the unfinished check comes first (an index probe), so the count runs only once the
    batch looks done. Without `batch_id`, the `limit` oldest open batches: the reaper's sweep,
    for a batch whose last execution's worker died between its finish and this check."""
    execution, batch = Execution._meta.db_table, Batch._meta.db_table
    if batch_id is None:
        which = f"id IN (SELECT id FROM {batch} WHERE finished_at IS NULL " \
                f"ORDER BY created_at LIMIT %s)"
        chosen = [limit]
    else:
        which = "id = %s"
        chosen = [Batch._meta.pk.get_db_prep_value(uuid.UUID(str(batch_id)), connection)]
    sql = f"""
        UPDATE {batch} SET finished_at = COALESCE(
            (SELECT max(finished_at) FROM {execution} WHERE batch_id = {batch}.id), %s)
        WHERE {which} AND finished_at IS NULL AND CASE
            WHEN EXISTS (SELECT 1 FROM {execution}
                         WHERE batch_id = {batch}.id AND status IN (%s, %s)) THEN FALSE
            ELSE (SELECT count(*) FROM {execution} WHERE batch_id = {batch}.id) >= size END"""
    now = Batch._meta.get_field("finished_at").get_db_prep_value(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, *chosen, *(status.value for status in ACTIVE)])
        return cursor.rowcount
