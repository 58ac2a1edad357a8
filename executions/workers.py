"""Workers as the run path sees them: who runs an execution, whether that process still lives,
what the broker and the workers hold, the one place the run path's tasks are sent from, and the
kill of a running task (`kill`, `kill_run`).

An execution's `worker` field names the process that claimed it: "<Celery node>/<pid>"
(`worker_id`). Whether that process still runs it (`holder_alive`) is asked of its node over the
broker. Every run task goes through `send_run` (dispatch, retries, concurrency waits, the reaper,
re-runs), and a callback's first delivery through `send_callback` (its retries are the task's
own `Task.retry`); a broker that fails raises `BrokerUnreachable`, which says how many messages
went out before it failed, and each caller decides what that means for it (a 503, a requeued
message, a retry at the reaper's next run). Builds are sent by `functions.builds`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable, Sequence

from celery import signals
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import state as worker_state
from celery.worker.control import control_command
from django.conf import settings
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as KombuOperationalError

from kubefunction.celery import app

from .runtimes.host import pid_alive

logger = logging.getLogger(__name__)

PING_TIMEOUT = 1.0  # seconds a worker has to answer

# The tasks this module sends, by name: the contract with the messages in the broker
# (executions/tasks.py registers them under these names; it imports this module, not the reverse).
RUN_TASK = "executions.run"
CALLBACK_TASK = "executions.deliver_callback"


class BrokerUnreachable(Exception):
    """The broker could not be reached; `sent` messages went out before it failed."""

    def __init__(self, message: str, *, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


# -- identity and liveness -----------------------------------------------------------------------

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


# -- what the broker and the workers hold --------------------------------------------------------

def queue_depth() -> int:
    """Messages waiting in the run queue (not those reserved by workers). Raises
    `BrokerUnreachable`."""
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


def held_by_workers(task_ids: list[str]) -> set[str]:
    """The task ids some live worker holds (reserved, scheduled or active): one broadcast,
    PING_TIMEOUT long. Raises `BrokerUnreachable`."""
    try:
        replies = app.control.inspect(timeout=PING_TIMEOUT).query_task(*task_ids) or {}
    except Exception as exc:  # the broker: cannot tell what is held, so send nothing
        raise BrokerUnreachable(str(exc)) from exc
    return {task_id for tasks in replies.values() for task_id in (tasks or {})}


# -- sending -------------------------------------------------------------------------------------

def _send(task_name: str, messages: Sequence[dict]) -> int:
    """Publish the task `task_name` once per message (its `send_task` options) over one producer,
    its result ignored (the tasks store their own outcome); how many were sent. Raises
    `BrokerUnreachable` (with how many were sent before) when the broker fails."""
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for options in messages:
                app.send_task(task_name, producer=producer, ignore_result=True, **options)
                sent += 1
    except (KombuOperationalError, OSError) as exc:
        raise BrokerUnreachable(str(exc), sent=sent) from exc
    return sent


def send_run(runs: Iterable[tuple[object, str]], *, countdown: float | None = None,
             waits: int = 0, recover: bool = False) -> int:
    """Send the run task (`executions.run`) for each (execution id, task id), under that task
    id, so a duplicate is harmless (the claim is conditional). `countdown`: seconds before a
    worker takes it (a retry's backoff, a concurrency wait); `waits`: how many times the
    execution already found its function full; `recover`: the reaper sends a lost worker's run
    to be taken over. Returns how many were sent; raises `BrokerUnreachable`."""
    kwargs = {**({"waits": waits} if waits else {}), **({"recover": True} if recover else {})}
    return _send(RUN_TASK, [
        {"args": [str(execution_id)], "kwargs": kwargs or None, "task_id": task_id,
         "countdown": None if countdown is None else max(0.0, countdown)}
        for execution_id, task_id in runs])


def send_callback(execution_id: str) -> None:
    """Send the callback delivery task of one execution. Raises `BrokerUnreachable`."""
    _send(CALLBACK_TASK, [{"args": [execution_id]}])


def kill(task_id: str) -> None:
    """Stop the pool process running `task_id` wherever it runs: a broadcast of `kill_run`,
    which makes it raise `SoftTimeLimitExceeded` (SIGUSR1) inside the runtime's call. A kill
    that cannot be sent is only logged."""
    try:
        app.control.broadcast("kill_run", arguments={"task_id": task_id})
    except Exception:  # the broker: the cancel stands, the run ends by itself
        logger.warning("could not send the kill of task %s", task_id, exc_info=True)


@control_command(args=[("task_id", str)], signature="<task_id>")
def kill_run(state, task_id: str) -> dict:
    """Remote control command (runs in the worker's main process): SIGUSR1 to the pool process
    running `task_id`, if this worker runs it.

    Not `revoke(terminate=True)`: billiard marks a process it was asked to terminate as
    terminated under control for good, and SIGUSR1 does not end it (the task raises and the
    process takes the next one), so when that process later dies for real (SIGKILL, the OOM
    killer) its task is taken for a terminated one — no WorkerLostError, no requeue of the
    message — and the execution stays `running` until the reaper. Signalling the pid directly
    leaves the pool's bookkeeping alone.

    The pid cannot be stale: this loop is the one that reaps dead pool processes (dropping their
    requests in the same step; until then the pid is a zombie's) and, with the default fair
    scheduling, hands a pool process its next task only after it has seen the previous one end
    (docs/executions.md, "Limits")."""
    if not isinstance(state.consumer.pool, PreforkPool):
        return {"ok": "not a prefork pool: the run goes on to its end"}
    for request in list(worker_state.active_requests):
        if request.id == task_id and request.worker_pid and request.worker_pid != os.getpid():
            try:
                os.kill(request.worker_pid, signal.SIGUSR1)
            except ProcessLookupError:
                return {"ok": "its pool process is gone"}
            return {"ok": f"signalled pool process {request.worker_pid}"}
    return {"ok": "not running here"}


# The other end, in each pool process. Whoever sends SIGUSR1 to stop a task (`kill_run`,
# billiard's soft time limit) can only aim at the process that held it: a run that ended in that
# instant leaves the signal to the process idle, where billiard's handler would raise in its wait
# for the next task and end the process. Installed at a pool process's first task: billiard sets
# its own handler after `worker_process_init`.
_pool_process = False


@signals.worker_process_init.connect
def _mark_pool_process(**kwargs) -> None:
    global _pool_process
    _pool_process = True


@signals.task_prerun.connect
def _stop_only_a_running_task(**kwargs) -> None:
    """In a prefork pool process (never the worker's main process, where SIGUSR1 dumps the
    stacks): SIGUSR1 raises `SoftTimeLimitExceeded` in the running task, and does nothing
    between tasks."""
    if _pool_process and signal.getsignal(signal.SIGUSR1) is not _soft_stop:
        signal.signal(signal.SIGUSR1, _soft_stop)


def _soft_stop(signum, frame) -> None:
    if app.current_worker_task is not None:
        raise SoftTimeLimitExceeded()
