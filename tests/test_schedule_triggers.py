"""Schedule triggers: their django-celery-beat PeriodicTask follows the trigger (API, admin,
command), bad crontabs and time zones are refused naming the field, and a real `celery beat`
(DatabaseScheduler on the test database) fires them through a real worker — in their time zone,
and never when paused."""

import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from executions.models import Execution
from functions.models import Function, VersionStatus
from functions.services import function_register
from tests.conftest import example
from tests.processes import start_beat, stop
from triggers.models import Trigger
from triggers.services import trigger_create, trigger_update
from triggers.tasks import fire

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def hello(user) -> Function:
    return function_register(name="hello", owner=user, filename="hello.py",
                             data=example("hello.py")[1]).function


def periodic(name: str) -> PeriodicTask:
    return Trigger.objects.select_related("periodic_task__crontab").get(name=name).periodic_task


def test_the_periodic_task_follows_the_trigger_through_the_api(api, hello):
    created = api.post("/api/triggers/", {
        "name": "nightly", "function": "hello", "kind": "schedule",
        "schedule": "  */5   *  * * * ", "timezone": "Europe/Paris",
        "default_payload": {"name": "cron"}}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["schedule"] == "*/5 * * * *"
    assert created.json()["periodic_task"] == "trigger:nightly"
    task = periodic("nightly")
    trigger = Trigger.objects.get(name="nightly")
    assert task.task == "triggers.fire" and task.args == f"[{trigger.pk}]" and task.enabled
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == (
        "*/5", "*", "Europe/Paris")

    api.patch("/api/triggers/nightly/", {"schedule": "30 9 * * 1-5"}, format="json")
    task = periodic("nightly")
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("30", "9", "1-5")
    assert PeriodicTask.objects.filter(name="trigger:nightly").count() == 1

    api.patch("/api/triggers/nightly/", {"enabled": False}, format="json")
    assert periodic("nightly").enabled is False
    api.patch("/api/triggers/nightly/", {"enabled": True, "timezone": "Asia/Tokyo"},
              format="json")
    task = periodic("nightly")
    assert task.enabled and str(task.crontab.timezone) == "Asia/Tokyo"

    manual = api.patch("/api/triggers/nightly/", {"kind": "manual"}, format="json").json()
    assert manual["schedule"] == "" and manual["periodic_task"] is None
    assert not PeriodicTask.objects.filter(name="trigger:nightly").exists()
    api.patch("/api/triggers/nightly/", {"kind": "schedule", "schedule": "@hourly"},
              format="json")
    assert periodic("nightly").crontab.minute == "0"

    assert api.delete("/api/triggers/nightly/").status_code == 204
    assert not PeriodicTask.objects.filter(name="trigger:nightly").exists()
    assert not CrontabSchedule.objects.exists()  # the replaced crontabs went with it


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"schedule": "61 * * * *"}, "schedule", "minute '61' is not valid"),
    ({"schedule": "* * *"}, "schedule", "a crontab has 5 fields"),
    ({"schedule": "* * 31 2 *"}, "schedule", "never occurs"),
    ({"schedule": ""}, "schedule", "a crontab has 5 fields"),
    ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "not a known time zone"),
])
def test_bad_schedules_are_refused_naming_the_field(api, hello, fields, field, words):
    response = api.post("/api/triggers/", {"name": "t", "function": "hello", "kind": "schedule",
                                           **fields}, format="json")
    assert response.status_code == 400
    assert words in response.json()[field][0]
    assert not Trigger.objects.exists() and not PeriodicTask.objects.filter(
        task="triggers.fire").exists()


def test_only_schedule_triggers_have_a_schedule(api, hello):
    response = api.post("/api/triggers/", {"name": "t", "function": "hello",
                                           "schedule": "* * * * *"}, format="json")
    assert response.status_code == 400 and "schedule" in response.json()


def test_create_trigger_command_kinds(hello, admin_user):
    out = StringIO()
    call_command("create_trigger", "hook", "hello", "--kind", "http", stdout=out)
    text = out.getvalue()
    token = text.split("token (shown once, keep it): ")[1].split()[0]
    assert Trigger.objects.get(name="hook").token_hash not in text  # the hash is never shown
    assert (f"curl -X POST http://127.0.0.1:8000/t/hook -H 'X-KubeFunction-Token: {token}' "
            "-d '{\"x\": 1}'") in text

    out = StringIO()
    call_command("create_trigger", "tick", "hello", "--kind", "schedule", "--schedule",
                 "0 6 * * *", "--timezone", "America/New_York", "--disabled",
                 "--max-retries", "2", stdout=out)
    assert "schedule: 0 6 * * * (America/New_York) — paused" in out.getvalue()
    task = periodic("tick")
    assert not task.enabled and str(task.crontab.timezone) == "America/New_York"
    assert Trigger.objects.get(name="tick").max_retries == 2

    with pytest.raises(CommandError, match="schedule: a crontab has 5 fields"):
        call_command("create_trigger", "bad", "hello", "--kind", "schedule")
    with pytest.raises(CommandError, match="timezone: 'Nowhere' is not a known time zone"):
        call_command("create_trigger", "bad", "hello", "--kind", "schedule", "--schedule",
                     "* * * * *", "--timezone", "Nowhere")


def test_admin_schedule_and_http_triggers(admin_client, hello):
    add = reverse("admin:triggers_trigger_add")
    form = {"name": "tick", "function": hello.pk, "kind": "schedule", "enabled": "on",
            "description": "", "default_payload": "{}", "schedule": "*/10 * * * *",
            "timezone": "UTC", "max_retries": 0, "retry_backoff_seconds": 1.0,
            "callback_url": ""}
    refused = admin_client.post(add, {**form, "schedule": "* 25 * * *"})
    assert refused.status_code == 200
    assert "hour &#x27;25&#x27; is not valid" in refused.content.decode()
    assert admin_client.post(add, form).status_code == 302
    trigger = Trigger.objects.get(name="tick")
    assert periodic("tick").crontab.minute == "*/10"
    page = admin_client.get(reverse("admin:triggers_trigger_change", args=[trigger.pk]))
    assert "trigger:tick" in page.content.decode()

    created = admin_client.post(add, {**form, "name": "hook", "kind": "http", "schedule": ""},
                                follow=True)
    assert "Token of <b>hook</b> (shown once" in created.content.decode()
    hook = Trigger.objects.get(name="hook")
    old_hash = hook.token_hash
    changelist = reverse("admin:triggers_trigger_changelist")
    renewed = admin_client.post(changelist, {"action": "regenerate_token",
                                             "_selected_action": [hook.pk, trigger.pk]},
                                follow=True).content.decode()
    assert "Token of <b>hook</b>" in renewed and "only HTTP triggers have a token" in renewed
    assert Trigger.objects.get(name="hook").token_hash != old_hash

    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [trigger.pk],
                                   "post": "yes"})
    assert not Trigger.objects.filter(name="tick").exists()
    assert not PeriodicTask.objects.filter(name="trigger:tick").exists()


def test_firing_without_a_ready_version_records_nothing_and_says_why(hello, caplog):
    trigger = trigger_create(name="tick", function=hello, kind="schedule",
                             schedule="* * * * *")
    hello.versions.update(status=VersionStatus.BUILDING)
    with caplog.at_level("ERROR", logger="triggers.services"):
        assert fire(trigger.pk) is None
    assert "schedule trigger tick fired but nothing was dispatched" in caplog.text
    assert "has no ready version" in caplog.text
    assert not Execution.objects.exists()
    trigger_update(trigger=trigger, enabled=False)
    assert fire(trigger.pk) is None and fire(987654321) is None  # paused; deleted


def test_a_bulk_delete_deletes_the_periodic_tasks(hello):
    trigger_create(name="tick", function=hello, kind="schedule", schedule="* * * * *")
    Trigger.objects.filter(name="tick").delete()  # not through the service: the signal still acts
    assert not PeriodicTask.objects.filter(name="trigger:tick").exists()


# --- A real beat ---------------------------------------------------------------------------------

@pytest.fixture
def beat(celery_worker_process, tmp_path):
    """`celery beat` with the DatabaseScheduler on the test database, waking every second."""
    process = start_beat(tmp_path / "beat.log")
    yield process
    stop(process, timeout=20)


def _crontab_at(moment: datetime, zone: str) -> str:
    local = moment.astimezone(ZoneInfo(zone))
    return f"{local.minute} {local.hour} * * *"


@pytest.mark.worker
def test_beat_fires_schedule_triggers_in_their_time_zone_and_never_when_paused(hello, request):
    now = datetime.now(UTC)
    target = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (target - now).total_seconds() < 20:  # leave beat time to start
        target += timedelta(minutes=1)
    payload = {"name": "beat"}
    trigger_create(name="every-minute", function=hello, kind="schedule",
                   schedule="* * * * *", default_payload=payload)
    trigger_create(name="kolkata", function=hello, kind="schedule",
                   schedule=_crontab_at(target, "Asia/Kolkata"), timezone="Asia/Kolkata",
                   default_payload=payload)
    # The same fields read in UTC mean a time 5 h 30 min away: it must not fire.
    trigger_create(name="kolkata-read-as-utc", function=hello, kind="schedule",
                   schedule=_crontab_at(target, "Asia/Kolkata"), default_payload=payload)
    trigger_create(name="paused", function=hello, kind="schedule", schedule="* * * * *",
                   enabled=False, default_payload=payload)
    beat = request.getfixturevalue("beat")

    deadline = target + timedelta(seconds=45)
    fired = Execution.objects.filter(trigger__name__in=["every-minute", "kolkata"],
                                     status="succeeded")
    while datetime.now(UTC) < deadline:
        if set(fired.values_list("trigger__name", flat=True)) == {"every-minute", "kolkata"}:
            break
        assert beat.poll() is None, beat.log_path.read_text()[-3000:]
        time.sleep(0.5)
    names = set(fired.values_list("trigger__name", flat=True))
    assert names == {"every-minute", "kolkata"}, beat.log_path.read_text()[-3000:]
    execution = fired.filter(trigger__name="kolkata").get()
    assert execution.input == payload and execution.output["message"] == "Hello, beat!"
    assert execution.dispatched_at >= target - timedelta(seconds=1)
    time.sleep(2)  # anything the paused trigger sent would have arrived by now
    assert not Execution.objects.filter(trigger__name__in=["paused", "kolkata-read-as-utc"]
                                        ).exists()
