"""The reaper: finds executions whose message or worker was lost, and sends or ends them.

Beat runs `executions.reap` every `KUBEFUNCTION_REAPER_INTERVAL` seconds (docs/reliability.md).

- A `queued` execution whose message was due (`due_at`: dispatch, retry backoff, concurrency
  wait) more than `KUBEFUNCTION_REAPER_QUEUED_GRACE` seconds ago, while the broker's queue is
  empty, has no message anywhere: it is sent again under the same task id (a duplicate is
  harmless, the claim is conditional), `resends` counts it, and after
  `KUBEFUNCTION_REAPER_MAX_RESENDS` it fails with the reason. While the queue holds messages
  the workers are behind, and a late execution is waiting rather than lost: nothing is sent;
  nor for one whose message a live worker holds (reserved, or waiting for a free process).
- A `running` execution past its start + its function's timeout +
  `KUBEFUNCTION_REAPER_RUNNING_MARGIN` whose claiming process is gone (its worker does not
  answer, or answers without that task in that process) is run again as its next attempt
  (`WorkerLost`, a platform retry) or failed when no platform retry is left; a resumable
  runtime's is sent again to be taken over.
- An open batch whose executions have all ended is closed (`hooks.batch_close_if_done`): the
  run path closes a batch after its last execution's finish commits, which a worker dying
  between the two leaves undone.

Every change is a conditional UPDATE (`executions.transitions`), so a worker finishing at the
same moment, a redelivery or a second reaper wins and nothing is written twice; what the broker
and the workers hold, and the sending, are `executions.workers`'. Each run handles at most
`BATCH` rows of each kind, oldest first. When the broker is unreachable the run does nothing and
says so.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Q, Value
from django.utils import timezone

from . import hooks, transitions, workers
from .models import Execution, ExecutionStatus
from .runtimes import get_runtime
from .services import execution_fail, execution_lost
from .workers import BrokerUnreachable

logger = logging.getLogger(__name__)

BATCH = 1000  # rows of each kind handled per run


def _send(rows: list[tuple[str, str]], *, recover: bool = False) -> int:
    """Send the run task for each (execution id, task id); how many were sent before the
    broker failed (`BrokerUnreachable` only when none was)."""
    try:
        return workers.send_run(rows, recover=recover)
    except BrokerUnreachable as exc:
        if not exc.sent:
            raise
        logger.warning("reaper: the broker failed after %d message(s): %s", exc.sent, exc)
        return exc.sent


def reap_queued(*, now=None) -> dict[str, int]:
    """Re-send (or, past the limit, fail) queued executions whose message looks lost."""
    now = now or timezone.now()
    if workers.queue_depth() > 0:
        return {"resent": 0, "lost": 0}  # workers are behind: late is not lost
    cut = now - timedelta(seconds=settings.KUBEFUNCTION_REAPER_QUEUED_GRACE)
    # exec_queued_due indexes queued rows by due_at; rows from before due_at existed fall back
    # to dispatched_at.
    rows = list(Execution.objects.filter(
        Q(due_at__lt=cut) | Q(due_at__isnull=True, dispatched_at__lt=cut),
        status=ExecutionStatus.QUEUED,
    ).order_by(F("due_at").asc(nulls_first=True)).values_list("pk", "task_id", "resends")[
        :BATCH])
    if rows:  # a live worker may hold a message past its due time (all its processes busy)
        held = workers.held_by_workers([task_id for _, task_id, _ in rows])
        rows = [row for row in rows if row[1] not in held]
    limit = settings.KUBEFUNCTION_REAPER_MAX_RESENDS
    lost = 0
    for pk, _, resends in (row for row in rows if row[2] >= limit):
        if execution_fail(execution_id=pk, error_type="MessageLost",
                          reason=f"its message was lost {resends} times: re-sent by the "
                                 f"reaper {resends} times and never picked up by a worker.",
                          expect={"status": ExecutionStatus.QUEUED, "resends": resends}):
            logger.error("reaper: execution %s failed: its message was lost %d times", pk,
                         resends)
            lost += 1
    pending = [row for row in rows if row[2] < limit]
    sent = _send([(pk, task_id) for pk, task_id, _ in pending]) if pending else 0
    for pk, _, resends in pending[:sent]:
        # Conditional: a worker that claimed it meanwhile keeps its run (the message is a
        # harmless duplicate).
        if transitions.resend(pk, resends=resends, now=now):
            logger.warning("reaper: execution %s was queued past its due time with no message "
                           "waiting: sent again (resend %d of %d)", pk, resends + 1, limit)
    return {"resent": sent, "lost": lost}


def _overdue_running(now) -> list[tuple]:
    """(pk, task id, worker, runtime, resends) of running executions past start + their
    function's timeout + the margin, oldest first."""
    margin = timedelta(seconds=settings.KUBEFUNCTION_REAPER_RUNNING_MARGIN)
    if connection.vendor != "postgresql":  # SQLite cannot multiply an interval: in Python
        rows = Execution.objects.filter(
            status=ExecutionStatus.RUNNING, started_at__lt=now - margin,
        ).order_by("started_at").values_list("pk", "task_id", "worker", "runtime", "resends",
                                             "started_at", "function__timeout_seconds")
        return [row[:5] for row in rows[:BATCH]
                if row[5] + timedelta(seconds=row[6]) < now - margin]
    timeout = ExpressionWrapper(F("function__timeout_seconds") * Value(timedelta(seconds=1)),
                                output_field=DurationField())
    return list(Execution.objects.alias(
        deadline=ExpressionWrapper(F("started_at") + timeout, output_field=DateTimeField()),
    ).filter(status=ExecutionStatus.RUNNING, started_at__lt=now - margin,
             deadline__lt=now - margin).order_by("started_at").values_list(
        "pk", "task_id", "worker", "runtime", "resends")[:BATCH])


def reap_running(*, current_node: str = "", now=None) -> dict[str, int]:
    """Re-run (or fail) running executions past their deadline whose worker process is gone."""
    now = now or timezone.now()
    rows = _overdue_running(now)
    if not rows:
        return {"rerun": 0, "failed": 0, "resumed": 0}
    try:
        active = workers.active_tasks(workers.worker_node(row[2]) for row in rows)
    except Exception as exc:  # the broker: cannot tell who is alive, so touch nothing
        raise BrokerUnreachable(str(exc)) from exc
    requeued, resumed, failed = [], [], 0
    for pk, task_id, holder, runtime, resends in rows:
        if workers.holder_alive(holder, task_id=task_id, current_node=current_node,
                                active=active):
            continue
        if get_runtime(runtime or settings.KUBEFUNCTION_RUNTIME).resumable:
            if resends >= settings.KUBEFUNCTION_REAPER_MAX_RESENDS:
                failed += execution_fail(
                    execution_id=pk, error_type="WorkerLost",
                    reason=f"its worker ({holder}) was lost and {resends} attempts to take "
                           "the run over failed.",
                    expect={"status": ExecutionStatus.RUNNING, "worker": holder})
            elif transitions.resend(pk, resends=resends, holder=holder):
                logger.warning("reaper: execution %s runs past its deadline and its worker "
                               "(%s) is gone: sent to be taken over", pk, holder)
                resumed.append((pk, task_id))
            continue
        result = execution_lost(
            execution_id=pk, holder=holder,
            reason=f"its worker process ({holder or '?'}) was gone when the reaper found it "
                   "running past its deadline")
        if result == "requeued":
            requeued.append((pk, task_id))
        failed += result == "failed"
    # A message that cannot be sent now is not lost: the rows are queued (or running) with a
    # due time, and the next run sends them.
    for batch, recover in ((requeued, False), (resumed, True)):
        if batch:
            try:
                _send(batch, recover=recover)
            except BrokerUnreachable as exc:
                logger.warning("reaper: could not send %d message(s): %s", len(batch), exc)
    return {"rerun": len(requeued), "failed": failed, "resumed": len(resumed)}


def reap(*, current_node: str = "") -> dict[str, int]:
    """One reaper run: the queued sweep, then the running sweep. Counts what it did; with the
    broker unreachable it skips what needs it and tries again next time."""
    done: dict[str, int] = {}
    for sweep in (reap_queued, reap_running):
        try:
            done.update(sweep(current_node=current_node) if sweep is reap_running
                        else sweep())
        except BrokerUnreachable as exc:
            logger.warning("reaper: the broker is unreachable (%s): %s skipped, next run "
                           "tries again", exc, sweep.__name__)
    closed = hooks.batch_close_if_done()
    if closed:
        done["batches_closed"] = closed
    if any(done.values()):
        logger.info("reaper: %s", done)
    return done
