"""The run task: takes an execution id, runs it through the service, returns the output."""

from celery import shared_task
from celery.exceptions import Ignore

from . import services
from .runtimes.base import RuntimeUnavailable


class FunctionFailed(Exception):
    """The function ended in error or timed out; the message carries its error and traceback."""


@shared_task(bind=True, name="executions.run", max_retries=5)
def run_execution(self, execution_id: str):
    """Run one execution. Its return value is the function's output (stored under the task id)."""
    try:
        execution = services.execution_run(execution_id=execution_id,
                                           worker=self.request.hostname or "")
    except RuntimeUnavailable as exc:
        if self.request.retries >= self.max_retries:
            services.execution_fail(execution_id=execution_id, reason=f"runtime unavailable: {exc}")
            raise
        raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc
    if execution is None:
        raise Ignore()  # already claimed or finished: a redelivery must change nothing
    if execution.status != "succeeded":
        raise FunctionFailed(f"{execution.error_type}: {execution.error}".strip())
    return execution.output
