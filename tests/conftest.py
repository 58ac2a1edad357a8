"""Shared fixtures: users, API clients, example sources, and a real Celery worker process.

The worker is started once per session against the test database (it is a separate process, so
tests that use it run with `transaction=True`: it only sees committed rows).
"""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from executions.notifications import stop_listening
from kubefunction.celery import app as celery_app
from tests.processes import ROOT, celery_env, start_worker, stop

EXAMPLES = ROOT / "examples" / "functions"

# CI fails, rather than skips, the isolation tests it cannot run (tests/required_skips.py).
pytest_plugins = ["tests.required_skips"]

# The suite runs plain users' functions on every runtime: allow them all, here and in the
# processes it starts (tests/test_access_control.py narrows the list with override_settings).
os.environ["KUBEFUNCTION_ALLOWED_RUNTIMES"] = "local,docker,kubernetes"
settings.KUBEFUNCTION_ALLOWED_RUNTIMES = ["local", "docker", "kubernetes"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test database, with this process's execution listener (its own
    connection, which waits started) stopped before the database is dropped."""
    yield
    stop_listening()


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
    env = celery_env(
        KUBEFUNCTION_KUBECONFIG=str(worker_kube.kubeconfig_path),
        KUBEFUNCTION_KUBE_NAMESPACE=worker_kube.namespace,
        # Callback tests run their receiver on loopback and want quick retries.
        KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS="127.0.0.1",
        KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS="0.2")
    with django_db_blocker.unblock():
        celery_app.control.purge()
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    try:
        process = start_worker(f"pytest-{os.getpid()}@localhost", log_path, env)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield process
    stop(process)


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
