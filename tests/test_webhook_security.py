"""Issue 11, webhooks and error pages, as a non-staff user through the public API against real
processes (the Celery worker, Postgres, Redis, a live HTTP server):

- a function's HTML answer with a cookie is served inert on the platform's origin (sandbox CSP,
  nosniff, no Set-Cookie, no security headers, no open redirect) and as given only on the
  separate webhook origin;
- the event never holds the caller's API token, session or CSRF cookie, CSRF header, metrics
  token or trigger token, while an Authorization meant for the function and other cookies pass;
- `Content-Length: abc` (or negative, or with Transfer-Encoding) is a 400 JSON on a public
  trigger, on API dispatch and anywhere else, sent over a raw connection;
- with the settings module's own DEBUG default, a forced 500 shows no secret, in its page or its
  log line.

This module is also the URLconf of the forced-500 test (the platform's URLs plus `boom/`).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import path
from rest_framework.test import APIClient

from executions.models import Execution
from kubefunction.urls import handler400, handler500  # noqa: F401 (this module is a URLconf)
from kubefunction.urls import urlpatterns as platform_urlpatterns
from tests.processes import ROOT
from triggers.webhooks import SANDBOX_CSP

pytestmark = [pytest.mark.django_db(transaction=True)]

TOKEN = "X-KubeFunction-Token"
ECHO = b"""
def handle(event, context):
    return {"event": event}
"""
HOSTILE = b"""
def handle(event, context):
    return {"statusCode": 200,
            "headers": {"Content-Type": "text/html", "Set-Cookie": "sessionid=x; Path=/",
                        "Content-Security-Policy": "script-src *",
                        "Access-Control-Allow-Origin": "*", "X-Frame-Options": "ALLOWALL",
                        "Strict-Transport-Security": "max-age=0", "Refresh": "0; url=/admin/",
                        "Link": "<https://evil.example/x.css>; rel=stylesheet",
                        "Location": event.get("location", "/t/elsewhere"),
                        "X-Accel-Redirect": "/var/secret", "X-KubeFunction-Task-Id": "forged",
                        "Cache-Control": "no-store", "X-Made-By": "fn"},
            "body": "<script>fetch('/api/auth/token/')</script><h1>hi</h1>"}
"""


def boom(request):
    """A failure whose message quotes every secret, as a driver or library might."""
    from django.conf import settings

    raise RuntimeError(f"cannot reach {os.environ.get('DATABASE_URL')} or "
                       f"{settings.CELERY_BROKER_URL} with key {settings.SECRET_KEY}")


urlpatterns = [path("boom/", boom), path("api/boom/", boom), *platform_urlpatterns]


@pytest.fixture
def tenant():
    """A non-staff user with a real API token, got from the login endpoint."""
    user = get_user_model().objects.create_user("mallory", password="mallory-pass-1")
    assert not user.is_staff
    login = APIClient().post("/api/auth/token/",
                             {"username": "mallory", "password": "mallory-pass-1"})
    assert login.status_code == 200, login.content
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {login.json()['token']}")
    return client, login.json()["token"]


def http_function(client: APIClient, name: str, source: bytes, **trigger) -> dict:
    """Upload a function and make an HTTP trigger for it, both through the API."""
    created = client.post("/api/functions/", {
        "name": name, "source": SimpleUploadedFile("handler.py", source)}, format="multipart")
    assert created.status_code == 201, created.content
    hook = client.post("/api/triggers/", {"name": name, "function": name, "kind": "http",
                                          **trigger}, format="json")
    assert hook.status_code == 201, hook.content
    return hook.json()


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


@pytest.mark.worker
def test_a_hostile_page_is_inert_on_the_platform_origin_and_as_given_on_its_own(
        tenant, worker, settings):
    client, _ = tenant
    token = http_function(client, "hostile", HOSTILE)["token"]

    page = Client().post("/t/hostile", data={}, content_type="application/json",
                         headers={TOKEN: token})
    assert page.status_code == 200, page.content
    assert page["Content-Security-Policy"] == SANDBOX_CSP
    assert page["Content-Security-Policy"].startswith("sandbox")
    assert page["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in page.headers and not page.cookies
    for refused in ("Access-Control-Allow-Origin", "Strict-Transport-Security", "Refresh",
                    "Link", "X-Accel-Redirect"):
        assert refused not in page.headers, refused
    assert page["X-Frame-Options"] == "DENY"  # the platform's, not the function's ALLOWALL
    assert page["X-KubeFunction-Task-Id"] != "forged"
    assert Execution.objects.filter(task_id=page["X-KubeFunction-Task-Id"]).exists()
    # What describes the body passes; the author is told what did not.
    assert page["Content-Type"] == "text/html" and page["Cache-Control"] == "no-store"
    assert page["X-Made-By"] == "fn" and page["Location"] == "/t/elsewhere"
    dropped = page["X-KubeFunction-Dropped-Headers"].split(", ")
    assert {"set-cookie", "content-security-policy", "link", "refresh",
            "x-accel-redirect"} <= set(dropped)
    assert b"<script>" in page.content  # served, but inert: the CSP sandbox is what stops it

    # No open redirect from the platform's origin; a redirect that stays on it passes.
    for target in ("https://evil.example/login", "//evil.example/", "/\\evil.example/"):
        away = Client().post("/t/hostile", data={"location": target},
                             content_type="application/json", headers={TOKEN: token})
        assert "Location" not in away.headers, target
    here = Client().post("/t/hostile", data={"location": "http://testserver/t/x"},
                         content_type="application/json", headers={TOKEN: token})
    assert here["Location"] == "http://testserver/t/x"

    # The separate webhook origin: the answer as the function gave it, cookies included; the
    # same request on the platform's host stays sanitised.
    settings.KUBEFUNCTION_WEBHOOK_ORIGIN = "http://hooks.testserver"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "hooks.testserver"]
    own = Client().post("/t/hostile", data={}, content_type="application/json",
                        headers={TOKEN: token}, HTTP_HOST="hooks.testserver")
    assert own.status_code == 200, own.content
    assert own["Set-Cookie"] == "sessionid=x; Path=/"
    assert own["Access-Control-Allow-Origin"] == "*" and own["X-Frame-Options"] == "ALLOWALL"
    assert "Content-Security-Policy" not in own.headers or \
        own["Content-Security-Policy"] == "script-src *"
    assert "X-KubeFunction-Dropped-Headers" not in own.headers
    main = Client().post("/t/hostile", data={}, content_type="application/json",
                         headers={TOKEN: token})
    assert "Set-Cookie" not in main.headers and main["Content-Security-Policy"] == SANDBOX_CSP
    # The webhook host serves webhooks only: no admin, API or login next to the functions' pages.
    for other in ("/admin/login/", "/api/functions/", "/api/auth/token/"):
        assert Client().get(other, HTTP_HOST="hooks.testserver").status_code == 404, other


@pytest.mark.worker
def test_the_event_never_holds_credentials_the_platform_accepts(tenant, worker, settings):
    client, api_token = tenant
    settings.KUBEFUNCTION_METRICS_TOKEN = "metrics-bearer-secret-1"
    trigger_token = http_function(client, "echo", ECHO)["token"]
    basic = "Basic " + base64.b64encode(b"fn-user:fn-pass").decode()

    def event(**headers) -> dict:
        answer = Client().post("/t/echo?q=1", data="hello", content_type="text/plain",
                               headers={TOKEN: trigger_token, **headers})
        assert answer.status_code == 200, answer.content
        return answer.json()["event"]

    seen = event(Authorization=f"Token {api_token}", X_CSRFToken="csrf-header-value-1",
                 Cookie="sessionid=victim-session-1; theme=dark; csrftoken=victim-csrf-1; a=b")
    text = json.dumps(seen)
    for secret in (api_token, trigger_token, "victim-session-1", "victim-csrf-1",
                   "csrf-header-value-1"):
        assert secret not in text, secret
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["cookie"] == "theme=dark; a=b"  # the other cookies pass
    assert seen["body"] == "hello" and seen["query"] == {"q": "1"}

    # An Authorization meant for the function passes: Basic, a Bearer the platform does not
    # take, a Token that is no platform token.
    assert event(Authorization=basic)["headers"]["authorization"] == basic
    assert event(Authorization="Bearer fn-own-jwt")["headers"]["authorization"] == \
        "Bearer fn-own-jwt"
    assert event(Authorization="Token not-a-platform-token")["headers"]["authorization"] == \
        "Token not-a-platform-token"
    # The metrics bearer token is a platform credential: stripped.
    assert "authorization" not in event(
        Authorization="Bearer metrics-bearer-secret-1")["headers"]
    # Only platform cookies in the header: no Cookie header at all.
    assert "cookie" not in event(Cookie="sessionid=s1; csrftoken=c1")["headers"]


def raw_post(base: str, target: str, headers: dict[str, str], body: bytes = b"{}"):
    """A request http.client sends as written (the test client cannot send bad framing)."""
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest("POST", target)
        for name, value in {"Connection": "close", "Content-Type": "application/json",
                            **headers}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def test_bad_framing_is_a_400_json_everywhere(live_server, tenant):
    client, api_token = tenant
    http_function(client, "open-hook", ECHO, public=True)
    manual = client.post("/api/triggers/", {"name": "by-hand", "function": "open-hook"},
                         format="json")
    assert manual.status_code == 201, manual.content
    targets = {
        "/t/open-hook": {},                                                  # public trigger
        "/api/triggers/by-hand/dispatch/": {"Authorization": f"Token {api_token}"},
        "/api/functions/": {"Authorization": f"Token {api_token}"},
        "/admin/login/": {},
        "/healthz": {},
    }
    for target, headers in targets.items():
        for length in ("abc", "-1", "1e3", "+2", "2_0"):
            status, content_type, body = raw_post(live_server.url, target,
                                                  {**headers, "Content-Length": length})
            assert status == 400, (target, length, status, body[:300])
            assert content_type == "application/json", (target, length)
            answer = json.loads(body)
            assert answer["code"] == "bad_request" and "Content-Length" in answer, answer
        status, _, body = raw_post(live_server.url, target, {
            **headers, "Content-Length": "2", "Transfer-Encoding": "chunked"})
        assert status == 400 and "Transfer-Encoding" in json.loads(body), (target, body)
    assert not Execution.objects.exists()  # nothing was dispatched by a refused request

    # Well-formed framing still works over the same raw path.
    status, _, body = raw_post(live_server.url, "/api/triggers/by-hand/dispatch/",
                               {"Authorization": f"Token {api_token}",
                                "Content-Length": "2"}, b"{}")
    assert status == 202, body
    # A declared body over the request limit is refused from the headers: 413 JSON.
    status, content_type, body = raw_post(live_server.url, "/t/open-hook",
                                          {"Content-Length": str(10**12)})
    assert status == 413 and content_type == "application/json"
    assert json.loads(body)["code"] == "request_too_large"


BOOM_SECRETS = {
    "DATABASE_URL": "postgres://kf:db-pass-4711@127.0.0.1:1/kf",
    "CELERY_BROKER_URL": "redis://:broker-pass-4711@127.0.0.1:1/0",
    "DJANGO_SECRET_KEY": "secret-key-4711-" + "k" * 40,
}
BOOM_SCRIPT = """
import json, logging, os, sys
import django
django.setup()
from django.conf import settings
settings.ROOT_URLCONF = "tests.test_webhook_security"
from django.test import Client
client = Client(raise_request_exception=False)
answers = {p: client.get(p) for p in ("/boom/", "/api/boom/")}
bad = client.get("/api/functions/", HTTP_HOST="evil.example")
print(json.dumps({"debug": settings.DEBUG,
                  "answers": {p: [r.status_code, r["Content-Type"], r.content.decode()]
                              for p, r in answers.items()},
                  "bad_host": [bad.status_code, bad["Content-Type"], bad.content.decode()]}))
"""


def boom_process(tmp_path, **env_vars: str) -> tuple[dict, str]:
    """Run BOOM_SCRIPT in a fresh process on the settings module as shipped (no DJANGO_DEBUG
    unless given), with a password in the database and broker URLs: (answers, stderr)."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_DEBUG"}
    env.update(BOOM_SECRETS, DJANGO_SETTINGS_MODULE="kubefunction.settings",
               KUBEFUNCTION_VAR_DIR=str(tmp_path), PYTHONPATH=str(ROOT), **env_vars)
    run = subprocess.run([sys.executable, "-c", BOOM_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


SECRETS_SHOWN = [*BOOM_SECRETS.values(), "db-pass-4711", "broker-pass-4711"]


def test_a_forced_500_with_the_default_debug_shows_no_secret(tmp_path):
    """The 500's page and its log line hold no secret, and no traceback reaches the client."""
    seen, stderr = boom_process(tmp_path)
    assert seen["debug"] is False
    page_status, page_type, page = seen["answers"]["/boom/"]
    assert page_status == 500 and page_type.startswith("text/html")
    assert "Server error" in page
    api_status, api_type, api = seen["answers"]["/api/boom/"]
    assert api_status == 500 and api_type == "application/json"
    assert json.loads(api) == {"detail": "Server error.", "code": "server_error"}
    bad_status, bad_type, bad = seen["bad_host"]
    assert bad_status == 400 and bad_type == "application/json", bad
    for text in (page, api, bad):
        assert "Traceback" not in text and "settings" not in text.lower()
        for secret in SECRETS_SHOWN:
            assert secret not in text
    # The log has the traceback (the operator needs it) with every secret masked.
    assert "RuntimeError: cannot reach" in stderr, stderr[-3000:]
    assert "Internal Server Error: /boom/" in stderr
    for secret in SECRETS_SHOWN:
        assert secret not in stderr, secret


def test_even_the_debug_page_masks_the_secrets(tmp_path):
    """DJANGO_DEBUG=true is asked for, not the default; its page (settings, the environment in
    META, the exception message) still shows none of the platform's secrets."""
    seen, stderr = boom_process(tmp_path, DJANGO_DEBUG="true")
    assert seen["debug"] is True
    for status, _, text in seen["answers"].values():
        assert status == 500 and "RuntimeError" in text  # Django's debug page, really
        assert "CELERY_BROKER_URL" in text and "********" in text
        for secret in SECRETS_SHOWN:
            assert secret not in text, secret


STATIC_SCRIPT = """
import django
django.setup()
from django.conf import settings
from django.test import Client
answer = Client().get("/static/admin/css/base.css")
print(settings.DEBUG, answer.status_code, answer["Content-Type"], sep="|")
"""


def test_static_files_are_served_with_debug_off(tmp_path):
    """DEBUG off no longer means an unstyled admin: collectstatic, then WhiteNoise serves them."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_DEBUG"}
    env.update(DJANGO_SETTINGS_MODULE="kubefunction.settings", KUBEFUNCTION_VAR_DIR=str(tmp_path))
    collect = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert collect.returncode == 0, collect.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", STATIC_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    debug, status, content_type = run.stdout.strip().splitlines()[-1].split("|")
    assert (debug, status) == ("False", "200") and content_type.startswith("text/css"), run.stdout
