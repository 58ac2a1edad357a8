"""The audit trail (kubefunction/audit.py, Django's LogEntry): changes from the API, the admin
(its forms and its actions) and the commands are recorded with their author and what changed,
and the admin's Log entries page lists them."""

import re

import pytest
from django.contrib import admin as admin_site
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse

from functions.models import Function
from tests.conftest import EXAMPLES
from triggers.models import Trigger

pytestmark = pytest.mark.django_db

HELLO = EXAMPLES / "hello.py"


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="root-password-1")


def entries(obj) -> list[tuple[str, int, str]]:
    found = LogEntry.objects.filter(object_id=str(obj.pk),
                                    content_type=ContentType.objects.get_for_model(obj))
    return [(e.user.username, e.action_flag, e.get_change_message())
            for e in found.order_by("action_time", "pk")]


def test_api_changes_are_recorded_with_their_author_and_what_changed(api, user):
    with HELLO.open("rb") as source:
        made = api.post("/api/functions/", {"name": "audited", "source": source},
                        format="multipart")
    assert made.status_code == 201, made.content
    function = Function.objects.get(name="audited")
    changed = api.patch("/api/functions/audited/", {"timeout_seconds": 45,
                                                    "env_vars": {"K": "secret-ish"}},
                        format="json")
    assert changed.status_code == 200, changed.content
    assert api.patch("/api/functions/audited/", {"timeout_seconds": 45},
                     format="json").status_code == 200  # nothing changed: no record
    trigger = api.post("/api/triggers/", {"name": "audited-t", "function": "audited"},
                       format="json")
    assert trigger.status_code == 201, trigger.content
    trigger_pk = Trigger.objects.get(name="audited-t").pk
    assert api.delete("/api/triggers/audited-t/").status_code == 204

    log = entries(function)
    assert log[0][:2] == ("alice", ADDITION) and "version 1" in log[0][2]
    assert log[0][2].endswith("(via the API)")
    assert log[1][:2] == ("alice", CHANGE)
    assert "timeout_seconds: 30 → 45" in log[1][2] and "env_vars changed" in log[1][2]
    assert "secret-ish" not in log[1][2]  # a JSON field is named, never shown
    assert len(log) == 2
    trigger_log = [(e.action_flag, e.object_repr) for e in LogEntry.objects.filter(
        object_id=str(trigger_pk), content_type=ContentType.objects.get_for_model(Trigger))
        .order_by("pk")]
    assert [flag for flag, _ in trigger_log] == [ADDITION, DELETION]
    assert all("audited-t" in name for _, name in trigger_log)


def test_admin_changes_and_actions_are_recorded_and_listed_with_the_api_ones(api, user,
                                                                            superuser):
    with HELLO.open("rb") as source:
        api.post("/api/functions/", {"name": "both", "source": source}, format="multipart")
    api.post("/api/triggers/", {"name": "both-t", "function": "both", "kind": "http"},
             format="json")
    trigger = Trigger.objects.get(name="both-t")
    browser = Client()
    browser.force_login(superuser)

    # An edit through the trigger's change form, with the form's own current values.
    model_admin = admin_site.site._registry[Trigger]
    request = RequestFactory().get("/")
    request.user = superuser
    form = model_admin.get_form(request, trigger)(instance=trigger)
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is True:
            data[name] = "on"
        elif value is not None and value is not False:
            data[name] = value
    data["description"] = "edited in the admin"
    edit = browser.post(reverse("admin:triggers_trigger_change", args=[trigger.pk]), data)
    assert edit.status_code == 302, re.findall(r'<ul class="errorlist[^>]*>.*?</ul>',
                                               edit.content.decode(), re.S)
    trigger.refresh_from_db()
    assert trigger.description == "edited in the admin"
    # An admin action.
    browser.post(reverse("admin:triggers_trigger_changelist"),
                 {"action": "regenerate_token", "_selected_action": [trigger.pk]})

    log = entries(trigger)
    assert log[0][0] == "alice" and log[0][2].endswith("(via the API)")
    assert log[1][:2] == ("root", CHANGE) and "Description" in log[1][2]  # Django's own
    assert log[2][:2] == ("root", CHANGE)
    assert log[2][2] == "Issued a new token (via the admin action Regenerate token)"

    page = browser.get(reverse("admin:admin_logentry_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "alice" in text and "root" in text and "via the API" in text
    assert "Issued a new token" in text
    # Read only: no add, no edit.
    assert browser.get(reverse("admin:admin_logentry_add")).status_code == 403


def test_commands_are_recorded_as_their_owner(user, tmp_path):
    call_command("register_function", "cmd-audited", str(HELLO), "--trigger", "cmd-t",
                 "--owner", "alice")
    function = Function.objects.get(name="cmd-audited")
    assert entries(function)[0][:2] == ("alice", ADDITION)
    assert entries(function)[0][2].endswith("(via manage.py register_function)")
    changed = tmp_path / "hello.py"
    changed.write_bytes(HELLO.read_bytes() + b"\n# v2\n")
    call_command("register_function", "cmd-audited", str(changed), "--timeout", "12",
                 "--owner", "alice")
    assert "timeout_seconds: 30 → 12" in entries(function)[1][2]
    assert "Uploaded version 2" in entries(function)[1][2]
    assert entries(Trigger.objects.get(name="cmd-t"))[0][:2] == ("alice", ADDITION)
