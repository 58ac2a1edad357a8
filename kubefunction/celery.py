"""The Celery application shared by the web process, workers and beat."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kubefunction.settings")

app = Celery("kubefunction")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _recycle_database_connections(**kwargs) -> None:
    """What Django does around each request: drop connections that are broken or past
    CONN_MAX_AGE, and health-check the others before their next use."""
    from django.db import close_old_connections

    close_old_connections()


@signals.worker_process_shutdown.connect
def _release_runtimes(**kwargs) -> None:
    """A prefork child skips atexit hooks: stop its warm function processes explicitly."""
    from executions.runtimes import close_runtimes

    close_runtimes()
