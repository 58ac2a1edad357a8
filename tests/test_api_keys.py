"""Scoped API keys (triggers/keys.py, kubefunction.access.KeyScope): a key acts as its user
within its scopes — 403 on what its user may see but the key may not do, 404 (as for the user)
for what the user cannot see, 401 once expired or revoked — is stored hashed and shown once,
and never reaches a webhook's event."""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from executions.models import Execution
from functions.services import function_register, version_create
from tests.conftest import EXAMPLES
from triggers.keys import api_key_create
from triggers.models import ApiKey
from triggers.services import trigger_create

pytestmark = pytest.mark.django_db

ECHO = b"def handle(event, context):\n    return event\n"


def deploy(owner, name, **trigger):
    version = function_register(name=name, owner=owner, filename="echo.py", data=ECHO)
    return trigger_create(name=name, function=version.function, user=owner, **trigger)


def with_key(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_an_invoke_key_dispatches_its_trigger_and_nothing_else(user, other_user):
    mine = deploy(user, "mine")
    deploy(user, "also-mine")
    deploy(other_user, "theirs")
    _, raw = api_key_create(user=user, name="ci", scopes=["invoke"], triggers=[mine])
    client = with_key(raw)

    ok = client.post("/api/triggers/mine/dispatch/", {"payload": {"n": 1}}, format="json")
    assert ok.status_code == 202, ok.content
    assert Execution.objects.get(task_id=ok.json()["task_id"]).dispatched_by == user
    # Its result URL is readable with the key (an execution of a trigger it may invoke)...
    assert client.get(ok.json()["result_url"]).status_code == 200
    # ...not an execution of another trigger of its user's.
    api = APIClient()
    api.force_authenticate(user)
    other_run = api.post("/api/triggers/also-mine/dispatch/", {"payload": 1}, format="json")
    assert client.get(other_run.json()["result_url"]).status_code == 403
    # Its user's other trigger: seen, not dispatched.
    assert client.get("/api/triggers/also-mine/").status_code == 200
    refused = client.post("/api/triggers/also-mine/dispatch/", {"payload": 1}, format="json")
    assert refused.status_code == 403, refused.content
    # Someone else's: not even seen, as for the user.
    assert client.post("/api/triggers/theirs/dispatch/", {"payload": 1},
                       format="json").status_code == 404
    # Nor deploy, read or key management.
    assert client.patch("/api/functions/mine/", {"timeout_seconds": 5},
                        format="json").status_code == 403
    assert client.delete("/api/triggers/also-mine/").status_code == 403
    assert client.get("/api/executions/").status_code == 403
    assert client.get("/api/callbacks/key/").status_code == 403
    assert client.post("/api/keys/", {"name": "more", "scopes": ["deploy"]},
                       format="json").status_code == 403
    assert Execution.objects.count() == 2


def test_read_and_deploy_keys_and_invoke_by_function(user):
    function_trigger = deploy(user, "fn-trigger")
    _, read = api_key_create(user=user, name="dash", scopes=["read"])
    assert with_key(read).get("/api/executions/").status_code == 200
    assert with_key(read).get("/api/batches/").status_code == 200
    assert with_key(read).post("/api/triggers/fn-trigger/dispatch/", {"payload": 1},
                               format="json").status_code == 403
    _, deploy_key = api_key_create(user=user, name="cd", scopes=["deploy"])
    with (EXAMPLES / "hello.py").open("rb") as source:
        made = with_key(deploy_key).post("/api/functions/", {"name": "by-key", "source": source},
                                         format="multipart")
    assert made.status_code == 201, made.content
    assert made.json()["owner"] == "alice"
    _, by_function = api_key_create(user=user, name="fn", scopes=["invoke"],
                                    functions=[function_trigger.function])
    assert with_key(by_function).post("/api/triggers/fn-trigger/dispatch/", {"payload": 1},
                                      format="json").status_code == 202


def test_expired_revoked_and_wrong_keys_get_401(user):
    trigger = deploy(user, "t")
    key, raw = api_key_create(user=user, name="short", scopes=["invoke"], triggers=[trigger])
    assert with_key(raw).post("/api/triggers/t/dispatch/", {"payload": 1},
                              format="json").status_code == 202
    key.refresh_from_db()
    assert key.last_used_at is not None
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert with_key(raw).post("/api/triggers/t/dispatch/", {"payload": 1},
                              format="json").status_code == 401
    other, raw2 = api_key_create(user=user, name="revoked", scopes=["invoke"], triggers=[trigger])
    owner = APIClient()
    owner.force_authenticate(user)
    assert owner.delete(f"/api/keys/{other.pk}/").status_code == 204
    assert with_key(raw2).get("/api/triggers/").status_code == 401
    assert ApiKey.objects.get(pk=other.pk).revoked_at is not None  # revoked, kept
    assert with_key(raw2[:-2] + "xx").get("/api/triggers/").status_code == 401
    assert with_key("kf_nothere_abc").get("/api/triggers/").status_code == 401


def test_keys_made_by_the_api_are_shown_once_and_stored_hashed(user, api):
    deploy(user, "hooked")
    made = api.post("/api/keys/", {"name": "svc", "scopes": ["invoke", "read"],
                                   "triggers": ["hooked"]}, format="json")
    assert made.status_code == 201, made.content
    raw = made.json()["key"]
    assert re.fullmatch(r"kf_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", raw)
    shown = api.get(f"/api/keys/{made.json()['id']}/").json()
    assert "key" not in shown and shown["prefix"] == raw.split("_")[1]
    assert shown["triggers"] == ["hooked"] and shown["scopes"] == ["invoke", "read"]
    stored = ApiKey.objects.values().get()
    assert raw not in str(stored) and raw.split("_", 2)[2] not in str(stored)
    assert with_key(raw).get("/api/executions/").status_code == 200
    # Bad keys are refused naming the field: unknown scope, someone else's trigger, invoke
    # with no target.
    assert "scopes" in api.post("/api/keys/", {"name": "x", "scopes": ["root"]},
                                format="json").json()
    assert "triggers" in api.post("/api/keys/", {"name": "x", "scopes": ["invoke"]},
                                  format="json").json()
    assert LogEntry.objects.filter(object_repr__startswith="svc").exists()  # audited


def test_a_key_never_reaches_a_webhooks_event(user):
    trigger = deploy(user, "conv-hook", kind="http", public=True)
    version_create(function=trigger.function, filename="main.py", user=user,
                   data=b"def main(**kw):\n    return kw\n", convention="windmill")
    _, raw = api_key_create(user=user, name="k", scopes=["read"])
    answer = Client().post("/t/conv-hook", data="{}", content_type="application/json",
                           headers={"Authorization": f"Bearer {raw}",
                                    "Prefer": "respond-async", "X-Other": "kept"})
    assert answer.status_code == 202, answer.content
    execution = Execution.objects.get(task_id=answer.json()["task_id"])
    names = [name for name, _ in execution.input["headers"]]
    assert "authorization" not in names and "x-other" in names


def test_the_admin_makes_a_key_shows_it_once_and_revokes_it(user, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="root-password-1")
    trigger = deploy(user, "admin-t")
    browser = Client()
    browser.force_login(root)
    made = browser.post(reverse("admin:triggers_apikey_add"), {
        "name": "from-admin", "user": user.pk, "scopes": ["invoke"],
        "triggers": [trigger.pk]}, follow=True)
    assert made.status_code == 200
    raw = re.search(r"kf_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", made.content.decode()).group(0)
    key = ApiKey.objects.get(name="from-admin")
    assert key.user == user and key.triggers.get() == trigger
    assert with_key(raw).post("/api/triggers/admin-t/dispatch/", {"payload": 1},
                              format="json").status_code == 202
    refused = browser.post(reverse("admin:triggers_apikey_add"), {
        "name": "bad", "user": user.pk, "scopes": ["invoke"]})
    assert refused.status_code == 200 and "names the triggers" in refused.content.decode()
    browser.post(reverse("admin:triggers_apikey_changelist"),
                 {"action": "revoke", "_selected_action": [key.pk]})
    assert with_key(raw).get("/api/triggers/").status_code == 401
