"""Idempotent dispatch (executions/idempotency.py): an `Idempotency-Key` on API dispatch,
webhooks, batches and `manage.py dispatch` gives back the first execution; concurrent
dispatches with one key make exactly one (the unique constraint decides, on the real
Postgres); another request under a used key is a 409; keys are per owner and expire."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from executions import idempotency
from executions.models import DispatchKey, Execution
from executions.tasks import purge_payloads
from functions.services import function_register
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

ECHO = b"def handle(event, context):\n    return {'got': event}\n"


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


def deploy(owner, name, **trigger):
    version = function_register(name=name, owner=owner, filename="echo.py", data=ECHO)
    return trigger_create(name=name, function=version.function, user=owner, **trigger)


def dispatch(client, name, body, key=None, wait=None):
    headers = {} if key is None else {"Idempotency-Key": key}
    query = "" if wait is None else f"?wait={wait}"
    return client.post(f"/api/triggers/{name}/dispatch/{query}", body, format="json",
                       headers=headers)


def test_twenty_concurrent_dispatches_with_one_key_make_one_execution(user, worker):
    deploy(user, "once")
    barrier = threading.Barrier(20)

    def call(_):
        client = APIClient()
        client.force_authenticate(user)
        barrier.wait(timeout=30)
        try:
            answer = dispatch(client, "once", {"payload": {"n": 1}}, key="order-1")
            return answer.status_code, answer.json()
        finally:
            connection.close()  # each thread's own connection

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    assert Execution.objects.count() == 1
    assert DispatchKey.objects.count() == 1
    task_ids = {body["task_id"] for _, body in answers}
    assert task_ids == {Execution.objects.get().task_id}
    fresh = [status for status, body in answers if not body["replayed"]]
    assert fresh == [202], answers  # one made it; the 19 others got it back
    assert sorted(status for status, _ in answers) == [200] * 19 + [202]


def test_a_replay_answers_the_first_execution_with_its_state(user, worker, api):
    deploy(user, "replay")
    first = dispatch(api, "replay", {"payload": {"n": 2}}, key="k-2", wait=30)
    assert first.status_code == 200 and first.json()["replayed"] is False
    assert idempotency.REPLAYED_HEADER not in first
    again = dispatch(api, "replay", {"payload": {"n": 2}}, key="k-2")
    assert again.status_code == 200 and again[idempotency.REPLAYED_HEADER] == "true"
    body = again.json()
    assert body["task_id"] == first.json()["task_id"] and body["replayed"] is True
    assert body["status"] == "succeeded" and body["output"] == {"got": {"n": 2}}
    assert Execution.objects.count() == 1

    # Another payload under the used key is refused, and queues nothing.
    other = dispatch(api, "replay", {"payload": {"n": 3}}, key="k-2")
    assert other.status_code == 409 and "Idempotency-Key" in json.dumps(other.json())
    assert Execution.objects.count() == 1
    # So is the same payload to another trigger of the owner's.
    deploy(user, "replay-two")
    assert dispatch(api, "replay-two", {"payload": {"n": 2}}, key="k-2").status_code == 409
    # Without a key, nothing changes: a new execution each time.
    assert dispatch(api, "replay", {"payload": {"n": 2}}).status_code == 202
    assert Execution.objects.count() == 2


def test_keys_are_the_owners_and_expire(user, other_user, worker, api, settings):
    deploy(user, "mine")
    deploy(other_user, "theirs")
    theirs = APIClient()
    theirs.force_authenticate(other_user)
    a = dispatch(api, "mine", {"payload": 1}, key="shared").json()
    b = dispatch(theirs, "theirs", {"payload": 1}, key="shared").json()
    assert a["task_id"] != b["task_id"] and not b["replayed"]
    # Past the window the key names a new request.
    DispatchKey.objects.filter(owner=user).update(
        created_at=timezone.now() - timedelta(hours=settings.KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS,
                                              minutes=1))
    c = dispatch(api, "mine", {"payload": 2}, key="shared")
    assert c.status_code == 202 and c.json()["task_id"] != a["task_id"]
    # The retention task drops expired keys, and only those.
    DispatchKey.objects.filter(owner=other_user).update(
        created_at=timezone.now() - timedelta(days=3))
    assert purge_payloads.apply().get()["keys"] == 1
    assert list(DispatchKey.objects.values_list("owner__username", flat=True)) == ["alice"]


def test_bad_keys_and_misplaced_keys_are_refused_before_anything_is_queued(user, worker, api):
    deploy(user, "strict")
    for key in ("has space", "x" * 256, "é"):
        answer = api.post("/api/triggers/strict/dispatch/", {"payload": 1}, format="json",
                          HTTP_IDEMPOTENCY_KEY=key)
        assert answer.status_code == 400, (key, answer.content)
        assert "Idempotency-Key" in json.dumps(answer.json())
    batch = dispatch(api, "strict", {"payloads": [1, 2]}, key="k")
    assert batch.status_code == 400 and "Idempotency-Key" in json.dumps(batch.json())
    short = dispatch(api, "strict", {"payloads": [1, 2], "idempotency_keys": ["a"]})
    assert short.status_code == 400 and "idempotency_keys" in short.json()
    twice = dispatch(api, "strict", {"payloads": [1, 2], "idempotency_keys": ["a", "a"]})
    assert twice.status_code == 400 and "idempotency_keys" in json.dumps(twice.json())
    assert Execution.objects.count() == 0 and DispatchKey.objects.count() == 0


def test_a_retried_batch_makes_only_the_executions_it_did_not_make_before(user, worker, api):
    deploy(user, "batch")
    first = dispatch(api, "batch", {"payloads": [{"n": 1}, {"n": 2}, {"n": 3}],
                                    "idempotency_keys": ["b-1", "b-2", None]})
    assert first.status_code == 202, first.content
    made = first.json()["executions"]
    retry = dispatch(api, "batch", {"payloads": [{"n": 1}, {"n": 2}, {"n": 4}],
                                    "idempotency_keys": ["b-1", "b-2", "b-4"]})
    assert retry.status_code == 202, retry.content
    again = retry.json()["executions"]
    assert [e["task_id"] for e in again[:2]] == [e["task_id"] for e in made[:2]]
    assert [e["replayed"] for e in again] == [True, True, False]
    assert again[2]["task_id"] not in {e["task_id"] for e in made}
    assert Execution.objects.count() == 4
    # The retry's batch holds the one execution it made (the replays are the first batch's).
    assert retry.json()["batch"] is not None
    assert Execution.objects.filter(batch_id=retry.json()["batch"]["id"]).count() == 1


def test_a_webhook_retried_with_its_key_gets_the_first_answer(user, worker):
    trigger = deploy(user, "hook", kind="http", public=True)
    assert trigger.kind == "http"
    client = Client()
    headers = {"Idempotency-Key": "delivery-7", "User-Agent": "sender/1"}
    first = client.post("/t/hook", data=json.dumps({"order": 7}),
                        content_type="application/json", headers=headers)
    assert first.status_code == 200, first.content
    assert first.json() == {"got": {"order": 7}}
    # The retry differs in its headers (a new user agent, a delivery time): still the same call.
    again = client.post("/t/hook", data=json.dumps({"order": 7}),
                        content_type="application/json",
                        headers={**headers, "User-Agent": "sender/2", "X-Sent-At": "later"})
    assert again.status_code == 200 and again.json() == {"got": {"order": 7}}
    assert again["X-KubeFunction-Task-Id"] == first["X-KubeFunction-Task-Id"]
    assert again[idempotency.REPLAYED_HEADER] == "true"
    queued = client.post("/t/hook", data=json.dumps({"order": 7}),
                         content_type="application/json",
                         headers={**headers, "Prefer": "respond-async"})
    assert queued.status_code == 202 and queued[idempotency.REPLAYED_HEADER] == "true"
    assert queued.json()["task_id"] == first["X-KubeFunction-Task-Id"]
    other = client.post("/t/hook", data=json.dumps({"order": 8}),
                        content_type="application/json", headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in json.dumps(other.json())
    assert Execution.objects.count() == 1


def test_a_webhooks_callers_cannot_claim_or_probe_the_owners_other_keys(user, worker, api):
    """Keys sent to a webhook are the trigger's callers': the owner's API keys and another
    trigger's keys of the same name are other keys (a public caller cannot block them)."""
    deploy(user, "public-a", kind="http", public=True)
    deploy(user, "public-b", kind="http", public=True)
    mine = dispatch(api, "public-a", {"payload": {"order": 1}}, key="order-1")
    assert mine.status_code == 202
    caller = Client()
    headers = {"Idempotency-Key": "order-1", "Prefer": "respond-async"}
    on_a = caller.post("/t/public-a", data=json.dumps({"junk": True}),
                       content_type="application/json", headers=headers)
    assert on_a.status_code == 202 and on_a.json()["task_id"] != mine.json()["task_id"]
    on_b = caller.post("/t/public-b", data=json.dumps({"other": True}),
                       content_type="application/json", headers=headers)
    assert on_b.status_code == 202 and on_b.json()["task_id"] != on_a.json()["task_id"]
    # The owner's own retry still gets its first execution back.
    again = dispatch(api, "public-a", {"payload": {"order": 1}}, key="order-1")
    assert again.status_code == 200 and again.json()["task_id"] == mine.json()["task_id"]
    assert Execution.objects.count() == 3


def test_the_dispatch_command_takes_a_key(user, worker):
    deploy(user, "cmd")
    out = StringIO()
    call_command("dispatch", "cmd", "--payload", '{"n": 5}', "--idempotency-key", "c-5",
                 "--owner", "alice", stdout=out)
    err = StringIO()
    call_command("dispatch", "cmd", "--payload", '{"n": 5}', "--idempotency-key", "c-5",
                 "--owner", "alice", stdout=out, stderr=err)
    first, second = out.getvalue().split()
    assert first == second and "dispatched before" in err.getvalue()
    assert Execution.objects.count() == 1
