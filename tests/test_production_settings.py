"""Production settings: `check --deploy` is clean, unsafe settings refuse to start, probes are
never redirected to HTTPS, and Celery tasks carry ids, never secrets."""

from __future__ import annotations

import inspect
import os
import secrets
import subprocess
import sys

import pytest
from django.test import Client

from kubefunction.celery import app
from tests.conftest import ROOT


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("DJANGO_", "KUBEFUNCTION_PRODUCTION"))}
    environment.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def production_env(**extra: str) -> dict[str, str]:
    return {"KUBEFUNCTION_PRODUCTION": "1", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)[:50],
            **extra}


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production_env())
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_turning_https_off_is_reported_by_check_deploy():
    """TLS may end at an ingress that redirects by itself; each setting can be turned off, and
    check --deploy then says what is off."""
    result = manage("check", "--deploy", "--fail-level", "WARNING",
                    **production_env(DJANGO_SECURE_SSL_REDIRECT="false",
                                     DJANGO_SECURE_COOKIES="false"))
    assert result.returncode != 0
    for warning in ("security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


@pytest.mark.parametrize("env", [
    {"KUBEFUNCTION_PRODUCTION": "1"},  # the development secret key
    {"KUBEFUNCTION_PRODUCTION": "1", "DJANGO_SECRET_KEY": "x" * 50, "DJANGO_DEBUG": "true"},
])
def test_production_refuses_unsafe_settings(env):
    result = manage("check", **env)
    assert result.returncode != 0
    assert "KUBEFUNCTION_PRODUCTION is on" in result.stderr


@pytest.mark.django_db
def test_probes_and_metrics_are_never_redirected_to_https(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()  # built after the override: SecurityMiddleware reads it when created
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz?check=database").status_code == 200
    assert client.get("/api/functions/").status_code == 301
    assert client.get("/api/functions/", secure=True).status_code in (401, 403)


SECRET_WORDS = ("token", "secret", "password", "credential", "env", "payload", "source")


def test_platform_tasks_take_ids_never_secrets():
    """Task arguments sit in Redis and in result rows: only ids (and small flags) go there."""
    app.loader.import_default_modules()  # every app's tasks module, as a worker does
    own = [task for name, task in app.tasks.items()
           if name.split(".")[0] in {"functions", "triggers", "executions", "metrics"}]
    assert {"executions.run", "functions.build_version"} <= {task.name for task in own}
    for task in own:
        parameters = inspect.signature(task.run).parameters
        for name in parameters:
            assert not any(word in name.lower() for word in SECRET_WORDS), (task.name, name)
