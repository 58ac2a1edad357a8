"""Payload retention: what is kept of an execution's input, output and logs, and for how long.

Each function chooses (`Function.payload_retention`):

- `keep`: inputs, outputs and logs are kept (the default);
- `days`: they are kept `payload_retention_days` days after the execution finished, then
  `purge_expired` (beat: `executions.purge_payloads`) replaces them by their hashes;
- `hash`: the input is stored at dispatch (the function must receive it) and replaced, with the
  output, by their hashes in the execution's terminal write (`finish_fields`).

A purge sets `input` and `output` to null, empties `logs` (a function may print what it
received) and the logs of its earlier attempts, stores `input_sha256` / `output_sha256` and
`payload_purged_at`, and stores a null result in the execution's django-celery-results row.
It never touches the status, timings, CPU, memory, cold-start, attempt or error fields, so
metrics and rollups read the same figures before and after.

The hash of a JSON value is the SHA-256 of its canonical JSON text (`payload_sha256`):

    json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

encoded as UTF-8; anyone holding the payload can recompute it.

`purge_old_results` deletes django-celery-results rows older than
KUBEFUNCTION_RESULT_RETENTION_DAYS (0: keep them): the execution keeps its own record, and
`AsyncResult(task_id)` of a deleted row reads as PENDING (Celery's state for an unknown id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

from celery import states
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_celery_results.models import TaskResult

from functions.models import Function, PayloadRetention
from kubefunction.celery import app

from .models import FINISHED_STATUSES, Execution

logger = logging.getLogger(__name__)

PURGED_FIELDS = ["input", "output", "logs", "attempts", "input_sha256", "output_sha256",
                 "payload_purged_at"]
# Batches one purge run goes through at most, so a large backlog is spread over several runs.
MAX_BATCHES = 20


def payload_sha256(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of `value` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def finish_fields(policy: str, payload: Any, fields: dict[str, Any], *,
                  earlier_attempts: bool = False) -> dict[str, Any]:
    """The terminal write's `fields`, with the payload replaced by its hashes when the
    function's `policy` is `hash` (unchanged otherwise).

    `earlier_attempts`: the execution was retried, so its earlier attempts' logs are still
    stored; `payload_purged_at` is then left unset and the next purge run clears them.
    """
    if policy != PayloadRetention.HASH:
        return fields
    return {**fields, "input": None, "output": None, "logs": "",
            "input_sha256": payload_sha256(payload),
            "output_sha256": payload_sha256(fields.get("output")),
            "payload_purged_at": None if earlier_attempts else fields["finished_at"]}


def _expired(now: datetime) -> Q | None:
    """Executions whose payload is due: every one of a `hash` function (those its terminal
    write could not hash), and those of a `days` function finished more than N days ago.
    None when no function purges anything. Each clause names its function, so the scan
    stays on those functions' executions (index `exec_function_recent`)."""
    due = []
    policies = Function.objects.exclude(payload_retention=PayloadRetention.KEEP).values_list(
        "pk", "payload_retention", "payload_retention_days")
    for function_id, policy, days in policies:
        if policy == PayloadRetention.HASH:
            due.append(Q(function_id=function_id))
        elif days is not None:
            cutoff = now - timedelta(days=days)  # dispatched_at <= finished_at: an index range
            due.append(Q(function_id=function_id, dispatched_at__lt=cutoff,
                         finished_at__lt=cutoff))
    return reduce(operator.or_, due) if due else None


def _purge(execution: Execution, now: datetime) -> None:
    # A hash already stored (hash mode, retried) stays: the payload it hashed is gone.
    if not (execution.input is None and execution.input_sha256):
        execution.input_sha256 = payload_sha256(execution.input)
    if not (execution.output is None and execution.output_sha256):
        execution.output_sha256 = payload_sha256(execution.output)
    execution.input = execution.output = None
    execution.logs = ""
    execution.attempts = [{**attempt, "logs": ""} if attempt.get("logs") else attempt
                          for attempt in execution.attempts or []]
    execution.payload_purged_at = now


def purge_expired(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Purge the payloads of at most `limit` expired, finished executions in one transaction:
    one UPDATE of the executions, one of their Celery results. Returns how many it purged.

    Rows another purge holds are skipped (`SKIP LOCKED`), so concurrent runs do not collide.
    """
    now = now or timezone.now()
    limit = limit or settings.KUBEFUNCTION_PURGE_BATCH
    due = _expired(now)
    if due is None:
        return 0
    with transaction.atomic():
        batch = list(
            Execution.objects.filter(status__in=FINISHED_STATUSES, payload_purged_at__isnull=True)
            .filter(due).order_by()
            .select_for_update(skip_locked=True, of=("self",))
            .only("id", "task_id", *PURGED_FIELDS)[:limit])
        if not batch:
            return 0
        for execution in batch:
            _purge(execution, now)
        Execution.objects.bulk_update(batch, PURGED_FIELDS)
        content_type, content_encoding, null = app.backend.encode_content(None)
        TaskResult.objects.filter(task_id__in=[e.task_id for e in batch],
                                  status=states.SUCCESS).update(
            result=null, content_type=content_type, content_encoding=content_encoding)
    return len(batch)


def purge_old_results(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Delete at most `limit` django-celery-results rows older than
    KUBEFUNCTION_RESULT_RETENTION_DAYS (none when it is 0). Returns how many it deleted."""
    days = settings.KUBEFUNCTION_RESULT_RETENTION_DAYS
    if not days:
        return 0
    now = now or timezone.now()
    limit = limit or settings.KUBEFUNCTION_PURGE_BATCH
    old = list(TaskResult.objects.filter(date_done__lt=now - timedelta(days=days))
               .order_by().values_list("pk", flat=True)[:limit])
    if not old:
        return 0
    deleted, _ = TaskResult.objects.filter(pk__in=old).delete()
    return deleted


@dataclass
class PurgeReport:
    payloads: int = 0
    results: int = 0


def retention_purge(*, now: datetime | None = None) -> PurgeReport:
    """One periodic run: expired payloads, then old Celery results, batch after batch until
    none is left or MAX_BATCHES of each were done (the next run carries on)."""
    now = now or timezone.now()
    limit = settings.KUBEFUNCTION_PURGE_BATCH
    report = PurgeReport()
    for step, attribute in ((purge_expired, "payloads"), (purge_old_results, "results")):
        for _ in range(MAX_BATCHES):
            done = step(now=now, limit=limit)
            setattr(report, attribute, getattr(report, attribute) + done)
            if done < limit:
                break
    if report.payloads or report.results:
        logger.info("retention: purged %d payload(s), deleted %d old task result(s)",
                    report.payloads, report.results)
    return report
