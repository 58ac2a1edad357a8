"""Checks of the platform's parts, for `manage.py doctor` and the `/readyz` probe.

Each check returns (ok, detail) and never raises. `/healthz` (liveness) touches nothing: the web
process answers. `/readyz` (readiness) runs the database, broker and runtime checks at once, each
bounded by a deadline, and never pings workers (a probe must stay fast).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import connection, connections
from django.http import HttpRequest, JsonResponse
from kombu.utils.url import maybe_sanitize_url

from executions.runtimes import get_runtime
from executions.runtimes.local import sandbox

from .celery import app

# Seconds /readyz waits for all its checks together; a check still running then counts as failed.
READINESS_TIMEOUT = 5.0
READINESS_CHECKS = ("database", "broker", "runtime", "sandbox")


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, f"{connection.vendor} ({settings.DATABASES['default'].get('NAME')})"
    except Exception as exc:
        return False, f"database unreachable: {exc}".strip()


def check_broker() -> tuple[bool, str]:
    url = maybe_sanitize_url(app.conf.broker_url)  # never show a password
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
    try:
        return get_runtime(settings.KUBEFUNCTION_RUNTIME).health()
    except Exception as exc:
        return False, f"runtime '{settings.KUBEFUNCTION_RUNTIME}': {exc}"


def check_sandbox() -> tuple[bool, str]:
    """The local runtime's mode: sandboxed, unsandboxed-trusted or refusing (non-staff users'
    functions). Refusing is not a failure: superusers' functions still run, and a probe must
    not take the web process out of service for it; the detail names the fix."""
    try:
        _, detail, _ = sandbox.state()
    except Exception as exc:
        return False, f"local runtime sandbox: {exc}"
    return True, f"local runtime: {detail}"


CHECKS = {"database": check_database, "broker": check_broker, "worker": check_worker,
          "runtime": check_runtime, "sandbox": check_sandbox}


def _in_own_thread(check) -> tuple[bool, str]:
    """Run a check in a pool thread and close the database connection that thread opened."""
    try:
        return check()
    finally:
        connections.close_all()


def readiness(names=READINESS_CHECKS, timeout: float = READINESS_TIMEOUT) -> dict[str, dict]:
    """{name: {"ok": bool, "detail": str}} for the named checks, run concurrently."""
    pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="readyz")
    futures = {name: pool.submit(_in_own_thread, CHECKS[name]) for name in names}
    results = {}
    for name, future in futures.items():
        try:
            ok, detail = future.result(timeout=timeout)
        except FutureTimeout:
            ok, detail = False, f"no answer within {timeout:g} s"
        results[name] = {"ok": ok, "detail": detail}
    pool.shutdown(wait=False, cancel_futures=True)  # a hung check must not hold the probe
    return results


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 with each check's detail, or 503 naming the failing ones.

    `?check=database` (repeatable) limits the checks, e.g. for a probe that must not take the
    web process out of service while only the broker is away.
    """
    names = request.GET.getlist("check") or list(READINESS_CHECKS)
    unknown = sorted(set(names) - set(READINESS_CHECKS))
    if unknown:
        return JsonResponse({"check": [f"unknown check(s) {', '.join(unknown)}; choose from "
                                       f"{', '.join(READINESS_CHECKS)}."]}, status=400)
    results = readiness(tuple(dict.fromkeys(names)))
    failing = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "unavailable" if failing else "ok", "checks": results}
    if failing:
        body["failing"] = failing
    response = JsonResponse(body, status=503 if failing else 200)
    response["Cache-Control"] = "no-store"
    return response
