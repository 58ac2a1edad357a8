"""Checks of the platform's parts, for `manage.py doctor` and readiness probes.

Each check returns (ok, detail) and never raises.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from .celery import app


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, f"{connection.vendor} ({settings.DATABASES['default'].get('NAME')})"
    except Exception as exc:
        return False, f"database unreachable: {exc}"


def check_broker() -> tuple[bool, str]:
    url = app.conf.broker_url
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return True, conn.as_uri()
    except Exception as exc:
        return False, f"broker {url} unreachable: {exc}"


def check_worker(timeout: float = 3.0) -> tuple[bool, str]:
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:
        return False, f"could not ping workers: {exc}"
    if not replies:
        return False, "no Celery worker answered a ping (start one: make worker)"
    names = sorted(name for reply in replies for name in reply)
    return True, f"{len(names)} worker(s): {', '.join(names)}"


def check_runtime() -> tuple[bool, str]:
    from executions.runtimes import get_runtime

    try:
        return get_runtime(settings.KUBEFUNCTION_RUNTIME).health()
    except Exception as exc:
        return False, f"runtime '{settings.KUBEFUNCTION_RUNTIME}': {exc}"


CHECKS = {"database": check_database, "broker": check_broker, "worker": check_worker,
          "runtime": check_runtime}
