"""The REST API without a worker: uploads, versions, triggers, dispatch bookkeeping, scoping."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from executions.models import Execution
from functions.models import Function
from tests.archives import make_zip
from tests.conftest import example

pytestmark = pytest.mark.django_db

HANDLER = b"def handle(event, context):\n    return {'echo': event}\n"


def upload(name="hello.py", data=HANDLER):
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def create_function(api, name="echo", **fields):
    fields.setdefault("source", upload())
    return api.post("/api/functions/", {"name": name, **fields}, format="multipart")


def test_token_auth_round_trip(user):
    client = APIClient()
    response = client.post("/api/auth/token/",
                           {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 200
    token = response.json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/functions/").status_code == 200


def test_anonymous_is_refused():
    assert APIClient().get("/api/functions/").status_code in (401, 403)


def test_create_function_with_upload(api):
    response = create_function(api, timeout_seconds=5, memory_mb=64,
                               env_vars=json.dumps({"GREETING": "hi"}))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "echo"
    assert body["handler"] == "hello.handle"
    assert body["active_version"] == 1
    assert body["version"]["status"] == "ready"
    assert body["env_vars"] == {"GREETING": "hi"}
    function = Function.objects.get(name="echo")
    assert (function.timeout_seconds, function.memory_mb) == (5, 64)


@pytest.mark.parametrize("fields, field, message", [
    ({"name": "Bad_Name"}, "name", "DNS-1123"),
    ({"source": upload("x.rb")}, "source", "not a .py file"),
    ({"source": upload(data=b"def handle(:\n")}, "source", "syntax error"),
    ({"handler": "hello.missing"}, "handler", "not found"),
    ({"source": upload("c.zip", make_zip({"../evil.py": "x=1"}))}, "source", "'..' path"),
    ({"timeout_seconds": 0}, "timeout_seconds", ""),
    ({"env_vars": json.dumps({"A": 1})}, "env_vars", "string values"),
])
def test_create_function_rejections_name_the_field(api, fields, field, message):
    response = create_function(api, **fields)
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert message in " ".join(body[field])
    assert not Function.objects.exists()


def test_oversized_upload_is_refused_before_reading(api, settings):
    settings.KUBEFUNCTION_MAX_SOURCE_BYTES = 64
    response = create_function(api, source=upload(data=HANDLER + b"#" * 100))
    assert response.status_code == 413
    assert "limit is 64 bytes" in response.json()["source"][0]


def test_duplicate_name_is_refused(api):
    assert create_function(api).status_code == 201
    response = create_function(api)
    assert response.status_code == 400
    assert "already exists" in response.json()["name"][0]


def test_versions_upload_list_and_roll_back(api):
    create_function(api)
    second = api.post("/api/functions/echo/versions/",
                      {"source": upload(data=HANDLER + b"# v2\n")}, format="multipart")
    assert second.status_code == 201, second.content
    assert second.json()["number"] == 2 and second.json()["active"] is True
    same = api.post("/api/functions/echo/versions/",
                    {"source": upload(data=HANDLER + b"# v2\n")}, format="multipart")
    assert same.json()["number"] == 2, "re-uploading the same bytes reuses the version"
    listed = api.get("/api/functions/echo/versions/").json()
    assert [v["number"] for v in listed] == [2, 1]
    rolled = api.post("/api/functions/echo/activate/", {"version": 1}, format="json")
    assert rolled.status_code == 200 and rolled.json()["active_version"] == 1
    missing = api.post("/api/functions/echo/activate/", {"version": 9}, format="json")
    assert missing.status_code == 404


def test_update_settings_but_not_code(api):
    create_function(api)
    response = api.patch("/api/functions/echo/", {"timeout_seconds": 7}, format="json")
    assert response.status_code == 200 and response.json()["timeout_seconds"] == 7
    response = api.patch("/api/functions/echo/", {"memory_mb": 1}, format="json")
    assert response.status_code == 400 and "memory_mb" in response.json()


def test_trigger_crud_and_dispatch_queues_execution(api, settings):
    create_function(api)
    created = api.post("/api/triggers/", {"name": "echo-now", "function": "echo",
                                          "default_payload": {"x": 1}}, format="json")
    assert created.status_code == 201, created.content
    response = api.post("/api/triggers/echo-now/dispatch/", {"payload": {"a": "ü"}}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert body["result_url"].endswith(f"/api/executions/{body['task_id']}/")
    execution = Execution.objects.get(task_id=body["task_id"])
    assert execution.input == {"a": "ü"} and execution.version.number == 1
    default = api.post("/api/triggers/echo-now/dispatch/", {}, format="json").json()
    assert Execution.objects.get(task_id=default["task_id"]).input == {"x": 1}
    detail = api.get(body["result_url"]).json()
    assert detail["status"] == "queued" and detail["input"] == {"a": "ü"}


def test_batch_dispatch_gives_one_task_id_per_payload(api):
    create_function(api)
    api.post("/api/triggers/", {"name": "t", "function": "echo"}, format="json")
    response = api.post("/api/triggers/t/dispatch/", {"payloads": [{"i": i} for i in range(5)]},
                        format="json")
    assert response.status_code == 202
    ids = [e["task_id"] for e in response.json()["executions"]]
    assert len(set(ids)) == 5
    inputs = sorted(Execution.objects.filter(task_id__in=ids).values_list("input__i", flat=True))
    assert inputs == [0, 1, 2, 3, 4]


def test_dispatch_errors(api, settings):
    settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES = 100
    create_function(api)
    api.post("/api/triggers/", {"name": "t", "function": "echo"}, format="json")
    big = api.post("/api/triggers/t/dispatch/", {"payload": "x" * 200}, format="json")
    assert big.status_code == 413 and "payload" in big.json()
    nul = api.post("/api/triggers/t/dispatch/", {"payload": "a\u0000b"}, format="json")
    assert nul.status_code == 400 and "NUL" in nul.json()["payload"][0]
    assert api.post("/api/triggers/nope/dispatch/", {}, format="json").status_code == 404
    api.patch("/api/triggers/t/", {"enabled": False}, format="json")
    disabled = api.post("/api/triggers/t/dispatch/", {}, format="json")
    assert disabled.status_code == 409 and "disabled" in disabled.json()["trigger"][0]
    bad_wait = api.get("/api/executions/nope/?wait=abc")
    assert bad_wait.status_code == 404
    assert not Execution.objects.exists()


def test_users_see_and_dispatch_only_their_own(api, other_user):
    create_function(api)
    api.post("/api/triggers/", {"name": "mine", "function": "echo"}, format="json")
    task_id = api.post("/api/triggers/mine/dispatch/", {}, format="json").json()["task_id"]
    intruder = APIClient()
    intruder.force_authenticate(other_user)
    assert intruder.get("/api/functions/").json()["results"] == []
    assert intruder.get("/api/functions/echo/").status_code == 404
    assert intruder.get("/api/triggers/mine/").status_code == 404
    assert intruder.post("/api/triggers/mine/dispatch/", {}, format="json").status_code == 404
    assert intruder.get(f"/api/executions/{task_id}/").status_code == 404
    assert intruder.get("/api/executions/").json()["results"] == []
    stolen = intruder.post("/api/triggers/", {"name": "theirs", "function": "echo"},
                           format="json")
    assert stolen.status_code == 400 and "function" in stolen.json()
    assert Execution.objects.count() == 1


def test_staff_see_everything_only_with_the_view_permission(api, django_user_model):
    from django.contrib.auth.models import Permission

    create_function(api)
    staff = django_user_model.objects.create_user("root", password="x", is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    assert client.get("/api/functions/").json()["results"] == []
    staff.user_permissions.add(Permission.objects.get(codename="view_function"))
    client.force_authenticate(django_user_model.objects.get(pk=staff.pk))
    assert [f["name"] for f in client.get("/api/functions/").json()["results"]] == ["echo"]


def test_execution_list_filters(api):
    create_function(api)
    create_function(api, name="other")
    api.post("/api/triggers/", {"name": "a", "function": "echo"}, format="json")
    api.post("/api/triggers/", {"name": "b", "function": "other"}, format="json")
    api.post("/api/triggers/a/dispatch/", {"payloads": [1, 2]}, format="json")
    api.post("/api/triggers/b/dispatch/", {}, format="json")
    by_function = api.get("/api/executions/?function=echo").json()["results"]
    assert len(by_function) == 2 and {e["function"] for e in by_function} == {"echo"}
    assert len(api.get("/api/executions/?trigger=b").json()["results"]) == 1
    assert len(api.get("/api/executions/?status=succeeded").json()["results"]) == 0
    assert api.get("/api/executions/?status=bogus").status_code == 400


def test_openapi_schema_and_docs_are_served(api):
    schema = api.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert "/api/triggers/{name}/dispatch/" in paths
    assert "/api/executions/{task_id}/" in paths
    docs = api.get("/api/docs/")
    assert docs.status_code == 200 and b"cdn" not in docs.content.lower()


def test_example_uploads_are_accepted(api):
    for name, filename in [("hello", "hello.py"), ("word-count", "word_count.py")]:
        filename, data = example(filename)
        response = create_function(api, name=name, source=upload(filename, data))
        assert response.status_code == 201, response.content
    assert Function.objects.get(name="word-count").mode == "script"


def test_openapi_schema_generates_without_warnings():
    from django.core.management import call_command
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


def test_oversized_default_payload_is_refused(api, settings):
    settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES = 50
    create_function(api)
    response = api.post("/api/triggers/", {"name": "t", "function": "echo",
                                           "default_payload": {"x": "y" * 100}}, format="json")
    assert response.status_code == 413 and "default_payload" in response.json()


def test_build_endpoint_refuses_what_is_built_and_unknown_versions(api):
    create_function(api)
    built = api.post("/api/functions/echo/build/", {}, format="json")
    assert built.status_code == 409 and "built already" in built.json()["version"][0]
    assert api.post("/api/functions/echo/build/", {"version": 5},
                    format="json").status_code == 404


def test_docker_function_without_image_cannot_be_dispatched_yet(api):
    response = create_function(api, runtime="docker")
    assert response.status_code == 201
    assert response.json()["version"]["status"] == "pending"
    api.post("/api/triggers/", {"name": "t", "function": "echo"}, format="json")
    refused = api.post("/api/triggers/t/dispatch/", {}, format="json")
    assert refused.status_code == 409 and "no ready version" in refused.json()["trigger"][0]


def test_concurrency_limit_is_set_through_the_api(api):
    assert create_function(api).status_code == 201
    changed = api.patch("/api/functions/echo/", {"max_concurrency": 2}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["max_concurrency"] == 2
    assert Function.objects.get(name="echo").max_concurrency == 2
    refused = api.patch("/api/functions/echo/", {"max_concurrency": 0}, format="json")
    assert refused.status_code == 400
    assert "max_concurrency" in refused.json()
    cleared = api.patch("/api/functions/echo/", {"max_concurrency": None}, format="json")
    assert cleared.status_code == 200 and cleared.json()["max_concurrency"] is None
