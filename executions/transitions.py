"""Every change of an execution's status, each one conditional update checking one row changed.

- `claim`: queued → running (or running → running: a resumable run taken over);
- `finish`: running → its outcome (succeeded, failed, timed out), with its Celery result;
- `requeue`, `requeue_lost`: running → queued as the next attempt, the failed or lost attempt
  recorded — the only two ways a running execution goes back to the queue;
- `postpone`: queued → queued, due later (its function is at its concurrency limit);
- `resend`: the reaper counts a message it sends again (queued, or running on a lost worker);
- `fail`: queued or running → failed, with its Celery FAILURE result;
- `cancel`: queued or running → cancelled, with its REVOKED Celery result.

The three that end an execution (`finish`, `fail`, `cancel`) announce it to its waiters
(`executions.notifications`) in the same statement or transaction, after the result row: heard
only once both rows are committed.

Each is `UPDATE … WHERE status = …` (plus what the caller judged on: the attempt, the worker, the
resends), so racing workers, redeliveries, a cancel and the reaper cannot move an execution twice:
whoever changes the row wins, and the others find nothing to change. What to do next (send
the task again, run the after-finish hooks) is the caller's (`executions.services`, the reaper).

Claim and finish sit on every invocation's critical path: on Postgres each is one statement — one
round trip, atomic on its own, and the claim does not wait for its WAL flush (what the reaper
recovers need not be durable; the accepted dispatch and the outcome are); elsewhere (the embedded
SQLite) the same effect comes from the ORM in a transaction. A function with a concurrency limit
(`Function.max_concurrency`) leaves the one-statement claim: its claims are serialised per function
(a Postgres advisory lock; SQLite's single writer) so that no more than the limit ever run;
unlimited functions keep the fast path.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple
from uuid import UUID

from django.db import connection, transaction
from django.db.models import Count, F, IntegerField, Model, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_celery_results.models import TaskResult

from functions.models import Function, FunctionVersion

from . import notifications
from .models import CANCELLABLE_STATUSES, Execution, ExecutionStatus
from .results import result_row
from .retries import Cause
from .runtimes.base import Outcome

# A `running` execution older than its function's timeout plus this no longer holds a slot of
# its function's concurrency limit: its worker died without finishing it, and a lost run must
# not block the function for ever.
STALE_RUN_GRACE = timedelta(seconds=300)
# First key of the Postgres advisory lock that serialises claims of one limited function (the
# second key is the function's id).
CONCURRENCY_LOCK_SPACE = 0x6B66  # "kf"


class Claimed(NamedTuple):
    """What the run needs, read by the claim itself (no second query on the hot path)."""

    task_id: str
    payload: Any
    runtime: str
    version_id: int
    function_updated_at: datetime
    attempt: int
    max_retries: int
    retry_backoff_seconds: float
    synchronous: bool
    callback_url: str
    batch_id: UUID | None
    started_at: datetime
    # Whether the function's owner is a superuser now (functions/specs.py `owner_trusted`), read
    # by the claim so that a cached spec never outlives a change of it.
    owner_trusted: bool = False
    # The payload is a webhook's HTTP request description (Execution.http_request).
    http_request: bool = False


class AtConcurrencyLimit(Exception):
    """The execution is queued but its function already runs `limit` executions."""

    def __init__(self, task_id: str, limit: int) -> None:
        super().__init__(f"{limit} execution(s) of its function are running")
        self.task_id = task_id
        self.limit = limit


_RETURNED = ("task_id", "input", "runtime", "version_id", "attempt", "max_retries",
             "retry_backoff_seconds", "synchronous", "callback_url", "batch_id", "http_request")


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

    Raises `AtConcurrencyLimit` (and changes nothing) when the execution's function has a
    `max_concurrency` and that many of its executions are running. `from_status=RUNNING` takes
    over a running execution (a resumable runtime's redelivery; it already holds its slot).
    """
    if not _fast():
        return _claim_orm(execution_id, worker, from_status)
    limited = from_status == ExecutionStatus.QUEUED
    claimed = _claim_sql(execution_id, worker, from_status, unlimited_only=limited)
    if claimed is not None or not limited:
        return claimed
    return _claim_limited(execution_id, worker)  # not queued, or its function has a limit


@cache
def _claim_statement(unlimited_only: bool) -> str:
    returned = ", ".join(_column(Execution, name) for name in _RETURNED)
    function_id = _column(Execution, "function")
    only_unlimited = (
        f"AND (SELECT {_column(Function, 'max_concurrency')} FROM {_table(Function)} "
        f"WHERE id = {_table(Execution)}.{function_id}) IS NULL" if unlimited_only else "")
    # The claim need not wait for its WAL flush (`synchronous_commit = off` for its own
    # transaction, set in the same round trip: the two statements of one query string are one
    # implicit transaction): lost in a database crash, the execution is found queued again and
    # the reaper sends it once more, as after any lost message. Dispatch and finish stay durable.
    return f"""
        SET LOCAL synchronous_commit = off;
        WITH claimed AS (
            UPDATE {_table(Execution)} SET status = %s, started_at = %s, worker = %s
            WHERE id = %s AND status = %s {only_unlimited}
            RETURNING {returned})
        SELECT c.*, f.updated_at, COALESCE(u.is_superuser, FALSE)
        FROM claimed c
        JOIN {_table(FunctionVersion)} v ON v.id = c.version_id
        JOIN {_table(Function)} f ON f.id = v.function_id
        LEFT JOIN {_table(Function.owner.field.related_model)} u
            ON u.id = f.{_column(Function, "owner")}"""


def _claim_sql(execution_id: str, worker: str, from_status: str, *,
               unlimited_only: bool, now: datetime | None = None) -> Claimed | None:
    """One statement: the conditional UPDATE, returning the row joined with its function.
    `unlimited_only`: claim only when the function has no concurrency limit."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_claim_statement(unlimited_only),
                       [ExecutionStatus.RUNNING, now, worker, execution_id, from_status])
        row = cursor.fetchone()
    if row is None:
        return None
    (task_id, payload, runtime, version_id, attempt, max_retries, backoff, synchronous,
     callback_url, batch_id, http_request, updated_at, owner_trusted) = row
    return Claimed(task_id, None if payload is None else json.loads(payload), runtime,
                   version_id, updated_at, attempt, max_retries, backoff, synchronous,
                   callback_url, batch_id, now, bool(owner_trusted), bool(http_request))


def _running_count(function_id: int, timeout_seconds: int, now: datetime) -> int:
    """Executions of the function holding a slot: running, and not stale."""
    return Execution.objects.filter(
        function_id=function_id, status=ExecutionStatus.RUNNING,
        started_at__gt=now - timedelta(seconds=timeout_seconds) - STALE_RUN_GRACE).count()


def _claim_limited(execution_id: str, worker: str) -> Claimed | None:
    """The claim of a function with a concurrency limit (Postgres): under a transaction-level
    advisory lock per function, count its running executions, then claim — so two workers
    can never both take the last slot."""
    row = Execution.objects.filter(pk=execution_id).values_list(
        "status", "task_id", "function_id", "function__max_concurrency",
        "function__timeout_seconds").first()
    if row is None or row[0] != ExecutionStatus.QUEUED:
        return None
    _, task_id, function_id, limit, timeout = row
    if limit is None:  # the limit was lifted since the first try
        return _claim_sql(execution_id, worker, ExecutionStatus.QUEUED, unlimited_only=False)
    if _running_count(function_id, timeout, timezone.now()) >= limit:
        raise AtConcurrencyLimit(task_id, limit)  # no lock taken when plainly full
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       [CONCURRENCY_LOCK_SPACE, function_id])
        # Read after the lock: the previous holder's claim has committed, and started_at is
        # later than the finish of any run whose slot this one takes.
        now = timezone.now()
        if _running_count(function_id, timeout, now) >= limit:
            raise AtConcurrencyLimit(task_id, limit)
        return _claim_sql(execution_id, worker, ExecutionStatus.QUEUED, unlimited_only=False,
                          now=now)


def _claim_orm(execution_id: str, worker: str, from_status: str) -> Claimed | None:
    """The claim elsewhere (the embedded SQLite). For a limited function the UPDATE's own WHERE
    counts the running executions: one statement, atomic since SQLite has one writer at a time."""
    row = Execution.objects.filter(pk=execution_id).values_list(
        "status", "task_id", "function_id", "function__max_concurrency",
        "function__timeout_seconds").first()
    if row is None or row[0] != from_status:
        return None
    _, task_id, function_id, limit, timeout = row
    now = timezone.now()
    candidates = Execution.objects.filter(pk=execution_id, status=from_status)
    if limit is not None and from_status == ExecutionStatus.QUEUED:
        running = Execution.objects.filter(
            function_id=function_id, status=ExecutionStatus.RUNNING,
            started_at__gt=now - timedelta(seconds=timeout) - STALE_RUN_GRACE,
        ).order_by().values("function_id").annotate(n=Count("pk")).values("n")
        candidates = candidates.alias(
            running=Coalesce(Subquery(running, output_field=IntegerField()), Value(0)),
        ).filter(running__lt=limit)
    with transaction.atomic():
        if not candidates.update(status=ExecutionStatus.RUNNING, started_at=now, worker=worker):
            if limit is not None and from_status == ExecutionStatus.QUEUED and \
                    Execution.objects.filter(pk=execution_id, status=from_status).exists():
                raise AtConcurrencyLimit(task_id, limit)
            return None
        values = Execution.objects.filter(pk=execution_id).values_list(
            *_RETURNED, "version__function__updated_at",
            "version__function__owner__is_superuser").get()
    (task_id, payload, runtime, version_id, attempt, max_retries, backoff, synchronous,
     callback_url, batch_id, http_request, updated_at, owner_trusted) = values
    return Claimed(task_id, payload, runtime, version_id, updated_at, attempt, max_retries,
                   backoff, synchronous, callback_url, batch_id, now, bool(owner_trusted),
                   bool(http_request))


# Column ranges of the figures a run reports (Postgres integer, bigint; floats kept finite and
# below a century of seconds, so sums over them stay finite too). The runtime and the function
# report them, and a value out of range must not make the outcome unstorable.
INT32 = (-(2**31), 2**31 - 1)
BIGINT = (0, 2**63 - 1)
MAX_SECONDS = 100 * 365 * 86400.0
_INTEGER_FIGURES = {"exit_code": INT32, "peak_memory_bytes": BIGINT}
_SECONDS_FIGURES = ("cpu_seconds", "init_seconds")
# Characters of an error message kept (head and tail); logs are capped by the runtime already.
MAX_ERROR_CHARS = 64_000
# Characters kept of each earlier attempt's error and logs (head and tail).
ATTEMPT_TEXT_CHARS = 4000


def bounded(text: str, limit: int = ATTEMPT_TEXT_CHARS) -> str:
    """`text` cut to its first and last `limit / 2` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n… ({len(text) - limit} characters cut) …\n{text[-half:]}"


def bounded_figures(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with every figure clamped to its column's range: integers to the range (a
    non-integer is dropped: None), seconds finite and in [0, MAX_SECONDS], the error type and
    message cut to what a column or a page holds."""
    fields = dict(fields)
    for name, (low, high) in _INTEGER_FIGURES.items():
        if name in fields:
            value = fields[name]
            fields[name] = None if isinstance(value, bool) or not isinstance(value, int) \
                else min(high, max(low, value))
    for name in _SECONDS_FIGURES:
        if name in fields:
            value = fields[name]
            ok = isinstance(value, int | float) and not isinstance(value, bool) and \
                math.isfinite(value)
            fields[name] = min(MAX_SECONDS, max(0.0, float(value))) if ok else None
    if "error_type" in fields:
        fields["error_type"] = storable(str(fields["error_type"] or "")[:200])
    if "error" in fields:
        fields["error"] = storable(bounded(str(fields["error"] or ""), MAX_ERROR_CHARS))
    if "logs" in fields:
        fields["logs"] = storable(str(fields["logs"] or ""))
    return fields


def storable(text: str) -> str:
    """`text` without what a text column refuses: NUL characters and lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class Finished(NamedTuple):
    """An outcome stored. `batch_may_close`: the execution is in a batch none of whose
    executions was queued as it finished, so closing the batch is worth its statement after the
    commit. A queued one will finish later and check then; the last to finish sees none queued,
    and of those finishing together at the end each checks after its own commit, so the last
    commit sees them all (`hooks.batch_close_if_done`)."""

    batch_may_close: bool


def finish(execution_id: str, task_id: str, fields: dict[str, Any], *,
           worker: str) -> Finished | None:
    """Store a running execution's outcome `fields` and its Celery result, atomically, and say
    whether its batch may now be closed, in the same round trip.

    Returns None (and writes nothing) when the execution is no longer running.
    """
    succeeded = fields["status"] == ExecutionStatus.SUCCEEDED
    row = result_row(task_id=task_id, succeeded=succeeded, output=fields.get("output"),
                     error_type=fields.get("error_type", ""), error=fields.get("error", ""),
                     worker=worker)
    if not _fast():
        with transaction.atomic():
            if not Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING)\
                    .update(**fields):
                return None
            TaskResult.objects.bulk_create(
                [row], update_conflicts=True, unique_fields=["task_id"],
                update_fields=[f for f in _result_columns() if f != "task_id"])
            notifications.announce(task_id)
            batch_id = Execution.objects.filter(pk=execution_id).values_list(
                "batch_id", flat=True).get()
            return Finished(batch_id is not None and not Execution.objects.filter(
                batch_id=batch_id, status=ExecutionStatus.QUEUED).exists())
    assignments = ", ".join(f"{_column(Execution, name)} = %s" for name in fields)
    columns = _result_columns()
    values = [_prep(TaskResult, name, TaskResult._meta.get_field(name).pre_save(row, True))
              for name in columns]
    quoted = [_column(TaskResult, name) for name in columns]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in quoted if c != '"task_id"')
    batch, status = _column(Execution, "batch"), _column(Execution, "status")
    # The announcement comes last, from the stored result row: Postgres delivers it when this
    # statement's transaction commits, with both rows written (executions.notifications). The
    # batch's queued executions are probed on the (batch, status) index.
    sql = f"""
        WITH finished AS (
            UPDATE {_table(Execution)} SET {assignments}
            WHERE id = %s AND status = %s
            RETURNING id, {batch}),
        stored AS (
            INSERT INTO {_table(TaskResult)} ({", ".join(quoted)})
            SELECT {", ".join(["%s"] * len(values))} FROM finished
            ON CONFLICT ({_column(TaskResult, "task_id")}) DO UPDATE SET {updates}
            RETURNING 1)
        SELECT pg_notify(%s, %s), f.{batch} IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {_table(Execution)} other
            WHERE other.{batch} = f.{batch} AND other.{status} = %s)
        FROM stored, finished f"""
    params = [_prep(Execution, name, value) for name, value in fields.items()]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, execution_id, ExecutionStatus.RUNNING, *values,
                             notifications.CHANNEL, task_id, ExecutionStatus.QUEUED])
        stored = cursor.fetchone()
    return None if stored is None else Finished(bool(stored[1]))


def _result_columns() -> list[str]:
    return [f.name for f in TaskResult._meta.concrete_fields if not f.primary_key]


# -- back to the queue ---------------------------------------------------------------------------

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


def _back_to_queue(execution_id: str, *, attempt: int, record: dict[str, Any],
                   earlier: list[dict], due_at: datetime, **expect: Any) -> bool:
    """Running at `attempt` (and `expect`) → queued as the next attempt, `record` appended to the
    earlier attempts: the one way a running execution goes back to the queue."""
    return bool(Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, attempt=attempt, **expect,
    ).update(status=ExecutionStatus.QUEUED, attempt=F("attempt") + 1,
             attempts=[*earlier, record], started_at=None, worker="", due_at=due_at))


def requeue(execution_id: str, claimed: Claimed, outcome: Outcome, *, worker: str,
            cause: Cause, earlier: list[dict], countdown: float = 0.0) -> bool:
    """Record the failed attempt and put the execution back in the queue as the next attempt,
    due at a worker in `countdown` seconds (`due_at`, which the reaper watches).

    One conditional UPDATE from `running` at this attempt: False (nothing written) when the
    execution moved on meanwhile.
    """
    now = timezone.now()
    record = attempt_record(claimed, outcome, worker=worker, cause=cause, finished_at=now)
    return _back_to_queue(execution_id, attempt=claimed.attempt, record=record, earlier=earlier,
                          due_at=now + timedelta(seconds=max(0.0, countdown)))


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
    return _back_to_queue(execution_id, attempt=attempt, record=record, earlier=earlier,
                          due_at=now, worker=worker)


# -- staying queued ------------------------------------------------------------------------------

def postpone(execution_id: str, countdown: float) -> None:
    """Record that the waiting invocation's next message is due in `countdown` seconds, so the
    reaper does not take the wait for a lost message."""
    Execution.objects.filter(pk=execution_id, status=ExecutionStatus.QUEUED).update(
        due_at=timezone.now() + timedelta(seconds=countdown))


def resend(execution_id: str, *, resends: int, holder: str | None = None,
           now: datetime | None = None) -> bool:
    """Count a message the reaper sends again (`resends` + 1), conditional on the execution being
    as it was judged: queued with no message anywhere (due again `now`), or, with `holder`,
    running under that lost worker, its resumable runtime's run sent to be taken over. False
    when a worker claimed or finished it meanwhile (the message is a harmless duplicate)."""
    if holder is None:
        return bool(Execution.objects.filter(
            pk=execution_id, status=ExecutionStatus.QUEUED, resends=resends,
        ).update(resends=resends + 1, due_at=now or timezone.now()))
    return bool(Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, worker=holder, resends=resends,
    ).update(resends=resends + 1))


# -- ended without an outcome --------------------------------------------------------------------

class Ended(NamedTuple):
    """What the after-finish hooks need of an execution that `fail` or `cancel` ended."""

    task_id: str
    callback_url: str
    batch_id: UUID | None


def fail(execution_id: str, *, reason: str, error_type: str = "PlatformError",
         expect: dict[str, Any] | None = None) -> Ended | None:
    """End a queued or running execution as failed with `reason`, keeping its earlier attempts
    (an asynchronous one becomes a dead letter), with its Celery FAILURE result. `expect`: more
    field values the row must still have (e.g. the attempt and worker that were judged lost).
    None when it was no longer so (nothing written)."""
    with transaction.atomic():
        failed = Execution.objects.filter(
            pk=execution_id, status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RUNNING],
            **(expect or {}),
        ).update(status=ExecutionStatus.FAILED, error_type=error_type, error=reason,
                 finished_at=timezone.now(), dead_letter=~F("synchronous"))
        if not failed:
            return None
        ended = Ended(*Execution.objects.values_list(
            "task_id", "callback_url", "batch_id").get(pk=execution_id))
        result_row(task_id=ended.task_id, succeeded=False, error_type=error_type,
                   error=reason).save()
        notifications.announce(ended.task_id)  # heard at the commit, with both rows written
    return ended


def cancel(execution_id, *, reason: str) -> tuple[str, Ended | None]:
    """Cancel a queued or running execution: `cancelled` with its REVOKED Celery result, in one
    transaction. (the status it had — "gone" for no such execution —, what the hooks need)
    when it cancelled it; the hooks' part is None when it had already ended (nothing
    written)."""
    with transaction.atomic():
        row = Execution.objects.select_for_update().filter(pk=execution_id).values_list(
            "status", "task_id", "callback_url", "batch_id").first()
        if row is None or row[0] not in CANCELLABLE_STATUSES:
            return (row[0] if row else "gone"), None
        status, *hooked = row
        ended = Ended(*hooked)
        Execution.objects.filter(pk=execution_id, status=status).update(
            status=ExecutionStatus.CANCELLED, error_type="Cancelled",
            error=f"{reason} while {status}", finished_at=timezone.now(), dead_letter=False)
        TaskResult.objects.filter(task_id=ended.task_id).delete()
        result_row(task_id=ended.task_id, succeeded=False, error=f"{reason} while {status}",
                   revoked=True).save()
        notifications.announce(ended.task_id)  # heard at the commit, with both rows written
    return status, ended
