"""The task beat sends for a schedule trigger: takes the trigger's id, calls the service."""

from celery import shared_task

from . import services


@shared_task(name="triggers.fire", ignore_result=True)
def fire(trigger_id: int) -> str | None:
    """Dispatch the trigger with its default payload; returns the new execution's task id."""
    execution = services.trigger_fire(trigger_id=trigger_id)
    return execution.task_id if execution else None
