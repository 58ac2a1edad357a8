"""The database goes away under a real gunicorn server: the API, the webhooks and /readyz answer
503 (JSON, with Retry-After), the admin a plain 503 page, /healthz stays 200, and once the
database is back the same server process answers 200 again (health-checked connections).

The server reaches the real test Postgres through a TCP proxy owned by the test; cutting the
proxy (listener closed, open connections reset) is the outage. Nothing in the database layer is
mocked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests
from django.conf import settings
from rest_framework.authtoken.models import Token

from tests.processes import free_port, start_web

pytestmark = pytest.mark.django_db(transaction=True)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` makes the target unreachable."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and reset every open connection."""
        if self.listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would not
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxied_server(tmp_path):
    """A gunicorn server whose database is the test database behind a `TcpProxy`."""
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("needs Postgres (DATABASE_URL)")
    proxy = TcpProxy((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    proxy.start()
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    env = {**os.environ,
           "DATABASE_URL": f"postgres://{auth}@127.0.0.1:{proxy.port}/{db['NAME']}",
           "DATABASE_CONNECT_TIMEOUT": "2", "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "KUBEFUNCTION_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE, "DJANGO_DEBUG": "false"}
    try:
        # One process: the outage and the recovery are seen by the same server process.
        process, base = start_web(env, tmp_path / "gunicorn.log", "--workers", "1")
    except RuntimeError as exc:
        proxy.cut()
        pytest.fail(str(exc))
    try:
        yield base, proxy
    finally:
        stop_group(process)
        proxy.cut()


def stop_group(process: subprocess.Popen) -> None:
    """Stop the process group: gunicorn's master and its worker."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_api_answers_503_json_while_the_database_is_away(proxied_server, user):
    base, proxy = proxied_server
    token = Token.objects.create(user=user).key
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"

    assert api.get(f"{base}/api/functions/", timeout=10).status_code == 200
    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "broker", "runtime", "sandbox"}

    proxy.cut()
    started = time.monotonic()
    response = api.get(f"{base}/api/functions/", timeout=10)
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 5  # refused at once, no hanging

    login = requests.post(f"{base}/api/auth/token/", timeout=10,
                          data={"username": "alice", "password": "alice-password-1"})
    assert (login.status_code, login.json()["code"]) == (503, "database_unavailable")
    webhook = requests.post(f"{base}/t/some-trigger", json={"a": 1}, timeout=10)
    assert webhook.status_code == 503, webhook.text
    assert webhook.json()["code"] == "database_unavailable"

    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["database"]
    assert ready.json()["checks"]["broker"]["ok"] is True
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200

    admin = requests.get(f"{base}/admin/", cookies={"sessionid": "x" * 32}, timeout=10,
                         allow_redirects=False)
    assert admin.status_code == 503
    assert admin.headers["Content-Type"].startswith("text/html")
    assert "database is unavailable" in admin.text

    proxy.start()  # the database is back: the same server process recovers
    response = api.get(f"{base}/api/functions/", timeout=10)
    assert response.status_code == 200, response.text
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200


def test_readyz_names_a_failing_broker_and_can_be_limited(client, monkeypatch):
    from kubefunction.celery import app

    dead = "redis://:secret-pass@127.0.0.1:1/0"  # nothing listens on port 1
    saved = app.conf.broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", dead)  # Celery reads it before its configuration
    app.conf.broker_url = dead
    app._pool = None
    try:
        response = client.get("/readyz")
        assert response.status_code == 503, response.content
        body = response.json()
        assert body["failing"] == ["broker"]
        assert body["checks"]["database"]["ok"] is True
        assert "secret-pass" not in response.content.decode()  # no password in the detail
        assert client.get("/readyz?check=database").status_code == 200
        assert client.get("/readyz?check=worker").status_code == 400
    finally:
        app.conf.broker_url = saved
        app._pool = None
