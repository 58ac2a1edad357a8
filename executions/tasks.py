"""Celery tasks of the executions app: thin wrappers around services, taking ids.

`executions.run` runs one execution; `executions.deliver_callback` makes one callback delivery
attempt; beat runs `executions.reap`, `executions.purge_payloads` and
`executions.scale_idle_warm` (CELERY_BEAT_SCHEDULE). The names are the contract with beat and
the messages in the broker: they never change.
"""

import logging

from celery import shared_task, signals
from celery.exceptions import Ignore, Reject
from django.conf import settings
from django.utils import timezone

from functions.models import Function
from kubefunction.errors import ServiceUnavailable

from . import callbacks, idempotency, reaper, retention, services, workers
from .runtimes import close_runtimes, get_runtime
from .runtimes.base import RuntimeFailure, RuntimeUnavailable

logger = logging.getLogger(__name__)


# Here, with the tasks: every worker imports this module at start-up, before its pool forks.
@signals.worker_process_shutdown.connect
def _release_runtimes(**kwargs) -> None:
    """A prefork child skips atexit hooks: stop its warm function processes explicitly."""
    close_runtimes()


# The runtime enforces each function's own timeout; the soft limit only catches a runtime that
# hangs, raising inside `execution_run`, which then ends the attempt as a platform error.
# Retries (function failures with the trigger's retries, platform failures) are decided by the
# service, which sends this task again under the same id with the attempt's backoff.
@shared_task(bind=True, name=workers.RUN_TASK, ignore_result=True,
             soft_time_limit=settings.KUBEFUNCTION_MAX_TIMEOUT + 60)
def run_execution(self, execution_id: str, waits: int = 0, recover: bool = False) -> str:
    """Run one execution. The service stores its outcome and Celery result together (see
    `executions.results`), so this task's own result is ignored; it returns the status.
    `waits`: how many times it already found its function at its concurrency limit;
    `recover`: sent by the reaper for a run whose worker is gone (treated as a redelivery).
    The execution records this process as its `worker` ("node/pid")."""
    try:
        outcome = services.execution_run(
            execution_id=execution_id, worker=workers.worker_id(self.request.hostname or ""),
            redelivered=recover or bool((self.request.delivery_info or {}).get("redelivered")),
            waits=waits)
    except ServiceUnavailable as exc:
        raise Reject(str(exc), requeue=True) from exc  # the execution is queued: keep its message
    if outcome is None:
        raise Ignore()  # already claimed or finished, or waiting for a slot: sent again
    return outcome.status


# Warm Kubernetes Deployments idle past KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS are scaled down by
# this task, which beat runs every minute (CELERY_BEAT_SCHEDULE), and by busy workers at most once
# a minute. The last use is an annotation on each Deployment, so whichever worker process runs
# the task scales down every idle Deployment, whoever used it (see runtimes.kubernetes.warm).
@shared_task(name="executions.scale_idle_warm", ignore_result=True,
             soft_time_limit=max(60, 4 * settings.KUBEFUNCTION_KUBE_TIMEOUT))
def scale_idle_warm() -> list[str]:
    """Scale what idle versions hold warm down to the minimum, in every runtime in use
    (`Runtime.scale_idle`); returns what was scaled."""
    # Only the runtimes functions use: a runtime no function runs on builds no API client.
    in_use = {settings.KUBEFUNCTION_RUNTIME, *Function.objects.exclude(runtime="").values_list(
        "runtime", flat=True).distinct()}
    scaled: list[str] = []
    for name in sorted(in_use):
        try:
            scaled += get_runtime(name).scale_idle()
        except (RuntimeUnavailable, RuntimeFailure) as exc:  # the next run (a minute on) retries
            logger.warning("could not scale idle warm capacity of the %s runtime: %s", name, exc)
    return scaled


# Beat runs this every KUBEFUNCTION_REAPER_INTERVAL seconds (CELERY_BEAT_SCHEDULE).
@shared_task(bind=True, name="executions.reap", ignore_result=True, soft_time_limit=300)
def reap(self) -> dict[str, int]:
    """Re-send executions whose message was lost; re-run or fail those whose worker died."""
    return reaper.reap(current_node=self.request.hostname or "")


@shared_task(bind=True, name=workers.CALLBACK_TASK, ignore_result=True,
             max_retries=None, acks_late=True)
def deliver_callback(self, execution_id: str) -> None:
    """Deliver the callback of one execution; the service counts attempts in the database."""
    delay = callbacks.callback_deliver(execution_id=execution_id)
    if delay is not None:
        raise self.retry(countdown=delay)


# Beat runs this every KUBEFUNCTION_PURGE_INTERVAL seconds (`purge-payloads`).
@shared_task(name="executions.purge_payloads", ignore_result=True)
def purge_payloads() -> dict[str, int]:
    """Purge the payloads past their function's retention, the old task results and the
    idempotency keys past their window."""
    report = retention.retention_purge()
    keys = idempotency.purge_expired_keys(now=timezone.now(),
                                          limit=settings.KUBEFUNCTION_PURGE_BATCH)
    return {"payloads": report.payloads, "results": report.results, "keys": keys}
