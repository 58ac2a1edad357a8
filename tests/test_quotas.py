"""Per-owner quotas (functions/quotas.py, executions/quotas.py): functions and stored MB are
refused with 403 and store nothing; executions and CPU seconds per UTC day with 429 and a
Retry-After until midnight, on the API, webhooks and schedules alike; an owner's quota overrides
the defaults; superusers have none; the admin shows usage beside the limits."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from executions.models import Execution
from functions import quotas
from functions.models import Function, FunctionVersion, OwnerQuota
from functions.services import function_register
from triggers.services import trigger_create

pytestmark = pytest.mark.django_db

SOURCE = b"def handle(event, context):\n    return event\n"


@pytest.fixture(autouse=True)
def fresh_limits():
    quotas.forget()
    yield
    quotas.forget()


def upload(api, name, data=SOURCE):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return api.post("/api/functions/", {"name": name, "source": SimpleUploadedFile(
        "f.py", data)}, format="multipart")


def test_functions_and_stored_bytes_are_hard_caps(api, user, settings):
    settings.KUBEFUNCTION_QUOTA_FUNCTIONS = 2
    assert upload(api, "one").status_code == 201
    assert upload(api, "two").status_code == 201
    third = upload(api, "three")
    assert third.status_code == 403 and "2 function" in third.json()["name"][0]
    assert not Function.objects.filter(name="three").exists()

    settings.KUBEFUNCTION_QUOTA_FUNCTIONS = 0
    settings.KUBEFUNCTION_QUOTA_STORED_MB = 1
    big = SOURCE + b"#" * (1024 * 1024)
    refused = api.post("/api/functions/one/versions/", {"source": _file(big)},
                       format="multipart")
    assert refused.status_code == 403 and "1 MB" in refused.json()["source"][0]
    assert FunctionVersion.objects.filter(function__name="one").count() == 1
    # A new function whose first upload passes it is not stored either (one transaction).
    huge = upload(api, "huge", big)
    assert huge.status_code == 403 and not Function.objects.filter(name="huge").exists()
    # An owner's own quota overrides the default (0 there: unlimited).
    OwnerQuota.objects.create(user=user, stored_mb=0)
    quotas.forget(user.pk)
    assert api.post("/api/functions/one/versions/", {"source": _file(big)},
                    format="multipart").status_code == 201


def _file(data):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("f.py", data)


def test_executions_per_day_are_refused_with_retry_after_until_midnight(api, user):
    version = function_register(name="daily", owner=user, filename="f.py", data=SOURCE)
    trigger_create(name="daily", function=version.function, user=user)
    trigger_create(name="daily-hook", function=version.function, user=user, kind="http",
                   public=True)
    OwnerQuota.objects.create(user=user, executions_per_day=3)
    quotas.forget(user.pk)  # (other processes: within quotas.CACHE_SECONDS)
    assert api.post("/api/triggers/daily/dispatch/", {"payloads": [1, 2]},
                    format="json").status_code == 202
    # A batch that would pass it is refused whole.
    assert api.post("/api/triggers/daily/dispatch/", {"payloads": [3, 4]},
                    format="json").status_code == 429
    assert api.post("/api/triggers/daily/dispatch/", {"payload": 3},
                    format="json").status_code == 202
    refused = api.post("/api/triggers/daily/dispatch/", {"payload": 4}, format="json")
    assert refused.status_code == 429 and "3 executions per day" in refused.json()["detail"]
    now = timezone.now()
    midnight = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1),
                                datetime.min.time(), UTC)
    assert abs(int(refused["Retry-After"]) - (midnight - now).total_seconds()) < 5
    hook = Client().post("/t/daily-hook", data="{}", content_type="application/json")
    assert hook.status_code == 429 and hook["Retry-After"]
    assert Execution.objects.count() == 3
    # Yesterday's executions do not count.
    Execution.objects.update(dispatched_at=now - timedelta(days=1))
    assert api.post("/api/triggers/daily/dispatch/", {"payload": 5},
                    format="json").status_code == 202


def test_cpu_seconds_per_day_and_superusers(api, user, django_user_model, settings):
    settings.KUBEFUNCTION_QUOTA_CPU_SECONDS_PER_DAY = 10
    version = function_register(name="cpu", owner=user, filename="f.py", data=SOURCE)
    trigger_create(name="cpu", function=version.function, user=user)
    assert api.post("/api/triggers/cpu/dispatch/", {"payload": 1},
                    format="json").status_code == 202
    Execution.objects.update(cpu_seconds=10.5, status="succeeded")
    refused = api.post("/api/triggers/cpu/dispatch/", {"payload": 2}, format="json")
    assert refused.status_code == 429 and "10.5 s are used" in refused.json()["detail"]

    settings.KUBEFUNCTION_QUOTA_FUNCTIONS = 1
    root = django_user_model.objects.create_superuser("root", password="root-password-1")
    for name in ("r-one", "r-two"):
        made = function_register(name=name, owner=root, filename="f.py", data=SOURCE)
        trigger_create(name=name, function=made.function, user=root)
    from executions.services import execution_dispatch
    from triggers.models import Trigger

    Execution.objects.filter(function__owner=root).update(cpu_seconds=99)
    assert execution_dispatch(trigger=Trigger.objects.get(name="r-one"), payload=1)


def test_the_admin_shows_usage_beside_the_limits(user, django_user_model, settings):
    settings.KUBEFUNCTION_QUOTA_FUNCTIONS = 5
    version = function_register(name="shown", owner=user, filename="f.py", data=SOURCE)
    trigger_create(name="shown", function=version.function, user=user)
    OwnerQuota.objects.create(user=user, executions_per_day=100)
    root = django_user_model.objects.create_superuser("root", password="root-password-1")
    browser = Client()
    browser.force_login(root)
    page = browser.get(reverse("admin:functions_ownerquota_changelist")).content.decode()
    assert "1 / 5" in page and "0 / 100" in page and "0 / ∞" in page
    detail = browser.get(reverse("admin:functions_ownerquota_change",
                                 args=[OwnerQuota.objects.get(user=user).pk]))
    assert "functions 1 / 5" in detail.content.decode()


def test_the_quota_page_reads_usage_in_one_query_however_many_owners(django_user_model):
    root = django_user_model.objects.create_superuser("root", password="root-password-1")
    browser = Client()
    browser.force_login(root)
    url = reverse("admin:functions_ownerquota_changelist")

    def queries_for(owners: int) -> int:
        for n in range(owners):
            owner = django_user_model.objects.create_user(f"u{owners}-{n}")
            function_register(name=f"f{owners}-{n}", owner=owner, filename="f.py", data=SOURCE)
            OwnerQuota.objects.create(user=owner, functions=3)
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            assert browser.get(url).status_code == 200
        return len(captured)

    assert queries_for(1) == queries_for(6)  # 7 owners listed the second time: no query each


def test_a_schedule_fire_past_the_daily_quota_is_recorded_as_skipped(user):
    from triggers.services import trigger_fire

    version = function_register(name="cron", owner=user, filename="f.py", data=SOURCE)
    trigger = trigger_create(name="cron", function=version.function, user=user,
                             kind="schedule", schedule="0 * * * *")
    OwnerQuota.objects.create(user=user, executions_per_day=1)
    quotas.forget(user.pk)
    first = trigger_fire(trigger_id=trigger.pk)
    assert first.status == "queued"
    skipped = trigger_fire(trigger_id=trigger.pk)
    assert skipped.status == "failed" and skipped.error_type == "RateLimited"
    assert "1 executions per day" in skipped.error


def test_an_idempotent_replay_is_answered_when_the_quota_is_spent(api, user):
    version = function_register(name="keyed", owner=user, filename="f.py", data=SOURCE)
    trigger_create(name="keyed", function=version.function, user=user)
    OwnerQuota.objects.create(user=user, executions_per_day=1)
    quotas.forget(user.pk)
    first = api.post("/api/triggers/keyed/dispatch/", {"payload": 1}, format="json",
                     headers={"Idempotency-Key": "k"})
    assert first.status_code == 202
    again = api.post("/api/triggers/keyed/dispatch/", {"payload": 1}, format="json",
                     headers={"Idempotency-Key": "k"})
    assert again.status_code == 200 and again.json()["task_id"] == first.json()["task_id"]
    new = api.post("/api/triggers/keyed/dispatch/", {"payload": 2}, format="json",
                   headers={"Idempotency-Key": "k2"})
    assert new.status_code == 429
    from executions.models import DispatchKey

    assert not DispatchKey.objects.filter(key="k2").exists()  # refused: the key is not kept
