"""Admin smoke tests through admin_client, including the dispatch action and big tables."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from executions.models import Execution
from functions import services
from functions.models import Function
from triggers.models import Trigger
from triggers.services import trigger_create

pytestmark = pytest.mark.django_db

SOURCE = b"def handle(event, context):\n    return event\n"


@pytest.fixture
def function(admin_user):
    return services.function_register(name="echo", owner=admin_user, filename="echo.py",
                                      data=SOURCE).function


def test_pages_render(admin_client, function):
    trigger = trigger_create(name="t", function=function)
    for url in [reverse("admin:index"), reverse("admin:functions_function_changelist"),
                reverse("admin:functions_function_add"),
                reverse("admin:functions_function_change", args=[function.pk]),
                reverse("admin:functions_functionversion_changelist"),
                reverse("admin:triggers_trigger_changelist"),
                reverse("admin:triggers_trigger_change", args=[trigger.pk]),
                reverse("admin:executions_execution_changelist")]:
        response = admin_client.get(url)
        assert response.status_code == 200, url


def test_add_function_by_upload(admin_client):
    response = admin_client.post(reverse("admin:functions_function_add"), {
        "name": "uploaded", "description": "", "handler": "", "mode": "", "runtime": "",
        "timeout_seconds": 10, "memory_mb": 128, "env_vars": "{}",
        "source": SimpleUploadedFile("up.py", SOURCE)})
    assert response.status_code == 302, response.content.decode()[-2000:]
    function = Function.objects.get(name="uploaded")
    assert function.active_version.number == 1 and function.handler == "up.handle"


def test_oversized_admin_upload_is_stopped_while_it_streams(admin_client, settings):
    settings.KUBEFUNCTION_MAX_SOURCE_BYTES = 64
    response = admin_client.post(reverse("admin:functions_function_add"), {
        "name": "too-big", "description": "", "handler": "", "mode": "", "runtime": "",
        "timeout_seconds": 10, "memory_mb": 128, "env_vars": "{}",
        "source": SimpleUploadedFile("up.py", SOURCE + b"#" * 200)})
    assert response.status_code == 400
    assert not Function.objects.filter(name="too-big").exists()


def test_add_function_shows_validation_errors(admin_client):
    response = admin_client.post(reverse("admin:functions_function_add"), {
        "name": "broken", "timeout_seconds": 10, "memory_mb": 128, "env_vars": "{}",
        "source": SimpleUploadedFile("up.py", b"def handle(:\n")})
    assert response.status_code == 200
    assert "syntax error in up.py, line 1" in response.content.decode()
    assert not Function.objects.exists()


def test_upload_new_version_and_roll_back_from_change_form(admin_client, function):
    url = reverse("admin:functions_function_change", args=[function.pk])
    form = {"description": "", "runtime": "", "timeout_seconds": 30, "memory_mb": 256,
            "env_vars": "{}", "active_version": function.active_version.pk,
            # the read-only versions inline still posts its (empty) management form
            "versions-TOTAL_FORMS": 0, "versions-INITIAL_FORMS": 0}
    response = admin_client.post(url, {**form, "new_source": SimpleUploadedFile(
        "echo.py", SOURCE + b"# v2\n")})
    assert response.status_code == 302, response.context["adminform"].form.errors
    function.refresh_from_db()
    assert function.active_version.number == 2
    first = function.versions.get(number=1)
    admin_client.post(url, {**form, "active_version": first.pk})
    function.refresh_from_db()
    assert function.active_version.number == 1


def test_dispatch_action_with_payload_and_count(admin_client, function):
    trigger = trigger_create(name="t", function=function)
    changelist = reverse("admin:triggers_trigger_changelist")
    form = admin_client.post(changelist, {"action": "dispatch", "_selected_action": [trigger.pk]})
    assert form.status_code == 200 and b"Dispatch" in form.content
    response = admin_client.post(changelist, {
        "action": "dispatch", "_selected_action": [trigger.pk], "apply": "1",
        "payload": '{"n": 7}', "count": 3}, follow=True)
    assert b"Queued 3 execution(s)" in response.content
    assert list(Execution.objects.values_list("input", flat=True)) == [{"n": 7}] * 3
    bad = admin_client.post(changelist, {
        "action": "dispatch", "_selected_action": [trigger.pk], "apply": "1",
        "payload": "{nope", "count": 1})
    assert b"Not valid JSON" in bad.content and Execution.objects.count() == 3


def test_execution_pages_are_read_only_and_pretty(admin_client, function):
    trigger = Trigger.objects.create(name="t", function=function)
    execution = Execution.objects.create(
        task_id="abc", function=function, version=function.active_version, trigger=trigger,
        dispatched_at=timezone.now(), status="failed", input={"k": "<b>"},
        error="Traceback\n  ValueError: <script>")
    page = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "&quot;k&quot;: &quot;&lt;b&gt;&quot;" in html and "&lt;script&gt;" in html
    assert 'name="_save"' not in html
    delete = reverse("admin:executions_execution_delete", args=[execution.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Execution.objects.filter(pk=execution.pk).exists()


def test_execution_changelist_queries_do_not_grow_with_rows(admin_client, function):
    trigger = Trigger.objects.create(name="t", function=function)
    url = reverse("admin:executions_execution_changelist")

    def rows(n):
        Execution.objects.bulk_create(
            Execution(task_id=f"{n}-{i}", function=function, version=function.active_version,
                      trigger=trigger, dispatched_at=timezone.now()) for i in range(n))

    rows(5)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    rows(200)
    with CaptureQueriesContext(connection) as many:
        admin_client.get(url + "?status__exact=queued")
    assert len(many) <= len(few) + 1
    assert not any("COUNT(*)" in q["sql"] and "LIMIT" not in q["sql"] and
                   "executions_execution" in q["sql"] for q in many.captured_queries)


def test_execution_search_by_task_id_or_execution_id(admin_client, function):
    make = [Execution(task_id=f"task-{i}", function=function, version=function.active_version,
                      dispatched_at=timezone.now()) for i in range(3)]
    Execution.objects.bulk_create(make)
    url = reverse("admin:executions_execution_changelist")
    by_task = admin_client.get(url, {"q": "task-1"})
    assert list(by_task.context["cl"].result_list) == [make[1]]
    by_id = admin_client.get(url, {"q": str(make[2].pk)})
    assert list(by_id.context["cl"].result_list) == [make[2]]
    assert list(admin_client.get(url, {"q": "TASK-1"}).context["cl"].result_list) == []


def test_version_page_reloads_while_building(admin_client, function):
    version = function.active_version
    url = reverse("admin:functions_functionversion_change", args=[version.pk])
    assert b'http-equiv="refresh"' not in admin_client.get(url).content
    type(version).objects.filter(pk=version.pk).update(status="building", build_log="Step 1/9")
    page = admin_client.get(url).content
    assert b'http-equiv="refresh"' in page and b"Step 1/9" in page
