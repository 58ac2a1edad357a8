"""The per-user dispatch rate limit: 429 with Retry-After, a batch of N counting N, shared state
in the real Redis cache (and the local-memory fallback)."""

import uuid

import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from executions.models import Execution
from kubefunction.throttles import dispatch_wait

pytestmark = pytest.mark.django_db

HANDLER = b"def handle(event, context):\n    return event\n"


@pytest.fixture
def trigger(api):
    response = api.post("/api/functions/", {
        "name": "echo", "source": SimpleUploadedFile("echo.py", HANDLER)}, format="multipart")
    assert response.status_code == 201, response.content
    api.post("/api/triggers/", {"name": "t", "function": "echo"}, format="json")
    return "t"


def dispatch(client, body):
    return client.post("/api/triggers/t/dispatch/", body, format="json")


def test_over_the_rate_answers_429_with_retry_after(api, trigger, settings):
    settings.KUBEFUNCTION_DISPATCH_RATE = "3/min"
    for i in range(3):
        assert dispatch(api, {"payload": i}).status_code == 202
    refused = dispatch(api, {"payload": 3})
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 20  # one dispatch refills in 60/3 = 20 s
    assert "throttled" in refused.json()["detail"]
    assert Execution.objects.count() == 3  # the refused one was never stored


def test_a_batch_counts_each_payload(api, trigger, settings):
    settings.KUBEFUNCTION_DISPATCH_RATE = "5/min"
    assert dispatch(api, {"payloads": [1, 2, 3, 4, 5]}).status_code == 202
    refused = dispatch(api, {"payload": 6})
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1


def test_a_batch_bigger_than_the_rate_empties_the_bucket(api, trigger, settings):
    settings.KUBEFUNCTION_DISPATCH_RATE = "5/min"
    assert dispatch(api, {"payloads": list(range(10))}).status_code == 202
    refused = dispatch(api, {"payload": 1})
    # 10 payloads at 5/min: the bucket is 5 in debt, a next dispatch waits about 72 s.
    assert refused.status_code == 429 and 60 <= int(refused["Retry-After"]) <= 73


def test_each_user_has_its_own_budget(api, trigger, settings, other_user):
    settings.KUBEFUNCTION_DISPATCH_RATE = "1/min"
    assert dispatch(api, {"payload": 1}).status_code == 202
    assert dispatch(api, {"payload": 2}).status_code == 429
    other = APIClient()
    other.force_authenticate(other_user)
    assert dispatch(other, {"payload": 1}).status_code == 404  # not its trigger, not throttled


def test_an_empty_rate_means_no_limit(api, trigger, settings):
    settings.KUBEFUNCTION_DISPATCH_RATE = ""
    assert all(dispatch(api, {"payload": i}).status_code == 202 for i in range(5))


def test_the_budget_is_shared_through_redis(settings):
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the broker is not Redis: the cache is per process")
    settings.KUBEFUNCTION_DISPATCH_RATE = "2/min"
    ident = f"test-{uuid.uuid4()}"
    assert dispatch_wait(ident) is None and dispatch_wait(ident) is None
    wait = dispatch_wait(ident)
    assert wait is not None and 0 < wait <= 30
    client = caches["default"]._cache.get_client()
    assert client.exists(caches["default"].make_and_validate_key(f"kf:dispatch-rate:{ident}"))


def test_local_memory_fallback(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.KUBEFUNCTION_DISPATCH_RATE = "2/s"
    assert dispatch_wait("local") is None and dispatch_wait("local") is None
    assert 0 < dispatch_wait("local") <= 0.5


def test_re_runs_count_against_the_same_budget(api, trigger, settings):
    settings.KUBEFUNCTION_DISPATCH_RATE = "2/min"
    task_id = dispatch(api, {"payload": 1}).json()["task_id"]
    Execution.objects.filter(task_id=task_id).update(status="succeeded")
    assert api.post(f"/api/executions/{task_id}/rerun/", {}, format="json").status_code == 202
    refused = api.post(f"/api/executions/{task_id}/rerun/", {}, format="json")
    assert refused.status_code == 429 and "Retry-After" in refused


def test_an_unreachable_redis_lets_dispatches_through(settings, caplog):
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
    settings.KUBEFUNCTION_DISPATCH_RATE = "1/min"
    assert dispatch_wait("nowhere", 5) is None
    assert "Redis unreachable" in caplog.text


def test_webhook_calls_count_against_the_owners_rate(api, settings):
    settings.KUBEFUNCTION_DISPATCH_RATE = "2/min"
    api.post("/api/functions/", {
        "name": "echo", "source": SimpleUploadedFile("echo.py", HANDLER)}, format="multipart")
    created = api.post("/api/triggers/", {"name": "hook", "function": "echo", "kind": "http",
                                          "public": True}, format="json")
    assert created.status_code == 201, created.content
    caller = APIClient()  # anonymous: a public webhook needs no token
    for i in range(2):
        assert caller.post("/t/hook?async=1", {"i": i}, format="json").status_code == 202
    refused = caller.post("/t/hook?async=1", {"i": 2}, format="json")
    assert refused.status_code == 429, refused.content
    assert 1 <= int(refused["Retry-After"]) <= 30
    assert "too many dispatches" in refused.json()["detail"]
    assert Execution.objects.filter(trigger__name="hook").count() == 2
