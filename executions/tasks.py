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
        outcome = services.execution_run(execution_id=execution_id,
                                         worker=self.request.hostname or "")
    except RuntimeUnavailable as exc:
        if self.request.retries >= self.max_retries:
            services.execution_fail(execution_id=execution_id, reason=f"runtime unavailable: {exc}")
            raise
        raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc
    if outcome is None:
        raise Ignore()  # already claimed or finished: a redelivery must change nothing
    return outcome.status
