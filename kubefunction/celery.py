"""The Celery application shared by the web process, workers and beat."""

import os

import kombu
from celery import Celery, signals
from celery.app.amqp import AMQP

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kubefunction.settings")


class BrokerConnection(kombu.Connection):
    """kombu's connection, with a `collect()` that lets go of the channel it tried to close.

    When the broker goes away under a consuming worker, Celery (5.7) first `collect()`s the
    broken connection, which closes the default channel and detaches the transport, then
    `close()`s it. On Redis a channel's close fails part-way while the server is down (it reads
    the BRPOP in flight, deletes its fanout queues) and stays open, so the second close runs
    it again against a transport that no longer knows its broker: AttributeError, which is not
    a connection error, and the worker dies with "Unrecoverable error" instead of
    reconnecting. A collected connection has nothing left to close: its channel is dropped.
    The messages it held unacknowledged go back to the queue by the broker's visibility
    timeout (or the reaper), as after any lost connection.
    """

    def collect(self, socket_timeout=None):
        try:
            super().collect(socket_timeout)
        finally:
            self._default_channel = None


class BrokerAMQP(AMQP):
    Connection = BrokerConnection


app = Celery("kubefunction", amqp=BrokerAMQP)
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
