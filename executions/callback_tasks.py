"""The callback delivery task: takes an execution id, makes one attempt, retries with backoff.

Imported by `ExecutionsConfig.ready()` so every worker registers it (autodiscovery only finds
`tasks.py` modules).
"""

from celery import shared_task

from . import callbacks


@shared_task(bind=True, name="executions.deliver_callback", ignore_result=True,
             max_retries=None, acks_late=True)
def deliver_callback(self, execution_id: str) -> None:
    """Deliver the callback of one execution; the service counts attempts in the database."""
    delay = callbacks.callback_deliver(execution_id=execution_id)
    if delay is not None:
        raise self.retry(countdown=delay)
