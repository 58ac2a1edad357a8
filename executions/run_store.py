"""The run path's two writes: claim an execution, and store its outcome with its Celery result.

Both are conditional updates (`WHERE status = …`), so racing workers and redeliveries cannot run
or finish an execution twice. On Postgres each is one statement — one round trip, atomic on its
own — because they sit on every invocation's critical path; elsewhere (the embedded SQLite) the
same effect comes from the ORM in a transaction.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone
from django_celery_results.models import TaskResult

from functions.models import Function, FunctionVersion

from .models import Execution, ExecutionStatus
from .results import result_row

Claimed = tuple[str, Any, str, int, datetime]  # task_id, input, runtime, version, fn updated_at


def _fast() -> bool:
    return connection.vendor == "postgresql"


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _column(model: type[Model], name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(name).column)


def _prep(model: type[Model], name: str, value: Any) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def claim(execution_id: str, worker: str, *,
          from_status: str = ExecutionStatus.QUEUED) -> Claimed | None:
    """Mark a queued execution running; return what the run needs, or None if not queued.

    `from_status=RUNNING` takes over a running execution (a resumable runtime's redelivery).
    """
    now = timezone.now()
    if not _fast():
        with transaction.atomic():
            if not Execution.objects.filter(pk=execution_id, status=from_status)\
                    .update(status=ExecutionStatus.RUNNING, started_at=now, worker=worker):
                return None
            return Execution.objects.filter(pk=execution_id).values_list(
                "task_id", "input", "runtime", "version_id", "version__function__updated_at").get()
    sql = f"""
        WITH claimed AS (
            UPDATE {_table(Execution)} SET status = %s, started_at = %s, worker = %s
            WHERE id = %s AND status = %s
            RETURNING task_id, input, runtime, version_id)
        SELECT c.task_id, c.input, c.runtime, c.version_id, f.updated_at
        FROM claimed c
        JOIN {_table(FunctionVersion)} v ON v.id = c.version_id
        JOIN {_table(Function)} f ON f.id = v.function_id"""
    with connection.cursor() as cursor:
        cursor.execute(sql, [ExecutionStatus.RUNNING, now, worker, execution_id, from_status])
        row = cursor.fetchone()
    if row is None:
        return None
    task_id, payload, runtime, version_id, updated_at = row
    return task_id, None if payload is None else json.loads(payload), runtime, version_id, \
        updated_at


def finish(execution_id: str, task_id: str, fields: dict[str, Any], *, worker: str) -> bool:
    """Store a running execution's outcome `fields` and its Celery result, atomically.

    Returns False (and writes nothing) when the execution is no longer running.
    """
    succeeded = fields["status"] == ExecutionStatus.SUCCEEDED
    row = result_row(task_id=task_id, succeeded=succeeded, output=fields.get("output"),
                     error_type=fields.get("error_type", ""), error=fields.get("error", ""),
                     worker=worker)
    if not _fast():
        with transaction.atomic():
            if not Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING)\
                    .update(**fields):
                return False
            TaskResult.objects.bulk_create(
                [row], update_conflicts=True, unique_fields=["task_id"],
                update_fields=[f for f in _result_columns() if f != "task_id"])
            return True
    assignments = ", ".join(f"{_column(Execution, name)} = %s" for name in fields)
    columns = _result_columns()
    values = [_prep(TaskResult, name, TaskResult._meta.get_field(name).pre_save(row, True))
              for name in columns]
    quoted = [_column(TaskResult, name) for name in columns]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in quoted if c != '"task_id"')
    sql = f"""
        WITH finished AS (
            UPDATE {_table(Execution)} SET {assignments}
            WHERE id = %s AND status = %s
            RETURNING 1)
        INSERT INTO {_table(TaskResult)} ({", ".join(quoted)})
        SELECT {", ".join(["%s"] * len(values))} FROM finished
        ON CONFLICT ({_column(TaskResult, "task_id")}) DO UPDATE SET {updates}
        RETURNING 1"""
    params = [_prep(Execution, name, value) for name, value in fields.items()]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, execution_id, ExecutionStatus.RUNNING, *values])
        return cursor.fetchone() is not None


def _result_columns() -> list[str]:
    return [f.name for f in TaskResult._meta.concrete_fields if not f.primary_key]
