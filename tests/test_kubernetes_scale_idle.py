"""The periodic task that scales idle warm Kubernetes Deployments to zero (beat, every minute)."""

from __future__ import annotations

import pytest

from executions import runtimes
from executions.tasks import scale_idle_warm
from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture
from tests.test_kubernetes_runtime import context, deployment, make_spec, runtime, warm  # noqa: F401 - fixtures


def test_scheduled_every_minute(settings):
    from kubefunction.celery import app

    [entry] = [e for e in settings.CELERY_BEAT_SCHEDULE.values()
               if e["task"] == "executions.scale_idle_warm"]
    assert entry["schedule"] == 60
    assert "executions.scale_idle_warm" in app.tasks


@pytest.mark.django_db
def test_beat_database_scheduler_imports_the_entry(settings):
    """What beat's DatabaseScheduler does at start with CELERY_BEAT_SCHEDULE."""
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import ModelEntry

    from kubefunction.celery import app

    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        ModelEntry.from_entry(name, app=app, **entry)
    task = PeriodicTask.objects.get(task="executions.scale_idle_warm")
    assert (task.interval.every, task.interval.period) == (60, "seconds")
    assert task.enabled and task.expire_seconds == 55


@pytest.mark.django_db
def test_idle_warm_deployment_is_scaled_to_zero(fake_kube, warm, settings,  # noqa: F811
                                                monkeypatch):
    settings.KUBEFUNCTION_RUNTIME = "kubernetes"
    monkeypatch.setitem(runtimes._instances, "kubernetes", warm)  # the worker's shared runtime
    spec = make_spec(timeout_seconds=10)
    assert warm.invoke(spec, {"n": 1}, context(seconds=10)).status == "succeeded"
    name = deployment(fake_kube)["metadata"]["name"]
    assert deployment(fake_kube)["spec"]["replicas"] == 1

    assert scale_idle_warm() == []  # used just now: not idle yet (300 s)
    assert deployment(fake_kube)["spec"]["replicas"] == 1

    settings.KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS = 0
    assert scale_idle_warm() == [name]
    assert deployment(fake_kube)["spec"]["replicas"] == 0
    assert fake_kube.wait_for(lambda: fake_kube.objects("pods") == [])
    assert scale_idle_warm() == []  # already down: no second patch
    assert fake_kube.api_calls.count(("patch", "deployments")) == 1

    again = warm.invoke(spec, {"n": 2}, context(seconds=10))  # scales up, waits for readiness
    assert again.status == "succeeded" and again.cold, again
    warm.release(spec)


@pytest.mark.django_db
def test_nothing_on_kubernetes_builds_no_client(settings, monkeypatch):
    settings.KUBEFUNCTION_RUNTIME = "local"
    monkeypatch.delitem(runtimes._instances, "kubernetes", raising=False)
    assert scale_idle_warm() == []
    assert "kubernetes" not in runtimes._instances
