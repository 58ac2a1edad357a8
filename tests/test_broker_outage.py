"""A dispatch while the broker is unreachable answers 503 and keeps the execution stored."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from executions.models import Execution
from kubefunction.celery import app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker_down(monkeypatch):
    saved = app.conf.broker_url, app.conf.task_publish_retry, app.conf.broker_connection_timeout
    # Celery reads CELERY_BROKER_URL from the environment before its own configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on 1
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    app.conf.task_publish_retry = False
    app.conf.broker_connection_timeout = 1
    app._pool = None
    app.amqp._producer_pool = None
    yield
    app.conf.broker_url, app.conf.task_publish_retry, app.conf.broker_connection_timeout = saved
    app._pool = None
    app.amqp._producer_pool = None


def test_dispatch_with_broker_down_is_503_and_stored(api, broker_down):
    api.post("/api/functions/", {"name": "f", "source": SimpleUploadedFile(
        "f.py", b"def handle(e):\n    return e\n")}, format="multipart")
    api.post("/api/triggers/", {"name": "t", "function": "f"}, format="json")
    response = api.post("/api/triggers/t/dispatch/", {"payload": 1}, format="json")
    assert response.status_code == 503, response.content
    execution = Execution.objects.get()
    assert execution.status == "queued"
    assert execution.task_id in response.json()["detail"]
    assert "broker is unreachable" in response.json()["detail"]
