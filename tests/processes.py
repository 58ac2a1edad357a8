"""Real processes for tests: Celery workers and beat on the test database and the test queue,
and the web server as `make up` runs it (kubefunction/web_server.py).

Each runs in its own session (process group), so `stop` ends the process and its children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from kubefunction.celery import app as celery_app
from kubefunction.web_server import free_port, procfile_command, stop
from kubefunction.web_server import start as start_web

__all__ = ["ROOT", "celery_env", "free_port", "procfile_command", "start_beat", "start_web",
           "start_worker", "stop", "worker_database_url"]

ROOT = Path(__file__).resolve().parent.parent


def worker_database_url() -> str:
    """The URL of the database the tests run on (the test database pytest-django made)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def celery_env(**extra: str) -> dict[str, str]:
    """The environment of a Celery process on the test database, broker and queue."""
    return {**os.environ, "DATABASE_URL": worker_database_url(),
            "CELERY_BROKER_URL": celery_app.conf.broker_url,
            "KUBEFUNCTION_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE, **extra}


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "kubefunction", *args],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    process.log_path = log_path
    return process


def start_worker(name: str, log_path: Path, env: dict[str, str] | None = None, *,
                 concurrency: int = 2, queue: str | None = None, extra_args: tuple = (),
                 wait: bool = True, timeout: float = 60) -> subprocess.Popen:
    """A prefork worker named `name` (with more command-line `extra_args`), returned once it
    answers a ping (at once with `wait=False`, e.g. on a broker this process does not use)."""
    queue = queue or settings.CELERY_TASK_DEFAULT_QUEUE
    process = _spawn(["worker", "--pool=prefork", f"--concurrency={concurrency}",
                      f"--queues={queue}", "--loglevel=INFO", f"--hostname={name}",
                      "--without-gossip", "--without-mingle", *extra_args],
                     env or celery_env(), log_path)
    process.hostname = name
    deadline = time.monotonic() + timeout
    while wait and not celery_app.control.ping(destination=[name], timeout=1):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the Celery worker {name} did not start:\n"
                               f"{log_path.read_text()[-4000:]}")
    return process


def start_beat(log_path: Path, env: dict[str, str] | None = None, *,
               max_interval: float = 1) -> subprocess.Popen:
    """`celery beat` with the database scheduler, checking its schedule every `max_interval` s."""
    return _spawn(["beat", "--loglevel=INFO", "-S",
                   "django_celery_beat.schedulers:DatabaseScheduler",
                   "--max-interval", str(max_interval)], env or celery_env(), log_path)
