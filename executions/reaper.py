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

Every change is a conditional UPDATE, so a worker finishing at the same moment, a redelivery
or a second reaper wins and nothing is written twice. Each run handles at most `BATCH` rows of
each kind, oldest first. When the broker is unreachable the run does nothing and says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Q, Value
from django.utils import timezone
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as KombuOperationalError

from .models import Execution, ExecutionStatus
from .runtimes import get_runtime
from .runtimes.local_process import pid_alive

logger = logging.getLogger(__name__)

BATCH = 1000  # rows of each kind handled per run
PING_TIMEOUT = 1.0  # seconds a worker has to answer


class BrokerUnreachable(Exception):
    """The broker could not be reached: the reaper tries again at its next run."""


def parse_worker(value: str) -> tuple[str, int | None]:
    """(Celery node name, pid) of an execution's `worker` field ("celery@host/1234"); pid None
    for a value without one."""
    node, sep, pid = (value or "").rpartition("/")
    if sep and pid.isdigit():
        return node, int(pid)
    return value or "", None


def worker_node(value: str) -> str:
    """The Celery node name of a `worker` field."""
    return parse_worker(value)[0]


def worker_id(node: str) -> str:
    """What a run stores as its `worker`: the node name and the claiming process's pid."""
    return f"{node}/{os.getpid()}" if node else ""


def active_tasks(nodes: Iterable[str]) -> dict[str, list[dict]]:
    """{node: its active requests} for the nodes that answered within PING_TIMEOUT (one
    broadcast for all). Raises on broker errors."""
    from kubefunction.celery import app

    nodes = sorted({n for n in nodes if n})
    if not nodes:
        return {}
    replies = app.control.inspect(destination=nodes, timeout=PING_TIMEOUT).active()
    return replies or {}


def holder_alive(holder: str, *, task_id: str, current_node: str = "",
                 active: dict[str, list[dict]] | None = None) -> bool:
    """Whether the process named by a `worker` field still runs the task `task_id`.

    The node is asked for its active tasks (`active` when the caller already asked): no
    answer means gone, an answer without the task in that process means the process that held
    it died. On the caller's own node a pid that no longer exists (or is the caller itself,
    which is not running it) is gone without asking. A field without a node (never claimed) is
    gone. Raises on broker errors.
    """
    node, pid = parse_worker(holder)
    if not node:
        return False
    if node == current_node and pid is not None and (pid == os.getpid()
                                                      or not pid_alive(pid)):
        return False
    if active is None:
        active = active_tasks([node])
    if node not in active:
        return False
    return any(request.get("id") == task_id and (pid is None or request.get("worker_pid") == pid)
               for request in active[node] or [])


def _queue_depth() -> int:
    """Messages waiting in the run queue (not those reserved by workers). Raises
    `BrokerUnreachable`."""
    from kubefunction.celery import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            errors = connection.connection_errors + connection.channel_errors
            try:
                return connection.default_channel.queue_declare(
                    queue=settings.CELERY_TASK_DEFAULT_QUEUE, passive=True).message_count
            except ChannelError:
                return 0  # no such queue yet: nothing waits
            except errors as exc:
                raise BrokerUnreachable(str(exc)) from exc
    except (KombuOperationalError, OSError) as exc:
        raise BrokerUnreachable(str(exc)) from exc


def _held_by_workers(task_ids: list[str]) -> set[str]:
    """The task ids some live worker holds (reserved, scheduled or active): one broadcast,
    PING_TIMEOUT long. Raises `BrokerUnreachable`."""
    from kubefunction.celery import app

    try:
        replies = app.control.inspect(timeout=PING_TIMEOUT).query_task(*task_ids) or {}
    except Exception as exc:  # the broker: cannot tell what is held, so send nothing
        raise BrokerUnreachable(str(exc)) from exc
    return {task_id for tasks in replies.values() for task_id in (tasks or {})}


def _send(rows: list[tuple[str, str]], *, recover: bool = False) -> int:
    """Send the run task for each (execution id, task id); how many were sent before the
    broker failed (`BrokerUnreachable` only when none was)."""
    from .tasks import run_execution

    sent = 0
    try:
        with run_execution.app.producer_or_acquire() as producer:
            for execution_id, task_id in rows:
                run_execution.apply_async(args=[str(execution_id)],
                                          kwargs={"recover": True} if recover else None,
                                          task_id=task_id, producer=producer)
                sent += 1
    except (KombuOperationalError, OSError) as exc:
        if not sent:
            raise BrokerUnreachable(str(exc)) from exc
        logger.warning("reaper: the broker failed after %d message(s): %s", sent, exc)
    return sent


def reap_queued(*, now=None) -> dict[str, int]:
    """Re-send (or, past the limit, fail) queued executions whose message looks lost."""
    from .services import execution_fail

    now = now or timezone.now()
    if _queue_depth() > 0:
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
        held = _held_by_workers([task_id for _, task_id, _ in rows])
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
        if Execution.objects.filter(pk=pk, status=ExecutionStatus.QUEUED, resends=resends)\
                .update(resends=resends + 1, due_at=now):
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
    from .services import execution_fail, execution_lost

    now = now or timezone.now()
    rows = _overdue_running(now)
    if not rows:
        return {"rerun": 0, "failed": 0, "resumed": 0}
    try:
        active = active_tasks(worker_node(row[2]) for row in rows)
    except Exception as exc:  # the broker: cannot tell who is alive, so touch nothing
        raise BrokerUnreachable(str(exc)) from exc
    requeued, resumed, failed = [], [], 0
    for pk, task_id, holder, runtime, resends in rows:
        if holder_alive(holder, task_id=task_id, current_node=current_node, active=active):
            continue
        if get_runtime(runtime or settings.KUBEFUNCTION_RUNTIME).resumable:
            if resends >= settings.KUBEFUNCTION_REAPER_MAX_RESENDS:
                failed += execution_fail(
                    execution_id=pk, error_type="WorkerLost",
                    reason=f"its worker ({holder}) was lost and {resends} attempts to take "
                           "the run over failed.",
                    expect={"status": ExecutionStatus.RUNNING, "worker": holder})
            elif Execution.objects.filter(pk=pk, status=ExecutionStatus.RUNNING,
                                          worker=holder, resends=resends)\
                    .update(resends=resends + 1):
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
    if any(done.values()):
        logger.info("reaper: %s", done)
    return done
