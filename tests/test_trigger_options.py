"""The HTTP trigger options of issue 15 through the API, the admin and `create_trigger`
(payload_format_version, cors_allowed_origins, signature, signature_header and the write-only
signature_secret), and triggers.signatures against oracles we did not write: GitHub's published
test vector and the `stripe` package's own signing and verification."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import stripe
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory
from django.urls import reverse

from functions.services import function_register
from triggers import cors, signatures
from triggers.models import Trigger
from triggers.webhooks import WebhookAnswer

pytestmark = [pytest.mark.django_db]

HELLO = b"def handle(event, context):\n    return event\n"
SECRET = "It's a Secret to Everybody"


@pytest.fixture
def hello(user):
    return function_register(name="hello", owner=user, filename="hello.py",
                             data=HELLO).function


def create(api, **fields):
    return api.post("/api/triggers/", {"name": "hook", "function": "hello", "kind": "http",
                                       **fields}, format="json")


# --- The API -----------------------------------------------------------------------------------

def test_api_takes_the_options_and_never_returns_the_secret(api, hello):
    created = create(api, payload_format_version="2.0",
                     cors_allowed_origins=["https://App.Example.com:443", "http://localhost:3000",
                                           "http://[::1]:8080"],
                     signature="github", signature_secret=SECRET)
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["payload_format_version"] == "2.0" and body["signature"] == "github"
    # Normalised as browsers send an Origin: lower case, no default port.
    assert body["cors_allowed_origins"] == ["https://app.example.com", "http://localhost:3000",
                                            "http://[::1]:8080"]
    assert body["has_signature_secret"] is True and body["signature_header"] == ""
    assert "signature_secret" not in body and SECRET not in created.content.decode()
    detail = api.get("/api/triggers/hook/")
    assert "signature_secret" not in detail.json() and SECRET not in detail.content.decode()
    listed = api.get("/api/triggers/")
    assert SECRET not in listed.content.decode()
    assert Trigger.objects.get(name="hook").signature_secret == SECRET

    # A PATCH without the secret keeps it; with one, rotates it.
    assert api.patch("/api/triggers/hook/", {"description": "x"},
                     format="json").json()["has_signature_secret"] is True
    assert Trigger.objects.get(name="hook").signature_secret == SECRET
    rotated = api.patch("/api/triggers/hook/", {"signature_secret": "new-one"}, format="json")
    assert rotated.status_code == 200 and "new-one" not in rotated.content.decode()
    assert Trigger.objects.get(name="hook").signature_secret == "new-one"
    # Dropping the scheme drops its secret; the token header works again.
    plain = api.patch("/api/triggers/hook/", {"signature": ""}, format="json")
    assert plain.status_code == 200, plain.content
    assert plain.json()["has_signature_secret"] is False
    assert Trigger.objects.get(name="hook").signature_secret == ""
    # A generic scheme with its own header.
    generic = api.patch("/api/triggers/hook/", {
        "signature": "hmac-sha256", "signature_header": " X-Hook-Signature ",
        "signature_secret": "s3cret"}, format="json")
    assert generic.status_code == 200, generic.content
    assert generic.json()["signature_header"] == "X-Hook-Signature"
    # Leaving the generic scheme drops the header; "*" alone allows any origin.
    github = api.patch("/api/triggers/hook/", {"signature": "github",
                                               "cors_allowed_origins": ["*"]}, format="json")
    assert github.status_code == 200, github.content
    assert github.json()["signature_header"] == "" and github.json()["cors_allowed_origins"] == [
        "*"]
    # Turned into a manual trigger, an HTTP trigger loses its HTTP options.
    manual = api.patch("/api/triggers/hook/", {"kind": "manual"}, format="json")
    assert manual.status_code == 200, manual.content
    trigger = Trigger.objects.get(name="hook")
    assert (trigger.cors_allowed_origins, trigger.signature, trigger.signature_secret,
            trigger.payload_format_version) == ([], "", "", "1.0")


@pytest.mark.parametrize(("fields", "field"), [
    ({"cors_allowed_origins": "https://app.example.com"}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["app.example.com"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://app.example.com/"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://app.example.com/path"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://app.example.com?x=1"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://user@app.example.com"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://app.example.com:99999"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["ftp://app.example.com"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["null"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://a\u0000b.example"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["https://caf\u00e9.example"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["http://[::1"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": ["*", "https://app.example.com"]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": [1]}, "cors_allowed_origins"),
    ({"cors_allowed_origins": {"origin": "https://a.example"}}, "cors_allowed_origins"),
    ({"kind": "manual", "cors_allowed_origins": ["https://a.example"]}, "cors_allowed_origins"),
    ({"payload_format_version": "3.0"}, "payload_format_version"),
    ({"kind": "manual", "payload_format_version": "2.0"}, "payload_format_version"),
    ({"signature": "sha1"}, "signature"),
    ({"signature": "github"}, "signature_secret"),
    ({"signature": "stripe", "signature_secret": "   "}, "signature_secret"),
    ({"signature_secret": "lonely"}, "signature_secret"),
    ({"signature_secret": "x" * 201, "signature": "github"}, "signature_secret"),
    ({"kind": "manual", "signature": "github", "signature_secret": "s"}, "signature"),
    ({"signature": "github", "signature_secret": "s", "signature_header": "X-Sig"},
     "signature_header"),
    ({"signature": "hmac-sha256", "signature_secret": "s", "signature_header": "X Sig"},
     "signature_header"),
    ({"signature": "hmac-sha256", "signature_secret": "s", "signature_header": "X-Sig:"},
     "signature_header"),
    ({"signature": "hmac-sha256", "signature_secret": "s", "signature_header": "Cookie"},
     "signature_header"),
    ({"signature": "hmac-sha256", "signature_secret": "s",
      "signature_header": "X-KubeFunction-Token"}, "signature_header"),
    ({"signature": "github", "signature_secret": "s", "public": True}, "public"),
])
def test_api_refuses_bad_options_naming_the_field(api, hello, fields, field):
    refused = create(api, **fields)
    assert refused.status_code == 400, refused.content
    assert field in refused.json(), refused.json()
    assert not Trigger.objects.filter(name="hook").exists()


# --- The admin ---------------------------------------------------------------------------------

ADMIN_FORM = {"name": "hook", "kind": "http", "enabled": "on", "description": "",
              "default_payload": "{}", "schedule": "", "timezone": "UTC", "max_retries": 0,
              "retry_backoff_seconds": 1.0, "callback_url": ""}


def test_admin_sets_the_options_and_never_shows_the_secret(admin_client, hello):
    add = reverse("admin:triggers_trigger_add")
    form = {**ADMIN_FORM, "function": hello.pk, "payload_format_version": "2.0",
            "cors_allowed_origins": '["https://App.example.com"]', "signature": "stripe",
            "signature_header": ""}
    refused = admin_client.post(add, form)  # a scheme without its secret
    assert refused.status_code == 200
    assert "needs the secret the sender signs with" in refused.content.decode()
    bad_origin = admin_client.post(add, {**form, "new_signature_secret": "whsec_x",
                                         "cors_allowed_origins": '["app.example.com"]'})
    assert "is not an origin" in bad_origin.content.decode()
    created = admin_client.post(add, {**form, "new_signature_secret": "whsec_test_secret"})
    assert created.status_code == 302, created.content.decode()[:3000]
    trigger = Trigger.objects.get(name="hook")
    assert trigger.signature == "stripe" and trigger.signature_secret == "whsec_test_secret"
    assert trigger.cors_allowed_origins == ["https://app.example.com"]
    assert trigger.payload_format_version == "2.0"

    change = reverse("admin:triggers_trigger_change", args=[trigger.pk])
    page = admin_client.get(change).content.decode()
    assert "whsec_test_secret" not in page
    assert 'name="new_signature_secret"' in page and "never shown" in page
    # Saved again without a secret: the stored one stays.
    kept = admin_client.post(change, {**form, "description": "again"})
    assert kept.status_code == 302, kept.content.decode()[:3000]
    assert Trigger.objects.get(name="hook").signature_secret == "whsec_test_secret"
    # A new one replaces it.
    admin_client.post(change, {**form, "new_signature_secret": "whsec_other"})
    assert Trigger.objects.get(name="hook").signature_secret == "whsec_other"
    listing = admin_client.get(reverse("admin:triggers_trigger_changelist")).content.decode()
    assert "stripe-signed" in listing and "whsec_other" not in listing


# --- The command -------------------------------------------------------------------------------

def command(*args):
    call_command("create_trigger", *args, "--owner", "alice")


def test_create_trigger_takes_the_options(hello, tmp_path, capsys):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    command("gh", "hello", "--kind", "http", "--signature", "github",
                 "--signature-secret-file", str(secret_file), "--cors-origin",
                 "https://a.example", "--cors-origin", "https://B.example:8443",
                 "--payload-format-version", "2.0")
    trigger = Trigger.objects.get(name="gh")
    assert trigger.signature_secret == SECRET  # the trailing newline dropped
    assert trigger.cors_allowed_origins == ["https://a.example", "https://b.example:8443"]
    assert trigger.payload_format_version == "2.0"
    out = capsys.readouterr().out
    assert "signed calls only" in out and SECRET not in out and "token" not in out.split(
        "signed")[0].lower()

    command("generic", "hello", "--kind", "http", "--signature",
                 "hmac-sha256", "--signature-secret", "s", "--signature-header", "X-Hook-Sig")
    assert Trigger.objects.get(name="generic").signature_header == "X-Hook-Sig"
    with pytest.raises(CommandError, match="cors_allowed_origins: 'a.example' is not an origin"):
        command("bad", "hello", "--kind", "http", "--cors-origin",
                     "a.example")
    with pytest.raises(CommandError, match="signature_secret: a stripe signature needs"):
        command("bad", "hello", "--kind", "http", "--signature",
                     "stripe")
    with pytest.raises(CommandError, match="only HTTP triggers have CORS origins"):
        command("bad", "hello", "--cors-origin", "https://a.example")
    assert not Trigger.objects.filter(name="bad").exists()


# --- Signatures against their senders' own definitions -----------------------------------------

def signed_request(header: str, value: str, body: bytes):
    return RequestFactory().post("/t/x", data=body, content_type="application/json",
                                 headers={header: value})


def test_githubs_published_test_vector():
    """GitHub's docs, "Validating webhook deliveries": this secret and payload give this
    signature."""
    trigger = Trigger(kind="http", signature="github", signature_secret=SECRET)
    vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    body = b"Hello, World!"
    signatures.verify(trigger, signed_request("X-Hub-Signature-256", vector, body), body)
    for value, sent in ((vector, b"Hello, World?"),  # tampered body
                        (vector.removeprefix("sha256="), body),  # GitHub always prefixes
                        (vector[:-1] + "0", body), ("", body)):
        with pytest.raises(signatures.SignatureRefused):
            signatures.verify(trigger, signed_request("X-Hub-Signature-256", value, sent), sent)
    wrong = Trigger(kind="http", signature="github", signature_secret="another secret")
    with pytest.raises(signatures.SignatureRefused, match="does not match"):
        signatures.verify(wrong, signed_request("X-Hub-Signature-256", vector, body), body)


def stripe_accepts(body: bytes, header: str, secret: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(body, header, secret,
                                              signatures.STRIPE_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError:
        return False
    return True


def ours_accepts(body: bytes, header: str, secret: str, now: float | None = None) -> bool:
    trigger = Trigger(kind="http", signature="stripe", signature_secret=secret)
    try:
        signatures.verify(trigger, signed_request("Stripe-Signature", header, body), body,
                          now=now)
    except signatures.SignatureRefused:
        return False
    return True


def test_stripe_signatures_agree_with_the_stripe_package():
    secret = "whsec_test_5d2f7e"
    body = b'{"id": "evt_1", "type": "payment_intent.succeeded", "note": "caf\xc3\xa9"}'
    now = int(time.time())
    made = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    other = stripe.WebhookSignature._compute_signature(f"{now}.{body.decode()}", "whsec_other")
    expected = stripe.WebhookSignature._compute_signature(f"{now}.{body.decode()}", secret)
    cases = [
        made,
        f"t={now},v1={other},v1={expected}",  # secret rolling: any v1 may match
        f"t={now},v0=abc,v1={expected}",
        stripe.WebhookSignature.generate_signature_header(body.decode(), "whsec_other"),
        f"t={now},v1={expected[:-2]}00",
        f"t={now + 1},v1={expected}",  # the time is signed too
        f"t={now}",
        "v1=" + expected,
        stripe.WebhookSignature.generate_signature_header(body.decode(), secret,
                                                          timestamp=now - 301),  # expired
    ]
    verdicts = [(ours_accepts(body, case, secret), stripe_accepts(body, case, secret))
                for case in cases]
    assert [ours for ours, _ in verdicts] == [theirs for _, theirs in verdicts]
    assert [ours for ours, _ in verdicts] == [True, True, True] + [False] * 6
    assert not ours_accepts(body + b" ", made, secret)  # a tampered body
    # Our clock check both ways (stripe-python refuses only the past).
    assert not ours_accepts(body, made, secret, now=now - 301)
    assert ours_accepts(body, made, secret, now=now + 299)
    # A timestamp of non-ASCII digits is refused (it used to reach int() and fail with 500).
    assert not ours_accepts(body, f"t=\u00b2,v1={expected}", secret)


def test_generic_hmac_with_its_own_header():
    body = b"payload"
    digest = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    trigger = Trigger(kind="http", signature="hmac-sha256", signature_secret="k3y",
                      signature_header="X-Hook-Signature")
    signatures.verify(trigger, signed_request("X-Hook-Signature", digest, body), body)
    signatures.verify(trigger, signed_request("X-Hook-Signature", "sha256=" + digest.upper(),
                                              body), body)
    with pytest.raises(signatures.SignatureRefused, match="X-Hook-Signature"):
        signatures.verify(trigger, signed_request("X-Signature-256", digest, body), body)
    default = Trigger(kind="http", signature="hmac-sha256", signature_secret="k3y")
    signatures.verify(default, signed_request("X-Signature-256", digest, body), body)


def test_cors_headers_replace_and_merge_a_functions_own_in_any_case():
    """A convention's answer names its headers in lower case: ours still replace its
    Access-Control-Allow-Origin (one header, not two) and merge its Vary and exposed headers."""
    trigger = Trigger(kind="http", cors_allowed_origins=["https://app.example.com"])
    request = RequestFactory().get("/t/x", headers={"Origin": "https://app.example.com"})
    answer = WebhookAnswer(200, b"", headers={
        "access-control-allow-origin": "*", "vary": ["Accept-Encoding", "origin"],
        "access-control-expose-headers": "X-Page", "x-page": "2"}, ours=False)
    cors.allow(answer, trigger, request)
    names = [name.lower() for name in answer.headers]
    assert len(names) == len(set(names)), answer.headers
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert answer.headers["Vary"] == "Accept-Encoding, origin"
    assert answer.headers["Access-Control-Expose-Headers"] == (
        "X-Page, X-KubeFunction-Task-Id, Location, Retry-After")
    other = RequestFactory().get("/t/x", headers={"Origin": "https://evil.example"})
    untouched = WebhookAnswer(200, b"", headers={"vary": "Accept"}, ours=False)
    assert cors.allow(untouched, trigger, other).headers == {"vary": "Accept"}
