"""HTTP triggers under issue 15, through the real webhook (django.test.Client) and a real worker:

- signed triggers: a GitHub-signed delivery (GitHub's own HMAC definition), a Stripe-signed one
  (signed by the `stripe` package), a generic HMAC in a header of the trigger's choosing; a
  wrong, missing, tampered or expired signature is a 401 and queues nothing;
- CORS: the platform answers an allowed origin's preflight (no execution), not another's; the
  call's answer carries Access-Control-Allow-Origin on both origins, and a function's own is
  still dropped on the platform's;
- methods and paths for a convention function (Windmill's `main(**arguments)`): every method,
  the path after the trigger, the query string intact (`?async=1` is the function's), HEAD as
  GET without a body, OPTIONS reaching the function without CORS, `Prefer: respond-async`;
  the execution's input is the request description without the platform's credentials, and a
  rerun keeps it an HTTP request;
- the default convention: still POST only, no path (tests/test_http_triggers.py and
  tests/test_webhook_security.py hold the rest of its contract).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import stripe
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from executions.models import Execution
from executions.reruns import execution_rerun
from functions.services import function_register
from tests.waiting import wait_until
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

TOKEN = "X-KubeFunction-Token"
ORIGIN = "https://app.example.com"
# Windmill's style: a script's `main` takes the event's fields as arguments.
WINDMILL = b'''def main(q: str = "", **rest):
    return {"q": q, "rest": rest}
'''
# Our own convention: the event is the JSON body.
ECHO = b"""
def handle(event, context):
    return {"event": event}
"""
OWN_CORS = b"""
def handle(event, context):
    return {"statusCode": 200, "headers": {"Access-Control-Allow-Origin": "*", "X-Made-By": "fn"},
            "body": "ok"}
"""


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


def http_trigger(user, name: str, source: bytes, *, convention: str = "", **fields):
    filename = "main.py" if convention else "handler.py"
    version = function_register(name=name, owner=user, filename=filename, data=source,
                                convention=convention)
    return trigger_create(name=name, function=version.function, user=user, kind="http",
                          **fields)


def execution_of(answer) -> Execution:
    return Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"])


def post(name: str, body: bytes, **headers):
    return Client().post(f"/t/{name}", data=body, content_type="application/json",
                         headers=headers)


# --- Signatures --------------------------------------------------------------------------------

def github_signature(secret: str, body: bytes) -> str:
    """What GitHub sends ("Validating webhook deliveries"): HMAC-SHA256 of the body, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_github_signed_delivery_dispatches_and_a_bad_one_queues_nothing(user, worker):
    secret = "It's a Secret to Everybody"
    trigger = http_trigger(user, "gh", WINDMILL, convention="windmill", signature="github",
                           signature_secret=secret)
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    delivery = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab"}

    refusals = {
        "missing": {},
        "wrong secret": {"X-Hub-Signature-256": github_signature("not it", body)},
        "tampered": {"X-Hub-Signature-256": github_signature(secret, body + b" ")},
        "unprefixed": {"X-Hub-Signature-256": github_signature(secret, body)[7:]},
        "our token instead": {TOKEN: trigger.token},
    }
    for why, headers in refusals.items():
        refused = post("gh", body, **delivery, **headers)
        assert refused.status_code == 401, (why, refused.content)
        assert "X-Hub-Signature-256" in refused.json()["detail"], why
    assert not Execution.objects.exists()

    signed = post("gh", body, **delivery, **{"X-Hub-Signature-256": github_signature(secret,
                                                                                     body)})
    assert signed.status_code == 200, signed.content
    assert signed.json() == {"q": "", "rest": {"zen": "Keep it logically awesome.",
                                               "hook_id": 1}}
    execution = execution_of(signed)
    headers = dict(execution.input["headers"])
    # The sender's signature and event headers reach the function: they are not ours.
    assert headers["x-hub-signature-256"] == github_signature(secret, body)
    assert headers["x-github-event"] == "ping"
    assert execution.input["body"] == body.decode() and execution.http_request
    assert Execution.objects.count() == 1


def test_stripe_signed_events_as_the_stripe_package_signs_them(user, worker):
    secret = "whsec_test_kubefunction"
    http_trigger(user, "stripe-hook", ECHO, signature="stripe", signature_secret=secret)
    event = {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded"}
    body = json.dumps(event).encode()

    expired = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time()) - 400)
    for header in (expired, stripe.WebhookSignature.generate_signature_header(
            body.decode(), "whsec_someone_else"), ""):
        refused = post("stripe-hook", body, **{"Stripe-Signature": header} if header else {})
        assert refused.status_code == 401, refused.content
    assert "away from now" in post("stripe-hook", body,
                                   **{"Stripe-Signature": expired}).json()["detail"]
    assert not Execution.objects.exists()

    signed = post("stripe-hook", body, **{
        "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body.decode(),
                                                                               secret)})
    assert signed.status_code == 200, signed.content
    assert signed.json() == {"event": event}


def test_a_generic_hmac_in_a_header_of_the_triggers_choosing(user, worker):
    http_trigger(user, "generic", ECHO, signature="hmac-sha256", signature_secret="k3y",
                 signature_header="X-Hook-Signature")
    body = b'{"n": 3}'
    digest = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    elsewhere = post("generic", body, **{"X-Signature-256": digest})  # the default header
    assert elsewhere.status_code == 401 and "X-Hook-Signature" in elsewhere.json()["detail"]
    assert not Execution.objects.exists()
    signed = post("generic", body, **{"X-Hook-Signature": digest})
    assert signed.status_code == 200, signed.content
    assert signed.json() == {"event": {"n": 3}}


# --- CORS --------------------------------------------------------------------------------------

def test_cors_preflight_and_allow_origin_on_both_origins(user, worker, settings):
    trigger = http_trigger(user, "cors", OWN_CORS, cors_allowed_origins=[ORIGIN])
    asked = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, x-kubefunction-token"}

    allowed = Client().options("/t/cors", headers={"Origin": ORIGIN, **asked})
    assert allowed.status_code == 204, allowed.content
    assert allowed["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed["Access-Control-Allow-Methods"] == "POST"
    assert allowed["Access-Control-Allow-Headers"] == "content-type, x-kubefunction-token"
    assert int(allowed["Access-Control-Max-Age"]) > 0 and "Origin" in allowed["Vary"]
    other = Client().options("/t/cors", headers={"Origin": "https://evil.example", **asked})
    assert other.status_code == 204 and "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Methods" not in other.headers
    assert not Execution.objects.exists()  # a preflight runs nothing

    # The call itself: our Access-Control-Allow-Origin replaces the function's "*".
    call = post("cors", b"{}", Origin=ORIGIN, **{TOKEN: trigger.token})
    assert call.status_code == 200, call.content
    assert call["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-KubeFunction-Task-Id" in call["Access-Control-Expose-Headers"]
    assert call["X-Made-By"] == "fn" and "Origin" in call["Vary"]
    # Another origin, or none: the function's own header is dropped on the platform's origin.
    for headers in ({"Origin": "https://evil.example"}, {}):
        plain = post("cors", b"{}", **headers, **{TOKEN: trigger.token})
        assert plain.status_code == 200
        assert "Access-Control-Allow-Origin" not in plain.headers, headers
        assert "access-control-allow-origin" in plain["X-KubeFunction-Dropped-Headers"]
    # A refusal is readable by the allowed origin too.
    refused = post("cors", b"{}", Origin=ORIGIN)
    assert refused.status_code == 401 and refused["Access-Control-Allow-Origin"] == ORIGIN

    settings.KUBEFUNCTION_WEBHOOK_ORIGIN = "http://hooks.testserver"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "hooks.testserver"]
    own = Client().post("/t/cors", data=b"{}", content_type="application/json",
                        headers={"Origin": ORIGIN, TOKEN: trigger.token},
                        HTTP_HOST="hooks.testserver")
    assert own.status_code == 200 and own["Access-Control-Allow-Origin"] == ORIGIN
    bare = Client().post("/t/cors", data=b"{}", content_type="application/json",
                         headers={TOKEN: trigger.token}, HTTP_HOST="hooks.testserver")
    assert bare["Access-Control-Allow-Origin"] == "*"  # as the function gave it, there
    assert Execution.objects.count() == 5  # the calls; no preflight, no refusal


# --- Methods and paths -------------------------------------------------------------------------

def test_every_method_and_a_path_reach_a_convention_function(user, worker):
    http_trigger(user, "wm", WINDMILL, convention="windmill", public=True)
    client = Client()

    got = client.get("/t/wm/a/b?q=1&async=1&x=%20y")
    assert got.status_code == 200, got.content
    # `?async=1` is the function's own parameter: it arrives and the call stays synchronous.
    assert got.json() == {"q": "1", "rest": {"async": "1", "x": " y"}}
    execution = execution_of(got)
    assert execution.synchronous and execution.http_request
    assert (execution.input["method"], execution.input["path"], execution.input["query"]) == (
        "GET", "/a/b", "q=1&async=1&x=%20y")
    assert execution.input["route"] == "/t/wm" and execution.input["trigger"] == "wm"

    for method in ("put", "patch", "delete"):
        answer = getattr(client, method)(f"/t/wm/items/{method}?q=query",
                                         data=json.dumps({"n": 1}),
                                         content_type="application/json")
        assert answer.status_code == 200, (method, answer.content)
        assert answer.json() == {"q": "query", "rest": {"n": 1}}, method
        seen = execution_of(answer).input
        assert (seen["method"], seen["path"]) == (method.upper(), f"/items/{method}")
        assert json.loads(seen["body"]) == {"n": 1}

    # HEAD runs as GET and is answered as GET is, without the body.
    get, head = client.get("/t/wm/h?q=2"), client.head("/t/wm/h?q=2")
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and get.content
    assert execution_of(head).input["method"] == "GET"
    ignore = {"X-KubeFunction-Task-Id", "Content-Length"}
    assert {k: v for k, v in head.headers.items() if k not in ignore} == {
        k: v for k, v in get.headers.items() if k not in ignore}

    # Without a CORS setting OPTIONS is the function's (a preflight included).
    options = client.options("/t/wm/o", headers={"Origin": ORIGIN,
                                                 "Access-Control-Request-Method": "PUT"})
    assert options.status_code == 200, options.content
    assert execution_of(options).input["method"] == "OPTIONS"
    assert "Access-Control-Allow-Origin" not in options.headers

    # Only a header makes the call asynchronous.
    later = client.get("/t/wm/later?q=3", headers={"Prefer": "respond-async"})
    assert later.status_code == 202, later.content
    assert later["Location"].endswith(f"/api/executions/{later['X-KubeFunction-Task-Id']}/")
    queued = execution_of(later)
    assert not queued.synchronous and queued.input["path"] == "/later"
    assert wait_until(lambda: execution_of(later).is_finished, 30)
    assert execution_of(later).output["statusCode"] == 200
    # `Prefer: wait=0` gives up at once (504) and the execution goes on.
    gave_up = client.get("/t/wm/w", headers={"Prefer": "wait=0"})
    assert gave_up.status_code == 504 and gave_up.json()["task_id"]


def test_the_default_convention_still_takes_post_only_and_no_path(user, worker):
    trigger = http_trigger(user, "own", ECHO, cors_allowed_origins=[ORIGIN])
    client = Client()
    headers = {TOKEN: trigger.token}
    for method in ("get", "put", "patch", "delete", "head", "options"):
        refused = getattr(client, method)("/t/own", headers=headers)
        assert refused.status_code == 405, method
        assert refused["Allow"] == "POST", method
    assert client.post("/t/own/a/b", data=b"{}", content_type="application/json",
                       headers=headers).status_code == 404
    assert not Execution.objects.exists()
    # Its own controls are unchanged: ?async=1 is ours there, the event is the body.
    later = client.post("/t/own?async=1", data=b'{"x": 1}', content_type="application/json",
                        headers=headers)
    assert later.status_code == 202 and execution_of(later).input == {"x": 1}
    assert not execution_of(later).http_request
    now = client.post("/t/own", data=b'{"x": 2}', content_type="application/json",
                      headers={**headers, "Origin": ORIGIN})
    assert now.status_code == 200 and now.json() == {"event": {"x": 2}}
    assert now["Access-Control-Allow-Origin"] == ORIGIN


def test_the_request_description_holds_no_credentials_and_a_rerun_keeps_it(user, worker):
    trigger = http_trigger(user, "creds", WINDMILL, convention="windmill")
    get_user_model().objects.create_user("carol", password="carol-pass-1")
    login = APIClient().post("/api/auth/token/", {"username": "carol",
                                                  "password": "carol-pass-1"})
    api_token = login.json()["token"]
    client = Client()
    client.force_login(user)  # the platform's session cookie goes along
    session = client.cookies["sessionid"].value
    client.cookies["theme"] = "dark"

    answer = client.get("/t/creds/p?q=c", headers={
        TOKEN: trigger.token, "Authorization": f"Token {api_token}", "X-Custom": "kept"})
    assert answer.status_code == 200, answer.content
    execution = execution_of(answer)
    described = json.dumps(execution.input)
    for secret in (trigger.token, api_token, session):
        assert secret not in described
    headers = dict(execution.input["headers"])
    assert "authorization" not in headers and TOKEN.lower() not in headers
    assert "sessionid" not in headers.get("cookie", "") and "theme=dark" in headers["cookie"]
    assert headers["x-custom"] == "kept"

    rerun = execution_rerun(execution=execution)
    assert rerun.http_request and rerun.input == execution.input
    assert wait_until(lambda: Execution.objects.get(pk=rerun.pk).is_finished, 30)
    done = Execution.objects.get(pk=rerun.pk)
    assert done.status == "succeeded", done.error
    assert done.output == execution.output  # the same HTTP answer, from the same request
    assert json.loads(done.output["body"]) == {"q": "c", "rest": {}}
