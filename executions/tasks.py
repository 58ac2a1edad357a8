"""The run task: takes an execution id and runs it through the service."""

from celery import shared_task
from celery.exceptions import Ignore
from django.conf import settings

from . import services
from .runtimes.base import RuntimeUnavailable


# The runtime enforces each function's own timeout; the soft limit only catches a runtime that
# hangs, raising inside `execution_run`, which then ends the execution as a platform error.
@shared_task(bind=True, name="executions.run", max_retries=5, ignore_result=True,
             soft_time_limit=settings.KUBEFUNCTION_MAX_TIMEOUT + 60)
def run_execution(self, execution_id: str) -> str:
    """Run one execution. The service stores its outcome and Celery result together (see
    `executions.results`), so this task's own result is ignored; it returns the status."""
    try:
        outcome = services.execution_run(
            execution_id=execution_id, worker=self.request.hostname or "",
            redelivered=bool((self.request.delivery_info or {}).get("redelivered")))
    except RuntimeUnavailable as exc:
        if self.request.retries >= self.max_retries:
            services.execution_fail(execution_id=execution_id, reason=f"runtime unavailable: {exc}")
            raise
        raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc
    if outcome is None:
        raise Ignore()  # already claimed or finished: a redelivery must change nothing
    return outcome.status


# Warm Kubernetes Deployments idle past KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS are otherwise only
# scaled down while this process invokes another version; beat runs this every minute
# (CELERY_BEAT_SCHEDULE). The runtime's idle bookkeeping is per process, so each worker process
# that runs the task scales down what it used itself.
@shared_task(name="executions.scale_idle_warm", ignore_result=True,
             soft_time_limit=max(60, 4 * settings.KUBEFUNCTION_KUBE_TIMEOUT))
def scale_idle_warm() -> list[str]:
    """Scale this process's idle warm Deployments to the minimum; returns their names."""
    from functions.models import Function

    from .runtimes import get_runtime

    if settings.KUBEFUNCTION_RUNTIME != "kubernetes" and not Function.objects.filter(
            runtime="kubernetes").exists():
        return []  # no function runs on Kubernetes: nothing to scale, no API client built
    return get_runtime("kubernetes").warm.scale_idle()
