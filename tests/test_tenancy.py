"""Tenancy: a user reaches only what they own, through every endpoint and every reference;
staff with the view permissions see everything (tests/test_access_control.py: what else staff
may do); anonymous callers nothing.

Alice owns a function, its versions, a trigger, executions and a batch. Bob, another user, must
get 404 (not 403: existence is not revealed) for each of them on every operation the served
schema has, must not see them in any list, and cannot point his own trigger at Alice's function.
The sweep walks the OpenAPI schema, so an endpoint added later is covered too (and fails loudly
here until the test knows which of Alice's objects its path names).
"""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from executions.models import Batch, Execution
from functions.models import Function, FunctionVersion
from triggers.models import ApiKey, Trigger

pytestmark = pytest.mark.django_db

HANDLER = b"def handle(event, context):\n    return event\n"
OPEN_PATHS = {"/api/auth/token/"}  # the login itself


def upload(data: bytes = HANDLER) -> SimpleUploadedFile:
    return SimpleUploadedFile("hello.py", data, content_type="application/octet-stream")


@pytest.fixture
def alice_objects(api):
    """Alice's function (2 versions), trigger, batch of executions, one finished execution."""
    created = api.post("/api/functions/", {"name": "alice-fn", "source": upload()},
                       format="multipart")
    assert created.status_code == 201, created.content
    assert api.post("/api/functions/alice-fn/versions/", {"source": upload(HANDLER + b"#2\n")},
                    format="multipart").status_code == 201
    trigger = api.post("/api/triggers/", {"name": "alice-trigger", "function": "alice-fn",
                                          "kind": "http"}, format="json")
    assert trigger.status_code == 201, trigger.content
    batch = api.post("/api/triggers/alice-trigger/dispatch/", {"payloads": [1, 2]},
                     format="json")
    assert batch.status_code == 202, batch.content
    executions = list(Execution.objects.filter(function__name="alice-fn"))
    finished = executions[0]
    Execution.objects.filter(pk=finished.pk).update(
        status="succeeded", output=1, started_at=timezone.now(), finished_at=timezone.now())
    key = api.post("/api/keys/", {"name": "alice-key", "scopes": ["read"]}, format="json")
    assert key.status_code == 201, key.content
    return {"function": "alice-fn", "trigger": "alice-trigger", "task_id": finished.task_id,
            "batch": str(Batch.objects.get().pk), "key": str(key.json()["id"])}


@pytest.fixture
def bob(other_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(other_user)
    return client


@pytest.fixture
def staff(django_user_model) -> APIClient:
    from django.contrib.auth.models import Permission

    carol = django_user_model.objects.create_user("carol", password="carol-password-1",
                                                  is_staff=True)
    carol.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client = APIClient()
    client.force_authenticate(django_user_model.objects.get(pk=carol.pk))
    return client


def operations() -> list[tuple[str, str]]:
    """(method, path template) of every operation of the served API schema."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [(method.upper(), path) for path, item in schema["paths"].items()
            for method in item if method in {"get", "post", "put", "patch", "delete"}]


def fill(path: str, objects: dict) -> str:
    """The path with its parameters naming Alice's objects."""
    values = {r"^/api/functions/\{name\}": {"name": objects["function"]},
              r"^/api/triggers/\{name\}": {"name": objects["trigger"]},
              r"^/api/executions/\{task_id\}": {"task_id": objects["task_id"]},
              r"^/api/batches/\{id\}": {"id": objects["batch"]},
              r"^/api/keys/\{id\}": {"id": objects["key"]}}
    for pattern, params in values.items():
        if re.match(pattern, path):
            try:
                return path.format(**params)
            except KeyError:
                break
    raise AssertionError(f"{path}: teach tests/test_tenancy.py which of Alice's objects it names")


BODIES = {"versions": {"source": upload()}, "rerun": {"version": "same"}, "activate":
          {"version": 1}, "dispatch": {"payload": {}}}


def call(client: APIClient, method: str, path: str):
    action = path.rstrip("/").rsplit("/", 1)[-1]
    body = BODIES.get(action, {})
    if method == "GET":
        return client.get(path)
    if method == "DELETE":
        return client.delete(path)
    fmt = "multipart" if action == "versions" else "json"
    if action == "versions":
        body = {"source": upload()}
    return getattr(client, method.lower())(path, body, format=fmt)


def snapshot() -> tuple:
    return (list(Function.objects.values_list("name", "description", "timeout_seconds",
                                              "active_version__number", "owner__username")),
            FunctionVersion.objects.count(),
            list(Trigger.objects.values_list("name", "function__name", "enabled", "token_hash")),
            Execution.objects.count(), Batch.objects.count(),
            list(ApiKey.objects.values_list("name", "revoked_at")))


def test_other_users_get_404_on_every_operation_on_alices_objects(alice_objects, bob):
    before = snapshot()
    checked = []
    for method, template in operations():
        if "{" not in template:
            continue
        path = fill(template, alice_objects)
        response = call(bob, method, path)
        assert response.status_code == 404, (method, path, response.status_code,
                                             response.content[:300])
        checked.append(f"{method} {template}")
    assert snapshot() == before  # nothing of Alice's changed
    expected = {"GET /api/functions/{name}/", "PATCH /api/functions/{name}/",
                "POST /api/functions/{name}/versions/", "POST /api/functions/{name}/build/",
                "POST /api/functions/{name}/activate/", "DELETE /api/triggers/{name}/",
                "POST /api/triggers/{name}/dispatch/", "GET /api/executions/{task_id}/"}
    assert expected <= set(checked)


def test_other_users_lists_and_filters_show_none_of_alices(alice_objects, bob):
    secrets = [value for name, value in alice_objects.items() if name != "key"]  # an id: 1
    for method, template in operations():
        if method != "GET" or "{" in template:
            continue
        for query in ("", "?function=alice-fn", "?trigger=alice-trigger",
                      "?function__name=alice-fn", "?trigger__name=alice-trigger"):
            response = bob.get(template + query)
            assert response.status_code == 200, (template, response.content[:300])
            text = response.content.decode()
            assert not [value for value in secrets if value in text], (template, query)


def test_references_cannot_point_at_someone_elses_function(alice_objects, bob):
    created = bob.post("/api/triggers/", {"name": "bob-trigger", "function": "alice-fn"},
                       format="json")
    assert created.status_code == 400
    assert "function" in created.json()
    assert not Trigger.objects.filter(name="bob-trigger").exists()

    assert bob.post("/api/functions/", {"name": "bob-fn", "source": upload()},
                    format="multipart").status_code == 201
    assert bob.post("/api/triggers/", {"name": "bob-trigger", "function": "bob-fn"},
                    format="json").status_code == 201
    moved = bob.patch("/api/triggers/bob-trigger/", {"function": "alice-fn"}, format="json")
    assert moved.status_code == 400
    assert "function" in moved.json()
    assert Trigger.objects.get(name="bob-trigger").function.name == "bob-fn"


def test_staff_read_everything(alice_objects, staff):
    for path in ("/api/functions/alice-fn/", "/api/functions/alice-fn/versions/",
                 "/api/triggers/alice-trigger/", f"/api/executions/{alice_objects['task_id']}/",
                 f"/api/batches/{alice_objects['batch']}/"):
        assert staff.get(path).status_code == 200, path
    for path, key in (("/api/functions/", "alice-fn"), ("/api/triggers/", "alice-trigger"),
                      ("/api/executions/", alice_objects["task_id"]),
                      ("/api/batches/", alice_objects["batch"])):
        assert key in staff.get(path).content.decode(), path


def test_owner_reaches_their_own_objects(alice_objects, api):
    for path in ("/api/functions/alice-fn/", "/api/triggers/alice-trigger/",
                 f"/api/executions/{alice_objects['task_id']}/",
                 f"/api/batches/{alice_objects['batch']}/"):
        assert api.get(path).status_code == 200, path
    rerun = api.post(f"/api/executions/{alice_objects['task_id']}/rerun/", {}, format="json")
    assert rerun.status_code == 202, rerun.content


def test_anonymous_callers_reach_nothing(alice_objects):
    anonymous = APIClient()
    for method, template in operations():
        if template in OPEN_PATHS:
            continue
        path = fill(template, alice_objects) if "{" in template else template
        response = call(anonymous, method, path)
        assert response.status_code == 401, (method, path, response.status_code)
    assert anonymous.get("/api/schema/").status_code == 401
    assert anonymous.get("/api/docs/").status_code in (401, 403)


# --- Rates -------------------------------------------------------------------------------------

@pytest.fixture
def low_rates(monkeypatch, user):
    from django.core.cache import cache

    from kubefunction.access import AnonRateThrottle, UserRateThrottle

    for throttle in (UserRateThrottle, AnonRateThrottle):
        monkeypatch.setattr(throttle, "THROTTLE_RATES", {"user": "3/minute", "anon": "2/minute"})
    keys = [f"throttle_user_{user.pk}", "throttle_anon_127.0.0.1"]
    cache.delete_many(keys)  # the shared cache outlives test databases
    yield
    cache.delete_many(keys)


def test_requests_over_the_user_rate_are_throttled(api, low_rates):
    answers = [api.get("/api/functions/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "throttled" in answers[-1].json()["detail"].lower()
    assert int(answers[-1]["Retry-After"]) > 0


def test_anonymous_logins_are_throttled_per_address(user, low_rates):
    client = APIClient(REMOTE_ADDR="127.0.0.1")
    wrong = {"username": "alice", "password": "wrong"}
    codes = [client.post("/api/auth/token/", wrong).status_code for _ in range(3)]
    assert codes == [400, 400, 429]


def test_rates_do_not_take_the_api_down_with_the_cache(api, settings):
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
    assert api.get("/api/functions/").status_code == 200
