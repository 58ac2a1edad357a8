"""The periodic task that scales idle warm Kubernetes Deployments to zero (beat, every minute)."""

from __future__ import annotations

import time

import pytest

from executions import runtimes
from executions.runtimes.kubernetes.manifests import LAST_USED, TIMEOUT, parse_timestamp, warm_name
from executions.runtimes.kubernetes.runtime import KubernetesRuntime
from executions.runtimes.kubernetes.warm import SCAN_SECONDS, TOUCH_SECONDS
from executions.tasks import scale_idle_warm
from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture
from tests.test_kubernetes_runtime import (  # noqa: F401 - runtime and warm: fixtures
    context,
    deployment,
    make_spec,
    runtime,
    used_long_ago,
    warm,
)


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

    used_long_ago(fake_kube, name)
    assert scale_idle_warm() == [name]
    assert deployment(fake_kube)["spec"]["replicas"] == 0
    assert fake_kube.wait_for(lambda: fake_kube.objects("pods") == [])
    assert scale_idle_warm() == []  # already down: no second patch
    scale_downs = [e for e in fake_kube.cluster.history if e.plural == "deployments"
                   and e.old and e.old["spec"]["replicas"] == 1 and e.obj["spec"]["replicas"] == 0]
    assert len(scale_downs) == 1

    again = warm.invoke(spec, {"n": 2}, context(seconds=10))  # scales up, waits for readiness
    assert again.status == "succeeded" and again.cold, again
    warm.release(spec)


@pytest.mark.django_db
def test_a_fresh_process_scales_down_what_another_used(fake_kube, warm, settings,  # noqa: F811
                                                       monkeypatch):
    """The last use is on the Deployment: a runtime that never invoked anything (a new worker
    process, the beat task's) scales down the idle one and leaves the recently used one."""
    settings.KUBEFUNCTION_RUNTIME = "kubernetes"
    old, recent = make_spec(timeout_seconds=10), make_spec(timeout_seconds=10, version_number=4)
    for spec in (old, recent):
        assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    names = {spec: warm_name(spec) for spec in (old, recent)}
    warm.close()  # the worker process that used both is gone: its last uses are stamped
    for name in names.values():
        stamped = next(d for d in fake_kube.objects("deployments")
                       if d["metadata"]["name"] == name)["metadata"]["annotations"][LAST_USED]
        assert abs(parse_timestamp(stamped) - time.time()) < 5
    used_long_ago(fake_kube, names[old], seconds=600)  # and time passes

    fresh = KubernetesRuntime()
    monkeypatch.setitem(runtimes._instances, "kubernetes", fresh)
    try:
        assert scale_idle_warm() == [names[old]]
        replicas = {d["metadata"]["name"]: d["spec"]["replicas"]
                    for d in fake_kube.objects("deployments")}
        assert replicas == {names[old]: 0, names[recent]: 1}
    finally:
        fresh.close()


def test_use_is_stamped_at_most_every_few_seconds(fake_kube, warm):  # noqa: F811
    spec = make_spec(timeout_seconds=10)
    assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    created = deployment(fake_kube)["metadata"]["annotations"]
    assert created[TIMEOUT] == "10"
    assert abs(parse_timestamp(created[LAST_USED]) - time.time()) < 5
    patches = fake_kube.api_calls.count(("patch", "deployments"))  # created stamped: none
    for _ in range(3):  # within TOUCH_SECONDS: no patch, on the hot path or off it
        assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    assert fake_kube.api_calls.count(("patch", "deployments")) == patches
    assert deployment(fake_kube)["metadata"]["annotations"] == created

    used_long_ago(fake_kube, warm_name(spec))
    name = warm_name(spec)
    warm.warm.touched[name] -= TOUCH_SECONDS  # as if TOUCH_SECONDS had passed
    assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    # stamped by the upkeep thread, off the invocation path: one patch for the uses since
    assert fake_kube.wait_for(
        lambda: fake_kube.api_calls.count(("patch", "deployments")) == patches + 1)
    stamped = parse_timestamp(deployment(fake_kube)["metadata"]["annotations"][LAST_USED])
    assert abs(stamped - time.time()) < 5
    for _ in range(3):  # used again within TOUCH_SECONDS of that patch: none until then
        assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    assert fake_kube.api_calls.count(("patch", "deployments")) == patches + 1
    warm.close()  # what is left is stamped on the way out: one more
    assert fake_kube.api_calls.count(("patch", "deployments")) == patches + 2
    warm.release(spec)


def test_idle_waits_for_the_timeout_of_an_invocation_still_running(fake_kube, warm,  # noqa: F811
                                                                   settings):
    settings.KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS = 0
    spec = make_spec(timeout_seconds=900)
    assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    name = warm_name(spec)
    used_long_ago(fake_kube, name, seconds=600)  # another worker may still run it (900 s)
    assert warm.warm.scale_idle() == []
    used_long_ago(fake_kube, name, seconds=900 + TOUCH_SECONDS + 1)
    assert warm.warm.scale_idle() == [name]
    warm.release(spec)


def test_a_use_stamped_after_the_read_wins(fake_kube, warm):  # noqa: F811
    """scale-down carries the resourceVersion it read: a use stamped meanwhile (409) is seen."""
    spec = make_spec(timeout_seconds=10)
    assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    name = warm_name(spec)
    used_long_ago(fake_kube, name)
    stale = deployment(fake_kube)  # what a scanning worker read
    used_long_ago(fake_kube, name, seconds=1)  # another worker's invocation, just now
    assert warm.warm._scale_down_if_idle(stale) is False
    assert deployment(fake_kube)["spec"]["replicas"] == 1
    assert ("patch", "deployments") in fake_kube.api_calls  # tried, refused with 409, re-read
    used_long_ago(fake_kube, name)
    assert warm.warm._scale_down_if_idle(stale) is True  # 409, re-read: idle after all
    assert deployment(fake_kube)["spec"]["replicas"] == 0
    warm.release(spec)


@pytest.mark.django_db
def test_nothing_on_kubernetes_builds_no_client(settings, monkeypatch):
    settings.KUBEFUNCTION_RUNTIME = "local"
    monkeypatch.delitem(runtimes._instances, "kubernetes", raising=False)
    assert scale_idle_warm() == []
    assert "kubernetes" not in runtimes._instances


def test_a_busy_worker_scans_at_most_once_a_minute(fake_kube, warm):  # noqa: F811
    idle, busy = make_spec(timeout_seconds=10), make_spec(timeout_seconds=10, version_number=4)
    for spec in (idle, busy):
        assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    lists = fake_kube.api_calls.count(("list", "deployments"))  # the informer's, once
    used_long_ago(fake_kube, warm_name(idle))
    assert warm.invoke(busy, {}, context(seconds=10)).status == "succeeded"
    assert not fake_kube.wait_for(  # scanned less than 60 s ago: the idle one is left alone
        lambda: deployment_replicas(fake_kube)[warm_name(idle)] == 0, timeout=0.5)
    warm.warm.scanned -= SCAN_SECONDS
    assert warm.invoke(busy, {}, context(seconds=10)).status == "succeeded"
    # scanned now, off the invocation path, over the Deployments the watch keeps: no list
    assert fake_kube.wait_for(lambda: deployment_replicas(fake_kube) == {
        warm_name(idle): 0, warm_name(busy): 1})
    assert fake_kube.api_calls.count(("list", "deployments")) == lists
    for spec in (idle, busy):
        warm.release(spec)


def deployment_replicas(fake) -> dict[str, int]:
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in fake.objects("deployments")}
