"""Re-running finished executions from the API and the admin, on the same or the current
version, with links both ways; re-dispatching dead letters."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from executions.models import Execution
from functions.services import function_register, version_create
from triggers.services import trigger_create

V1 = b"def handle(event):\n    return {'v': 1, 'echo': event}\n"
V2 = b"def handle(event):\n    return {'v': 2, 'echo': event}\n"


def wait_finished(api, task_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = api.get(f"/api/executions/{task_id}/?wait=5").json()
        if body["status"] not in ("queued", "running"):
            return body
    pytest.fail(f"{task_id} did not finish")


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_rerun_through_the_api_on_the_same_or_current_version(api, user, celery_worker_process):
    version = function_register(name="versions", owner=user, filename="fn.py", data=V1)
    trigger_create(name="versions", function=version.function)
    first = api.post("/api/triggers/versions/dispatch/?wait=20", {"payload": {"n": 7}},
                     format="json").json()
    assert first["output"] == {"v": 1, "echo": {"n": 7}}
    version_create(function=version.function, filename="fn.py", data=V2, user=user)

    same = api.post(f"/api/executions/{first['task_id']}/rerun/", {"version": "same"},
                    format="json")
    assert same.status_code == 202, same.content
    assert (same.json()["rerun_of"], same.json()["version"]) == (first["task_id"], 1)
    current = api.post(f"/api/executions/{first['task_id']}/rerun/", {"version": "current"},
                       format="json")
    assert current.status_code == 202 and current.json()["version"] == 2

    same_done = wait_finished(api, same.json()["task_id"])
    assert (same_done["status"], same_done["output"], same_done["input"]) == (
        "succeeded", {"v": 1, "echo": {"n": 7}}, {"n": 7})
    assert (same_done["rerun_of"], same_done["trigger"]) == (first["task_id"], "versions")
    current_done = wait_finished(api, current.json()["task_id"])
    assert current_done["output"] == {"v": 2, "echo": {"n": 7}}
    original = api.get(f"/api/executions/{first['task_id']}/").json()
    assert original["reruns"] == [current_done["task_id"], same_done["task_id"]]
    assert original["rerun_of"] is None


@pytest.fixture
def finished(user):
    version = function_register(name="echo", owner=user, filename="fn.py", data=V1)
    trigger = trigger_create(name="echo", function=version.function, max_retries=2,
                             retry_backoff_seconds=3)
    return Execution.objects.create(
        task_id="done-1", function=version.function, version=version, trigger=trigger,
        input={"k": "ü"}, status="failed", dead_letter=True, error="boom",
        dispatched_at=timezone.now(), finished_at=timezone.now())


@pytest.mark.django_db
def test_api_refuses_what_cannot_be_rerun(api, finished, other_user):
    queued = Execution.objects.create(task_id="still-queued", function=finished.function,
                                      version=finished.version, dispatched_at=timezone.now())
    response = api.post(f"/api/executions/{queued.task_id}/rerun/", {}, format="json")
    assert response.status_code == 409 and "only a finished" in response.json()["execution"][0]
    response = api.post(f"/api/executions/{finished.task_id}/rerun/", {"version": "v9"},
                        format="json")
    assert response.status_code == 400 and "version" in response.json()
    stranger = APIClient()
    stranger.force_authenticate(other_user)
    response = stranger.post(f"/api/executions/{finished.task_id}/rerun/", {}, format="json")
    assert response.status_code == 404
    assert Execution.objects.count() == 2, "nothing was queued"


@pytest.mark.django_db
def test_an_execution_whose_input_was_purged_cannot_be_rerun(api, finished):
    Execution.objects.filter(pk=finished.pk).update(
        input=None, input_sha256="0" * 64, payload_purged_at=timezone.now())
    response = api.post(f"/api/executions/{finished.task_id}/rerun/", {}, format="json")
    assert response.status_code == 409
    assert "hash of its input" in response.json()["execution"][0]
    assert Execution.objects.count() == 1


@pytest.mark.django_db
def test_rerun_copies_input_trigger_and_current_retry_settings(api, finished):
    response = api.post(f"/api/executions/{finished.task_id}/rerun/", {}, format="json")
    assert response.status_code == 202
    rerun = Execution.objects.get(task_id=response.json()["task_id"])
    assert (rerun.input, rerun.trigger, rerun.version, rerun.rerun_of) == (
        finished.input, finished.trigger, finished.version, finished)
    assert (rerun.status, rerun.attempt, rerun.max_retries, rerun.retry_backoff_seconds) == (
        "queued", 1, 2, 3.0)
    assert not rerun.dead_letter and rerun.attempts == []


@pytest.mark.django_db
def test_admin_reruns_and_links_both_ways(admin_client, finished):
    version_create(function=finished.function, filename="fn.py", data=V2)
    changelist = reverse("admin:executions_execution_changelist")
    response = admin_client.post(changelist, {"action": "rerun_current",
                                              "_selected_action": [finished.pk]}, follow=True)
    assert b"Queued 1 re-run(s) on the current version" in response.content
    by_action = Execution.objects.get(rerun_of=finished)
    assert by_action.version.number == 2

    page = reverse("admin:executions_execution_change", args=[finished.pk])
    html = admin_client.get(page).content.decode()
    rerun_url = reverse("admin:executions_execution_rerun", args=[finished.pk, "same"])
    assert f'action="{rerun_url}"' in html and by_action.task_id in html
    assert admin_client.get(rerun_url).status_code == 405
    response = admin_client.post(rerun_url)
    by_button = Execution.objects.filter(rerun_of=finished).exclude(pk=by_action.pk).get()
    assert response.url == reverse("admin:executions_execution_change", args=[by_button.pk])
    assert by_button.version.number == 1
    back = admin_client.get(response.url).content.decode()
    assert page in back and finished.task_id in back, "the re-run links to its original"
    assert "Re-run (same version)" not in back, "a queued execution cannot be re-run yet"


@pytest.mark.django_db
def test_dead_letters_filter_and_redispatch(admin_client, finished):
    ok = Execution.objects.create(task_id="ok-1", function=finished.function,
                                  version=finished.version, status="succeeded",
                                  dispatched_at=timezone.now(), finished_at=timezone.now())
    changelist = reverse("admin:executions_execution_changelist")
    listed = admin_client.get(changelist, {"dead_letter": "pending"}).context["cl"].result_list
    assert list(listed) == [finished]
    response = admin_client.post(changelist, {"action": "redispatch",
                                              "_selected_action": [finished.pk, ok.pk]},
                                 follow=True)
    assert b"Queued 1 re-run(s)" in response.content
    assert b"Skipped 1 execution(s) that are not dead letters" in response.content
    assert Execution.objects.filter(rerun_of=finished).count() == 1
    assert not Execution.objects.filter(rerun_of=ok).exists()
    assert list(admin_client.get(changelist, {"dead_letter": "pending"})
                .context["cl"].result_list) == []
    assert list(admin_client.get(changelist, {"dead_letter": "yes"})
                .context["cl"].result_list) == [finished]
