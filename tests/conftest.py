"""Shared fixtures: users, API clients, example sources, and a real Celery worker process.

The worker is started once per session against the test database (it is a separate process, so
tests that use it run with `transaction=True`: it only sees committed rows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from kubefunction.celery import app as celery_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "functions"


def _test_database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def worker_kube(tmp_path_factory):
    """The fake Kubernetes API the session's worker is pointed at (docker kubelet when a Docker
    engine is here, so function images really run; scripted otherwise)."""
    from tests.docker_engine import engine_problem
    from tests.kube.fixtures import running_fake_kube

    kubelet = "scripted" if engine_problem() else "docker"
    with running_fake_kube(tmp_path_factory.mktemp("kube"), kubelet) as fake:
        yield fake


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory, worker_kube):
    """A real `celery worker` subprocess on the test database and a private queue."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    name = f"pytest-{os.getpid()}@localhost"
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, "DATABASE_URL": _test_database_url(),
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "KUBEFUNCTION_QUEUE": queue,
           "KUBEFUNCTION_KUBECONFIG": str(worker_kube.kubeconfig_path),
           "KUBEFUNCTION_KUBE_NAMESPACE": worker_kube.namespace,
           # Callback tests run their receiver on loopback and want quick retries.
           "KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
           "KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS": "0.2"}
    with django_db_blocker.unblock():
        celery_app.control.purge()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "kubefunction", "worker", "--pool=prefork",
         "--concurrency=2", f"--queues={queue}", "--loglevel=INFO", f"--hostname={name}",
         "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not celery_app.control.ping(destination=[name], timeout=1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the Celery worker did not start:\n{log_path.read_text()[-4000:]}")
    process.log_path = log_path
    process.hostname = name
    yield process
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def example(name: str) -> tuple[str, bytes]:
    """(file name, bytes) of a file in examples/functions/."""
    path = EXAMPLES / name
    return path.name, path.read_bytes()
