"""Tasks of the metrics app."""

from celery import shared_task

from .rollup import rollup_advance


@shared_task(name="metrics.noop")
def noop(value=None):
    """Return the argument: the floor a platform invocation is measured against."""
    return value


# Beat runs it every minute (CELERY_BEAT_SCHEDULE); overlapping runs wait on the state row's
# lock and then find nothing left to do.
@shared_task(name="metrics.rollup", ignore_result=True, soft_time_limit=600)
def rollup() -> str | None:
    """Bring the metrics rollup tables up to date; returns the new watermark."""
    result = rollup_advance()
    return result.rolled_until.isoformat() if result.rolled_until else None
