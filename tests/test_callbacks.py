"""Callbacks: a real worker POSTs the result to a receiver on 127.0.0.1, signed as documented in
docs/callbacks.md; retries on errors; the allow-list at dispatch and at delivery."""

import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from executions import callbacks
from executions.models import CallbackStatus, Execution, ExecutionStatus
from kubefunction.errors import InvalidInput

HANDLER = b"def handle(event, context):\n    if event.get('fail'):\n" \
          b"        raise ValueError('asked to fail')\n    return {'doubled': event['n'] * 2}\n"


# -- the receiver's side, exactly as docs/callbacks.md tells it -----------------------------------

def verify(secret: bytes, body: bytes, timestamp: str, signature: str,
           tolerance: int = 300) -> bool:
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def documented_default_secret() -> bytes:
    return hmac.new(django_settings.SECRET_KEY.encode(), b"kubefunction-callback-secret",
                    hashlib.sha256).hexdigest().encode()


def documented_owner_key(owner) -> bytes:
    """docs/callbacks.md: hex(HMAC-SHA256(platform secret, "owner:<id>:<joined>"))."""
    return hmac.new(documented_default_secret(),
                    f"owner:{owner.pk}:{owner.date_joined.timestamp()}".encode(),
                    hashlib.sha256).hexdigest().encode()


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers the scripted statuses
    (then 200)."""

    def __init__(self, statuses=()):
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body))
                    receiver.arrived.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/done?src=kf"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[dict, bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout)
        return list(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allow_loopback(settings):
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def trigger(api):
    response = api.post("/api/functions/", {
        "name": "double", "source": SimpleUploadedFile("double.py", HANDLER)},
        format="multipart")
    assert response.status_code == 201, response.content
    api.post("/api/triggers/", {"name": "double", "function": "double"}, format="json")
    return "double"


def wait_for_callback(task_id: str, timeout: float = 60) -> Execution:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = Execution.objects.get(task_id=task_id)
        if execution.callback_status in (CallbackStatus.DELIVERED, CallbackStatus.FAILED):
            return execution
        time.sleep(0.1)
    raise AssertionError(f"the callback of {task_id} did not end: {execution.callback_status}")


# -- with a real worker --------------------------------------------------------------------------

@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_callback_received_and_signature_verified(api, user, other_user, trigger,
                                                  allow_loopback, celery_worker_process):
    with Receiver() as receiver:
        response = api.post("/api/triggers/double/dispatch/",
                            {"payload": {"n": 21}, "callback_url": receiver.url}, format="json")
        assert response.status_code == 202, response.content
        task_id = response.json()["task_id"]
        [(headers, body)] = receiver.wait_for(1)
    assert headers["Content-Type"] == "application/json"
    key = api.get("/api/callbacks/key/").json()["key"].encode()  # what the owner verifies with
    assert key == documented_owner_key(user)
    assert verify(key, body, headers["X-KubeFunction-Timestamp"],
                  headers["X-KubeFunction-Signature"])
    assert not verify(key, body.replace(b"42", b"43"),
                      headers["X-KubeFunction-Timestamp"], headers["X-KubeFunction-Signature"])
    assert not verify(key, body, "1000000000",
                      headers["X-KubeFunction-Signature"])  # a replayed old delivery
    # Another owner's key (or the platform secret itself) does not verify it.
    stranger = APIClient()
    stranger.force_authenticate(other_user)
    other_key = stranger.get("/api/callbacks/key/").json()["key"].encode()
    assert other_key != key
    for wrong in (other_key, documented_default_secret()):
        assert not verify(wrong, body, headers["X-KubeFunction-Timestamp"],
                          headers["X-KubeFunction-Signature"])
    payload = json.loads(body)
    execution = wait_for_callback(task_id)
    assert payload == {
        "event": "execution.finished", "task_id": task_id, "execution_id": str(execution.pk),
        "status": "succeeded", "output": {"doubled": 42}, "output_truncated": False,
        "function": "double", "version": 1, "trigger": "double",
        "dispatched_at": execution.dispatched_at.isoformat(),
        "finished_at": execution.finished_at.isoformat(), "attempts": 1}
    assert execution.callback_status == CallbackStatus.DELIVERED
    assert execution.callback_attempts == 1 and execution.callback_error == ""
    shown = api.get(f"/api/executions/{task_id}/").json()
    assert (shown["callback_url"], shown["callback_status"], shown["callback_attempts"]) == (
        receiver.url, "delivered", 1)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_failed_execution_callback_carries_the_error(api, trigger, allow_loopback,
                                                     celery_worker_process):
    with Receiver() as receiver:
        response = api.post("/api/triggers/double/dispatch/",
                            {"payload": {"fail": True}, "callback_url": receiver.url},
                            format="json")
        [(_headers, body)] = receiver.wait_for(1)
    payload = json.loads(body)
    assert payload["task_id"] == response.json()["task_id"]
    assert payload["status"] == ExecutionStatus.FAILED and payload["error_type"] == "ValueError"
    assert "asked to fail" in payload["error"] and "output" not in payload


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_receiver_errors_are_retried_until_delivered(api, user, trigger, allow_loopback,
                                                     celery_worker_process):
    with Receiver(statuses=[500, 500]) as receiver:
        response = api.post("/api/triggers/double/dispatch/",
                            {"payload": {"n": 1}, "callback_url": receiver.url}, format="json")
        task_id = response.json()["task_id"]
        requests = receiver.wait_for(3)
        execution = wait_for_callback(task_id)
    assert [h["X-KubeFunction-Attempt"] for h, _ in requests] == ["1", "2", "3"]
    assert execution.callback_status == CallbackStatus.DELIVERED
    assert execution.callback_attempts == 3
    assert all(verify(documented_owner_key(user), body, h["X-KubeFunction-Timestamp"],
                      h["X-KubeFunction-Signature"]) for h, body in requests)
    assert "HTTP 500" not in execution.callback_error  # cleared once delivered


# -- without a worker: the service itself ---------------------------------------------------------

@pytest.mark.django_db
def test_url_outside_the_allow_list_is_refused_at_dispatch(api, trigger, settings):
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com"]
    settings.DEBUG = False
    for url in ["http://127.0.0.1:9/x", "http://evil.example.org/", "ftp://hooks.example.com/",
                "http://user:pw@hooks.example.com/", "not a url"]:
        response = api.post("/api/triggers/double/dispatch/",
                            {"payload": {"n": 1}, "callback_url": url}, format="json")
        assert response.status_code == 400, url
        assert list(response.json()) == ["callback_url"], response.json()
    assert not Execution.objects.exists()
    allowed = api.post("/api/triggers/double/dispatch/",
                       {"payload": {"n": 1}, "callback_url": "https://hooks.example.com/k"},
                       format="json")
    assert allowed.status_code == 202
    assert Execution.objects.get().callback_url == "https://hooks.example.com/k"


def test_allow_list_patterns(settings):
    settings.DEBUG = False
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["*.example.com", "hooks.test:8443",
                                                    "10.0.0.*", "[::1]:9000"]
    check = callbacks.callback_url_check
    assert check("https://a.example.com/x") and check("http://b.c.example.com:81/")
    assert check("https://hooks.test:8443/") and check("http://10.0.0.7:5000/")
    assert check("http://[::1]:9000/") and check("") == ""
    for url in ["https://example.com/", "https://hooks.test/", "http://10.0.1.7/",
                "http://[::1]:9001/", "http://127.0.0.1/", "http://localhost/"]:
        with pytest.raises(InvalidInput) as refused:
            check(url, field="default_callback_url")
        assert refused.value.field == "default_callback_url"
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = []
    settings.KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK = True  # development (make up): loopback only
    assert check("http://127.0.0.1:8000/") and check("http://localhost:1/")
    with pytest.raises(InvalidInput):
        check("https://hooks.example.com/")


def _resolving(monkeypatch, address: str):
    def getaddrinfo(host, port, *args, **kwargs):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(callbacks.socket, "getaddrinfo", getaddrinfo)


def test_delivery_refuses_a_name_resolving_to_an_internal_address(settings, monkeypatch):
    settings.DEBUG = False
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["*.example.com"]
    for internal in ["10.0.0.5", "127.0.0.1", "169.254.169.254", "::1", "::ffff:192.168.1.1"]:
        _resolving(monkeypatch, internal)
        with pytest.raises(callbacks.CallbackRefused, match="outside"):
            callbacks.callback_target("https://hooks.example.com/done")
    _resolving(monkeypatch, "93.184.216.34")
    target = callbacks.callback_target("https://hooks.example.com:8443/done?x=1")
    assert (target.address, target.host, target.port, target.path) == (
        "93.184.216.34", "hooks.example.com", 8443, "/done?x=1")
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["*.example.com", "10.0.0.*"]
    _resolving(monkeypatch, "10.0.0.5")  # the operator listed that address: allowed
    assert callbacks.callback_target("http://hooks.example.com/").address == "10.0.0.5"


@pytest.mark.django_db
def test_delivery_to_a_host_no_longer_allowed_fails_without_retry(api, trigger, settings):
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    with Receiver() as receiver:
        api.post("/api/triggers/double/dispatch/",
                 {"payload": {"n": 1}, "callback_url": receiver.url}, format="json")
        execution = Execution.objects.get()
        Execution.objects.filter(pk=execution.pk).update(
            status=ExecutionStatus.SUCCEEDED, callback_status=CallbackStatus.PENDING)
        settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = []
        assert callbacks.callback_deliver(execution_id=execution.pk) is None
    execution.refresh_from_db()
    assert execution.callback_status == CallbackStatus.FAILED
    assert execution.callback_attempts == 1 and "refused" in execution.callback_error
    assert receiver.requests == []


@pytest.mark.django_db
def test_redirects_are_not_followed_and_attempts_run_out(api, trigger, settings):
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.KUBEFUNCTION_CALLBACK_MAX_ATTEMPTS = 2
    settings.KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS = 3
    with Receiver(statuses=[302, 302]) as receiver:
        api.post("/api/triggers/double/dispatch/",
                 {"payload": {"n": 1}, "callback_url": receiver.url}, format="json")
        execution = Execution.objects.get()
        Execution.objects.filter(pk=execution.pk).update(
            status=ExecutionStatus.SUCCEEDED, callback_status=CallbackStatus.PENDING)
        assert callbacks.callback_deliver(execution_id=execution.pk) == 3  # retry in 3 s
        execution.refresh_from_db()
        assert execution.callback_status == CallbackStatus.PENDING
        assert "HTTP 302 (redirects are not followed)" in execution.callback_error
        assert callbacks.callback_deliver(execution_id=execution.pk) is None
    execution.refresh_from_db()
    assert execution.callback_status == CallbackStatus.FAILED
    assert execution.callback_attempts == 2 and len(receiver.requests) == 2
    assert receiver.requests[0][0]["Host"] == f"127.0.0.1:{receiver.server.server_port}"


@pytest.mark.django_db
def test_connection_refused_is_retried(api, trigger, settings):
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS = 1.0
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api.post("/api/triggers/double/dispatch/",
             {"payload": {"n": 1}, "callback_url": f"http://127.0.0.1:{port}/"}, format="json")
    execution = Execution.objects.get()
    Execution.objects.filter(pk=execution.pk).update(
        status=ExecutionStatus.SUCCEEDED, callback_status=CallbackStatus.PENDING)
    assert callbacks.callback_deliver(execution_id=execution.pk) == 1.0
    execution.refresh_from_db()
    assert execution.callback_status == CallbackStatus.PENDING
    assert "Connection" in execution.callback_error or "refused" in execution.callback_error


@pytest.mark.django_db
def test_hook_does_nothing_without_callback_or_batch(django_assert_num_queries):
    from executions.hooks import execution_finished

    with django_assert_num_queries(0):
        execution_finished("00000000-0000-0000-0000-000000000000", callback_url="",
                           batch_id=None)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_goes_to_the_checked_address_and_verifies_the_name(settings, monkeypatch,
                                                                 tmp_path):
    """The name resolves (here, by a stubbed resolver) to 127.0.0.1: the connection goes there,
    with the URL's name for the Host header, SNI and certificate check."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=hooks.example.com",
                    "-addext", "subjectAltName=DNS:hooks.example.com"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it, as a real CA would be
    settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["hooks.example.com", "127.0.0.1"]
    _resolving(monkeypatch, "127.0.0.1")
    with Receiver() as receiver:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        port = receiver.server.server_port
        target = callbacks.callback_target(f"https://hooks.example.com:{port}/done")
        assert callbacks._post(target, b"{}", {"Content-Type": "application/json"})[0] == 200
        [(headers, _body)] = receiver.wait_for(1, timeout=10)
        assert headers["Host"] == f"hooks.example.com:{port}"
        settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS = ["*.example.com", "127.0.0.1"]
        wrong = callbacks.callback_target(f"https://other.example.com:{port}/done")
        with pytest.raises(urllib3.exceptions.SSLError, match="other.example.com"):
            callbacks._post(wrong, b"{}", {})
