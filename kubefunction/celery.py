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


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _mask_secrets_in_worker_logs(logger=None, **kwargs) -> None:
    """Celery replaces the root logger's handlers (and gives its task logger its own), so the
    masking filter LOGGING puts on the console handler never sees a worker's lines: put it on
    the handlers Celery installed."""
    # This module is imported by kubefunction/__init__.py before Django is set up (settings,
    # apps): project code is imported when a signal fires, once it is.
    from kubefunction.log_redaction import install_secret_filter

    install_secret_filter(logger)
