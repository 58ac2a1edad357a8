"""Strict API input (issue 12): unknown body fields and bad query parameters are a 400 naming
them, before anything is stored or queued; the framework's own fields still work; the schema
says so. Also `?wait=` on function create and `register_function --wait`."""

from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from executions.models import Execution
from functions.models import Function, FunctionVersion
from tests.archives import make_zip
from triggers.models import Trigger

HANDLER = b"def handle(event, context):\n    return {'echo': event}\n"


def upload(name="echo.py", data=HANDLER):
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


@pytest.fixture
def client(user) -> APIClient:
    """A non-staff user, authenticated with a real API token (as curl would be)."""
    assert not user.is_staff
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def echo(client):
    created = client.post("/api/functions/", {"name": "echo", "source": upload()},
                          format="multipart")
    assert created.status_code == 201, created.content
    trigger = client.post("/api/triggers/", {"name": "echo", "function": "echo",
                                             "default_payload": {"default": True}}, format="json")
    assert trigger.status_code == 201, trigger.content
    return Function.objects.get(name="echo")


@pytest.mark.django_db
def test_dispatch_with_the_event_as_the_body_names_the_field_and_says_where_it_goes(client, echo):
    response = client.post("/api/triggers/echo/dispatch/", {"text": "hello"}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == ["text"]
    assert "unknown field 'text'" in body["text"][0] and "`payload`" in body["text"][0]
    assert not Execution.objects.exists()  # the event was not silently swapped for the default
    mixed = client.post("/api/triggers/echo/dispatch/", {"payload": {"a": 1}, "txt": 1,
                                                         "callbak_url": "x"}, format="json")
    assert mixed.status_code == 400 and sorted(mixed.json()) == ["callbak_url", "txt"]
    assert not Execution.objects.exists()
    ok = client.post("/api/triggers/echo/dispatch/", {"payload": {"text": "hello"}},
                     format="json")
    assert ok.status_code == 202
    assert Execution.objects.get().input == {"text": "hello"}


@pytest.mark.django_db
@pytest.mark.parametrize("query, field", [
    ("wait=abc", "wait"), ("wait=-1", "wait"), ("wait=1e9", "wait"), ("wait=nan", "wait"),
    ("wiat=10", "wiat"),
])
def test_bad_query_parameter_on_dispatch_queues_nothing(client, echo, query, field):
    before = Execution.objects.count()
    response = client.post(f"/api/triggers/echo/dispatch/?{query}", {"payload": {"a": 1}},
                           format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert Execution.objects.count() == before


@pytest.mark.django_db
def test_wait_with_a_batch_is_refused_before_queueing(client, echo):
    response = client.post("/api/triggers/echo/dispatch/?wait=5",
                           {"payloads": [{"a": 1}, {"a": 2}]}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["wait"]
    assert not Execution.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("method, path, body, fmt, field", [
    ("post", "/api/functions/", {"name": "other", "runtim": "docker"}, "multipart", "runtim"),
    ("post", "/api/functions/echo/versions/", {"handlr": "echo.handle"}, "multipart", "handlr"),
    ("patch", "/api/functions/echo/", {"timeout": 5}, "json", "timeout"),
    ("patch", "/api/functions/echo/", {"handler": "echo.other"}, "json", "handler"),  # read-only
    ("post", "/api/functions/echo/activate/", {"version": 1, "force": True}, "json", "force"),
    ("post", "/api/functions/echo/build/", {"number": 1}, "json", "number"),
    ("post", "/api/triggers/", {"name": "t2", "function": "echo", "paylod": {}}, "json", "paylod"),
    ("patch", "/api/triggers/echo/", {"enable": False}, "json", "enable"),
    ("post", "/api/triggers/echo/token/", {"token": "mine"}, "json", "token"),
])
def test_unknown_fields_are_refused_everywhere(client, echo, method, path, body, fmt, field):
    if fmt == "multipart":
        body = {**body, "source": upload()}
    before = (Function.objects.count(), FunctionVersion.objects.count(), Trigger.objects.count())
    response = getattr(client, method)(path, body, format=fmt)
    assert response.status_code == 400, (path, response.content)
    assert field in response.json(), response.json()
    assert (Function.objects.count(), FunctionVersion.objects.count(),
            Trigger.objects.count()) == before
    echo.refresh_from_db()
    assert echo.handler == "echo.handle" and Trigger.objects.get(name="echo").enabled


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_rerun_refuses_unknown_fields(client, echo, celery_worker_process):
    done = client.post("/api/triggers/echo/dispatch/?wait=30", {"payload": {"n": 1}},
                       format="json")
    assert done.status_code == 200, done.content
    task_id = done.json()["task_id"]
    response = client.post(f"/api/executions/{task_id}/rerun/", {"versoin": "current"},
                           format="json")
    assert response.status_code == 400 and list(response.json()) == ["versoin"]
    assert Execution.objects.count() == 1


@pytest.mark.django_db
def test_framework_fields_keep_working(user, echo):
    # The browsable API's forms: a session login, its CSRF token in the body, ?format=.
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    page = browser.get("/api/triggers/echo/?format=api", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    token = browser.cookies["csrftoken"].value
    response = browser.post("/api/triggers/echo/dispatch/?format=json",
                            {"csrfmiddlewaretoken": token}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202, response.content
    assert Execution.objects.get().input == {"default": True}  # no payload: the default
    # Pagination and filters are query parameters of lists, untouched.
    listed = browser.get("/api/functions/?limit=1&offset=0&runtime=&format=json")
    assert listed.status_code == 200 and listed.json()["count"] == 1
    executions = browser.get("/api/executions/?page_size=10&function=echo&status=queued")
    assert executions.status_code == 200 and len(executions.json()["results"]) == 1


@pytest.mark.django_db
def test_schema_says_request_bodies_take_only_their_fields(client):
    schema = client.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    for name in ("DispatchRequest", "TriggerRequest", "PatchedTriggerRequest",
                 "FunctionCreateRequest", "RerunRequest", "ActivateRequest"):
        assert components[name]["additionalProperties"] is False, name
    # Answers stay open: a client may ignore fields added later.
    assert "additionalProperties" not in components["Trigger"]
    dispatch = schema["paths"]["/api/triggers/{name}/dispatch/"]["post"]
    assert "wait" in [p["name"] for p in dispatch["parameters"]]
    create = schema["paths"]["/api/functions/"]["post"]
    assert "wait" in [p["name"] for p in create["parameters"]]


@pytest.mark.django_db
def test_function_create_wait_is_checked_first_and_reports_the_build(client):
    bad = client.post("/api/functions/?wait=soon", {"name": "w", "source": upload()},
                      format="multipart")
    assert bad.status_code == 400 and list(bad.json()) == ["wait"]
    assert not Function.objects.exists()
    typo = client.post("/api/functions/?wiat=5", {"name": "w", "source": upload()},
                       format="multipart")
    assert typo.status_code == 400 and list(typo.json()) == ["wiat"]
    assert not Function.objects.exists()
    # The local runtime needs no build for a plain handler: ready at once, said in the answer.
    ok = client.post("/api/functions/?wait=5", {"name": "w", "source": upload()},
                     format="multipart")
    assert ok.status_code == 201 and ok.json()["version"]["status"] == "ready"
    again = client.post("/api/functions/w/versions/?wait=x", {"source": upload(data=b"x = 1\n")},
                        format="multipart")
    assert again.status_code == 400 and FunctionVersion.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_register_function_wait_reports_a_failed_build(django_user_model, tmp_path,
                                                       celery_worker_process):
    django_user_model.objects.create_superuser("admin", "a@b.c", "pw")
    good = tmp_path / "ok.zip"
    good.write_bytes(make_zip({"handler.py": HANDLER.decode()}))
    out = StringIO()
    call_command("register_function", "fine", str(good), "--wait", stdout=out)
    assert "fine v1 (handler handler.handle): ready" in out.getvalue()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(make_zip({"handler.py": HANDLER.decode(),
                                 "requirements.txt": "kubefunction-no-such-package-xyz==1.0\n"}))
    with pytest.raises(CommandError) as failed:
        call_command("register_function", "broken", str(broken), "--wait",
                     "--wait-timeout", "120", stdout=StringIO())
    message = str(failed.value)
    assert "broken v1" in message and "failed" in message
    assert "kubefunction-no-such-package-xyz" in message  # the log's tail says why
    assert FunctionVersion.objects.get(function__name="broken").status == "failed"


@pytest.mark.django_db
@pytest.mark.parametrize("query, field", [
    ("limit=8377544730374477709312", "limit"), ("limit=abc", "limit"), ("limit=0", "limit"),
    ("offset=-1817", "offset"), ("offset=99999999999999999999", "offset"),
])
def test_pagination_parameters_out_of_range_are_a_400(client, echo, query, field):
    for path in ("/api/functions/", "/api/triggers/"):
        response = client.get(f"{path}?{query}")
        assert response.status_code == 400, (path, response.content)
        assert list(response.json()) == [field]


@pytest.mark.django_db
def test_dispatch_to_a_version_still_building_names_its_state(client):
    archive = make_zip({"handler.py": HANDLER.decode(), "requirements.txt": "six\n"})
    created = client.post("/api/functions/", {"name": "slow",
                                              "source": upload("slow.zip", archive)},
                          format="multipart")
    assert created.status_code == 201 and created.json()["version"]["status"] == "pending"
    assert client.post("/api/triggers/", {"name": "slow", "function": "slow"},
                       format="json").status_code == 201
    response = client.post("/api/triggers/slow/dispatch/", {"payload": {}}, format="json")
    assert response.status_code == 409, response.content
    assert "version 1 is pending" in response.json()["trigger"][0]
    assert not Execution.objects.exists()
