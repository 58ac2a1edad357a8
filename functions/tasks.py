"""Celery tasks of the functions app: thin wrappers around services, taking ids."""

from celery import shared_task

from . import builds


@shared_task(name=builds.BUILD_TASK, acks_late=True)
def build_version(version_id: int) -> str | None:
    """Prepare a version on its runtime (install requirements, build an image)."""
    version = builds.version_build(version_id=version_id)
    return version.status if version else None
