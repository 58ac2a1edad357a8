"""Who sees what, on the real Postgres: staff are not all-seeing, the operator chooses the
runtimes, /metrics needs its token, logins are throttled (issue 11; docs/security.md).

Alice (not staff) owns a function, a trigger and executions. Vera is staff with only the view_*
permissions: she sees Alice's objects but every change is refused, in the API (403) and in the
admin (actions not offered, refused when posted anyway). Sam is staff without permissions: he
sees nothing of Alice's. A superuser sees and does everything.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from executions.models import Batch, Execution, ExecutionStatus
from executions.services import execution_run
from functions.models import Function, FunctionVersion
from triggers.models import Trigger

pytestmark = pytest.mark.django_db

HANDLER = b"def handle(event, context):\n    return event\n"
VIEW_PERMISSIONS = ["view_function", "view_functionversion", "view_trigger", "view_execution",
                    "view_batch"]


def upload(data: bytes = HANDLER) -> SimpleUploadedFile:
    return SimpleUploadedFile("hello.py", data, content_type="application/octet-stream")


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def alice_objects(api):
    """Alice's function, HTTP trigger, a batch of two executions (one finished)."""
    assert api.post("/api/functions/", {"name": "alice-fn", "source": upload()},
                    format="multipart").status_code == 201
    assert api.post("/api/triggers/", {"name": "alice-trigger", "function": "alice-fn",
                                       "kind": "http"}, format="json").status_code == 201
    assert api.post("/api/triggers/alice-trigger/dispatch/", {"payloads": [1, 2]},
                    format="json").status_code == 202
    finished = Execution.objects.filter(function__name="alice-fn").first()
    Execution.objects.filter(pk=finished.pk).update(
        status=ExecutionStatus.SUCCEEDED, output=1, started_at=timezone.now(),
        finished_at=timezone.now())
    queued = Execution.objects.filter(function__name="alice-fn").exclude(pk=finished.pk).get()
    return {"function": "alice-fn", "trigger": "alice-trigger", "task_id": finished.task_id,
            "execution": finished, "queued": queued, "batch": str(Batch.objects.get().pk)}


@pytest.fixture
def viewer(django_user_model):
    """Staff with the view permissions only."""
    vera = django_user_model.objects.create_user("vera", password="vera-password-1",
                                                 is_staff=True)
    vera.user_permissions.set(Permission.objects.filter(codename__in=VIEW_PERMISSIONS))
    return django_user_model.objects.get(pk=vera.pk)  # fresh: no cached permissions


@pytest.fixture
def plain_staff(django_user_model):
    return django_user_model.objects.create_user("sam", password="sam-password-1",
                                                 is_staff=True)


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com",
                                                      "root-password-1")


def snapshot() -> tuple:
    return (list(Function.objects.values_list("name", "description", "runtime",
                                              "active_version__number")),
            FunctionVersion.objects.count(),
            list(Trigger.objects.values_list("name", "enabled", "token_hash", "description")),
            sorted(Execution.objects.values_list("task_id", "status")), Batch.objects.count())


def reads(objects) -> list[str]:
    return ["/api/functions/alice-fn/", "/api/functions/alice-fn/versions/",
            "/api/triggers/alice-trigger/", f"/api/executions/{objects['task_id']}/",
            f"/api/batches/{objects['batch']}/"]


def changes(objects) -> list[tuple[str, str, dict, str]]:
    """(method, path, body, format) of every change the API offers on Alice's objects."""
    return [
        ("patch", "/api/functions/alice-fn/", {"description": "mine now"}, "json"),
        ("put", "/api/functions/alice-fn/", {"description": "mine now"}, "json"),
        ("post", "/api/functions/alice-fn/versions/", {"source": upload(HANDLER + b"#2\n")},
         "multipart"),
        ("post", "/api/functions/alice-fn/build/", {}, "json"),
        ("post", "/api/functions/alice-fn/activate/", {"version": 1}, "json"),
        ("post", "/api/triggers/alice-trigger/dispatch/", {"payload": {"x": 1}}, "json"),
        ("patch", "/api/triggers/alice-trigger/", {"description": "mine now"}, "json"),
        ("post", "/api/triggers/alice-trigger/token/", {}, "json"),
        ("delete", "/api/triggers/alice-trigger/", {}, "json"),
        ("post", f"/api/executions/{objects['task_id']}/rerun/", {"version": "same"}, "json"),
        ("post", f"/api/executions/{objects['queued'].task_id}/cancel/", {}, "json"),
    ]


def test_view_only_staff_sees_others_objects_but_cannot_change_them(alice_objects, viewer):
    vera = client_for(viewer)
    for path in reads(alice_objects):
        assert vera.get(path).status_code == 200, path
    assert "alice-fn" in vera.get("/api/functions/").content.decode()
    assert alice_objects["task_id"] in vera.get("/api/executions/").content.decode()
    before = snapshot()
    for method, path, body, fmt in changes(alice_objects):
        response = getattr(vera, method)(path, body, format=fmt)
        assert response.status_code == 403, (method, path, response.status_code,
                                             response.content[:300])
        assert "another owner" in response.json()["detail"]
    assert snapshot() == before  # nothing of Alice's changed, nothing was queued
    # Seeing a function is not enough to point a trigger at it.
    stolen = vera.post("/api/triggers/", {"name": "vera-trigger", "function": "alice-fn"},
                       format="json")
    assert stolen.status_code == 400 and "function" in stolen.json()


def test_change_permission_lets_staff_act_on_others_objects(alice_objects, viewer):
    viewer.user_permissions.add(Permission.objects.get(codename="change_execution"),
                                Permission.objects.get(codename="change_trigger"))
    vera = client_for(type(viewer).objects.get(pk=viewer.pk))
    rerun = vera.post(f"/api/executions/{alice_objects['task_id']}/rerun/", {"version": "same"},
                      format="json")
    assert rerun.status_code == 202, rerun.content
    assert vera.post("/api/triggers/alice-trigger/dispatch/", {"payload": 3},
                     format="json").status_code == 202
    # change_trigger is not change_function: the function stays Alice's to edit.
    assert vera.patch("/api/functions/alice-fn/", {"description": "x"},
                      format="json").status_code == 403
    assert Execution.objects.count() == 4


def test_plain_staff_sees_nothing_of_others(alice_objects, plain_staff):
    sam = client_for(plain_staff)
    for path in reads(alice_objects):
        assert sam.get(path).status_code == 404, path
    for method, path, body, fmt in changes(alice_objects):
        assert getattr(sam, method)(path, body, format=fmt).status_code == 404, (method, path)
    for path in ("/api/functions/", "/api/triggers/", "/api/executions/", "/api/batches/"):
        assert sam.get(path).json()["results"] == [], path
    admin = Client()
    admin.force_login(plain_staff)
    for name in ("functions_function", "executions_execution", "triggers_trigger"):
        assert admin.get(reverse(f"admin:{name}_changelist")).status_code == 403, name
    index = admin.get(reverse("admin:index"))  # no platform dashboard naming her function
    assert index.status_code == 200 and "kf-dashboard" not in index.content.decode()


def test_non_staff_keep_acting_on_their_own(alice_objects, api):
    assert api.patch("/api/functions/alice-fn/", {"description": "still mine"},
                     format="json").status_code == 200
    assert api.post(f"/api/executions/{alice_objects['task_id']}/rerun/", {"version": "same"},
                    format="json").status_code == 202


def test_superuser_sees_and_does_everything(alice_objects, superuser):
    root = client_for(superuser)
    for path in reads(alice_objects):
        assert root.get(path).status_code == 200, path
    assert root.patch("/api/functions/alice-fn/", {"description": "operator's note"},
                      format="json").status_code == 200
    assert root.post(f"/api/executions/{alice_objects['task_id']}/rerun/",
                     {"version": "same"}, format="json").status_code == 202
    assert Function.objects.get(name="alice-fn").description == "operator's note"


def test_admin_refuses_a_view_only_staff_users_actions(alice_objects, viewer):
    admin = Client()
    admin.force_login(viewer)
    execution = alice_objects["execution"]
    changelist = reverse("admin:executions_execution_changelist")
    page = admin.get(changelist)
    assert page.status_code == 200 and alice_objects["task_id"][:8] in page.content.decode()
    assert "kf-dashboard" in admin.get(reverse("admin:index")).content.decode()
    assert "rerun_same" not in page.content.decode()  # the action is not offered
    detail = admin.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    assert detail.status_code == 200 and "Re-run (same version)" not in detail.content.decode()
    before = snapshot()
    # Posted anyway: refused.
    for action in ("rerun_same", "rerun_current", "redispatch"):
        admin.post(changelist, {"action": action, "_selected_action": [execution.pk]})
    assert 'value="cancel"' not in page.content.decode()
    admin.post(changelist, {"action": "cancel",
                            "_selected_action": [alice_objects["queued"].pk]})
    assert admin.post(reverse("admin:executions_execution_rerun",
                              args=[execution.pk, "same"])).status_code == 403
    trigger = Trigger.objects.get(name="alice-trigger")
    triggers = reverse("admin:triggers_trigger_changelist")
    assert "regenerate_token" not in admin.get(triggers).content.decode()
    admin.post(triggers, {"action": "dispatch", "_selected_action": [trigger.pk], "apply": "1",
                          "payload": "{}", "count": "1"})
    admin.post(triggers, {"action": "regenerate_token", "_selected_action": [trigger.pk]})
    function = Function.objects.get(name="alice-fn")
    functions = reverse("admin:functions_function_changelist")
    admin.post(functions, {"action": "build_image", "_selected_action": [function.pk]})
    versions = reverse("admin:functions_functionversion_changelist")
    assert "retry_build" not in admin.get(versions).content.decode()
    admin.post(versions, {"action": "activate",
                          "_selected_action": [function.active_version_id]})
    edit = admin.post(reverse("admin:functions_function_change", args=[function.pk]),
                      {"description": "mine now"})
    assert edit.status_code == 403
    assert snapshot() == before


def test_admin_lets_a_superuser_rerun(alice_objects, superuser):
    admin = Client()
    admin.force_login(superuser)
    execution = alice_objects["execution"]
    changelist = reverse("admin:executions_execution_changelist")
    assert "rerun_same" in admin.get(changelist).content.decode()
    admin.post(changelist, {"action": "rerun_same", "_selected_action": [execution.pk]})
    assert Execution.objects.filter(rerun_of=execution).count() == 1


# --- The operator chooses the runtimes ------------------------------------------------------

@override_settings(KUBEFUNCTION_ALLOWED_RUNTIMES=["docker"])
def test_non_staff_cannot_choose_a_runtime_outside_the_allow_list(api, user):
    response = api.post("/api/functions/", {"name": "sneaky", "source": upload(),
                                            "runtime": "local"}, format="multipart")
    assert response.status_code == 400
    assert "KUBEFUNCTION_ALLOWED_RUNTIMES=docker" in response.json()["runtime"][0]
    assert not Function.objects.filter(name="sneaky").exists()
    # Nor by leaving it empty when the default runtime is not allowed.
    with override_settings(KUBEFUNCTION_RUNTIME="local"):
        response = api.post("/api/functions/", {"name": "sneaky", "source": upload()},
                            format="multipart")
    assert response.status_code == 400 and "runtime" in response.json()


@override_settings(KUBEFUNCTION_ALLOWED_RUNTIMES=["local"])
def test_non_staff_cannot_move_a_function_outside_the_allow_list(api):
    assert api.post("/api/functions/", {"name": "mine", "source": upload()},
                    format="multipart").status_code == 201
    moved = api.patch("/api/functions/mine/", {"runtime": "kubernetes"}, format="json")
    assert moved.status_code == 400 and "runtime" in moved.json()
    assert Function.objects.get(name="mine").runtime == ""
    # Other edits of a function keep working.
    assert api.patch("/api/functions/mine/", {"description": "ok"},
                     format="json").status_code == 200


@override_settings(KUBEFUNCTION_ALLOWED_RUNTIMES=["docker"])
def test_staff_are_bound_by_the_allow_list_superusers_are_not(django_user_model, superuser):
    staff = client_for(django_user_model.objects.create_user("st", password="x",
                                                             is_staff=True))
    assert staff.post("/api/functions/", {"name": "staff-fn", "source": upload(),
                                          "runtime": "local"},
                      format="multipart").status_code == 400
    created = client_for(superuser).post("/api/functions/", {
        "name": "operator-fn", "source": upload(), "runtime": "local"}, format="multipart")
    assert created.status_code == 201, created.content


@override_settings(KUBEFUNCTION_ALLOWED_RUNTIMES=["docker"])
def test_admin_form_refuses_a_runtime_outside_the_allow_list(viewer):
    viewer.user_permissions.add(Permission.objects.get(codename="add_function"))
    admin = Client()
    admin.force_login(type(viewer).objects.get(pk=viewer.pk))
    response = admin.post(reverse("admin:functions_function_add"), {
        "name": "admin-fn", "source": upload(), "runtime": "local", "timeout_seconds": 30,
        "memory_mb": 128, "env_vars": "{}"})
    assert response.status_code == 200  # the form again, with the error
    assert "KUBEFUNCTION_ALLOWED_RUNTIMES" in response.content.decode()
    assert not Function.objects.filter(name="admin-fn").exists()


def test_existing_function_on_a_banned_runtime_is_refused_at_dispatch(alice_objects, api):
    before = Execution.objects.count()
    with override_settings(KUBEFUNCTION_ALLOWED_RUNTIMES=["docker"]):
        response = api.post("/api/triggers/alice-trigger/dispatch/", {"payload": 1},
                            format="json")
        assert response.status_code == 409, response.content
        message = response.json()["runtime"][0]
        assert "local runtime" in message and "KUBEFUNCTION_ALLOWED_RUNTIMES=docker" in message
        rerun = api.post(f"/api/executions/{alice_objects['task_id']}/rerun/",
                         {"version": "same"}, format="json")
        assert rerun.status_code == 409 and "runtime" in rerun.json()
    assert Execution.objects.count() == before  # nothing stored, so nothing was sent


def test_worker_fails_a_queued_execution_whose_runtime_was_banned(alice_objects):
    queued = Execution.objects.filter(function__name="alice-fn",
                                      status=ExecutionStatus.QUEUED).first()
    with override_settings(KUBEFUNCTION_ALLOWED_RUNTIMES=["docker"]):
        # What the worker's task calls with the execution's id.
        outcome = execution_run(execution_id=str(queued.pk), worker="test/1")
    assert outcome.error_type == "RuntimeNotAllowed"
    queued.refresh_from_db()
    assert queued.status == ExecutionStatus.FAILED
    assert queued.error_type == "RuntimeNotAllowed"
    assert "KUBEFUNCTION_ALLOWED_RUNTIMES=docker" in queued.error
    assert queued.attempts in ([], None) or len(queued.attempts) <= 1
    assert queued.output is None  # it never ran


# --- /metrics ----------------------------------------------------------------------------

def test_metrics_is_closed_without_its_token(client):
    with override_settings(KUBEFUNCTION_METRICS_TOKEN="", KUBEFUNCTION_METRICS_PUBLIC=False):
        closed = client.get("/metrics")
        assert closed.status_code == 401 and b"KUBEFUNCTION_METRICS_TOKEN" in closed.content
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    with override_settings(KUBEFUNCTION_METRICS_TOKEN="s3cret-scrape"):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Token s3cret-scrape").status_code \
            == 401
        scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape")
        assert scraped.status_code == 200 and b"kubefunction_" in scraped.content
    with override_settings(KUBEFUNCTION_METRICS_TOKEN="", KUBEFUNCTION_METRICS_PUBLIC=True):
        assert client.get("/metrics").status_code == 200


# --- Login throttling (django-axes) --------------------------------------------------------

@pytest.fixture
def fast_passwords(settings):
    """Each wrong password is checked for real: with a cheap hasher, not a second per try."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _fail(client: Client, url: str, username: str, times: int) -> list[int]:
    return [client.post(url, {"username": username, "password": "wrong"}).status_code
            for _ in range(times)]


@pytest.mark.parametrize("url", ["/admin/login/", "/api-auth/login/"])
def test_login_forms_lock_out_after_repeated_failures(url, fast_passwords, superuser):
    intruder = Client(REMOTE_ADDR="203.0.113.7")
    codes = _fail(intruder, url, "root", 5)
    assert codes[:4] == [200] * 4  # the form again, "wrong password"
    assert codes[4] == 429  # the fifth failure locks the username at this address
    locked = intruder.post(url, {"username": "root", "password": "root-password-1"})
    assert locked.status_code == 429  # even with the right password
    assert b"Too many failed logins" in locked.content and locked["Retry-After"] == "900"
    assert "_auth_user_id" not in intruder.session
    # The lock is per username and address: the owner logs in from elsewhere.
    elsewhere = Client(REMOTE_ADDR="198.51.100.9")
    ok = elsewhere.post(url, {"username": "root", "password": "root-password-1"})
    assert ok.status_code == 302 and "_auth_user_id" in elsewhere.session
    # After the cool-off the address may try again.
    with override_settings(AXES_COOLOFF_TIME=timezone.timedelta(seconds=0)):
        again = intruder.post(url, {"username": "root", "password": "root-password-1"})
    assert again.status_code == 302


def test_token_login_locks_out_after_repeated_failures(fast_passwords, user):
    intruder = APIClient(REMOTE_ADDR="203.0.113.8")
    codes = [intruder.post("/api/auth/token/", {"username": "alice", "password": "x"})
             .status_code for _ in range(5)]
    assert codes == [400] * 4 + [429]
    locked = intruder.post("/api/auth/token/",
                           {"username": "alice", "password": "alice-password-1"})
    assert locked.status_code == 429, locked.content
    assert locked.json()["code"] == "login_locked" and "token" not in locked.json()
    assert APIClient(REMOTE_ADDR="198.51.100.10").post(
        "/api/auth/token/", {"username": "alice", "password": "alice-password-1"}
    ).status_code == 200
