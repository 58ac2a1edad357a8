"""The web server (`make up`'s Procfile command: gunicorn + uvicorn workers, kubefunction/asgi.py):
waiting requests are async and hold no thread, so a thousand of them do not starve the admin and
the probes.

The load test (`-m load`, about a minute) runs the real server and a real worker: 1,000 clients
wait on a webhook whose function sleeps 5 s while /healthz and an admin page are timed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import connection
from django.test import Client
from django.urls import resolve

from executions.models import Execution
from executions.waiters import execution_wait_async
from functions.services import function_register
from kubefunction.asgi import SyncThread
from kubefunction.celery import app as celery_app
from tests.processes import ROOT, celery_env, start_web, start_worker, stop
from tests.test_waiters import listening, running  # noqa: F401, F811 (fixtures)
from triggers.services import trigger_create

WAITERS = 1000
SLEEP = 5
# How long each waiter waits (`Prefer: wait=N`): the few the worker runs in time answer 200, the
# others 504 with their task id (docs/triggers.md).
WAIT = 15
# p95 of /healthz and the admin page while the waiters wait: at most this much above the same
# pages' p95 on the same server just before (a slow or busy machine's own floor is not the
# waiters' doing; a server starved by them answers seconds late).
LATENCY_GOAL = 0.100


def test_every_middleware_runs_async(caplog, settings):
    """Django adapts a middleware that cannot run async (and says so at DEBUG, with DEBUG on):
    the chain below it, the waits included, would run in a sync thread."""
    settings.DEBUG = True
    with caplog.at_level(logging.DEBUG, logger="django.request"):
        ASGIHandler()
    adapted = [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]
    assert adapted == []


@pytest.mark.parametrize("path", ["/t/hook", "/api/triggers/t/dispatch/",
                                  "/api/executions/abc/", "/healthz"])
def test_the_waiting_views_are_async(path):
    assert asyncio.iscoroutinefunction(resolve(path).func), path


def test_sync_work_runs_on_a_fixed_set_of_threads():
    """Each process's sync work runs on KUBEFUNCTION_WEB_THREADS threads, least busy first."""
    from kubefunction.asgi import application

    assert len(application.threads) == settings.KUBEFUNCTION_WEB_THREADS
    busy = application.threads[0]
    busy.submit(time.sleep, 0.2)
    assert application.least_busy() is not busy
    assert wait_idle(busy)


@pytest.mark.django_db(transaction=True)
def test_the_server_serves_the_collected_static_files_with_debug_off(tmp_path):
    """What `make up` does: collectstatic, then the Procfile's server, DEBUG off; the admin's
    pages link their CSS under STATIC_URL and WhiteNoise serves it, async."""
    env = celery_env(KUBEFUNCTION_VAR_DIR=str(tmp_path), DJANGO_DEBUG="false")
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT,
                   env=env, check=True, timeout=120)
    server, base = start_web(env, tmp_path / "web.log", "--workers", "1")
    try:
        page = requests.get(f"{base}/admin/login/", timeout=10)
        [css] = re.findall(r'href="(/static/admin/css/base\.css)"', page.text)
        response = requests.get(base + css, timeout=10)
        missing = requests.get(f"{base}/static/admin/css/no-such.css", timeout=10)
    finally:
        stop(server)
    assert page.status_code == 200
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/css")
    assert response.content == (tmp_path / "static/admin/css/base.css").read_bytes()
    assert missing.status_code == 404
    assert "Warning" not in (tmp_path / "web.log").read_text()  # no sync iterator adapted


ECHO = b"def handle(event):\n    return event\n"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_waits_through_the_server(user, celery_worker_process, tmp_path):
    """The async paths under the real server: a webhook and the API's ?wait= answer with the
    outcome; a ?wait= that runs out answers as without one (202, the execution not done)."""
    from rest_framework.authtoken.models import Token

    version = function_register(name="echo", owner=user, filename="echo.py", data=ECHO)
    hook = trigger_create(name="echo-hook", function=version.function, user=user, kind="http")
    trigger_create(name="echo", function=version.function, user=user)
    slow = function_register(name="slow", owner=user, filename="slow.py",
                             data=SLEEPER.replace(f"sleep({SLEEP})".encode(), b"sleep(2)"))
    trigger_create(name="slow", function=slow.function, user=user)
    api = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    server, base = start_web(celery_env(DJANGO_DEBUG="false"), tmp_path / "web.log",
                             "--workers", "1")
    try:
        webhook = requests.post(f"{base}/t/echo-hook", json={"a": 1}, timeout=30,
                                headers={"X-KubeFunction-Token": hook.token})
        waited = requests.post(f"{base}/api/triggers/echo/dispatch/?wait=20", timeout=30,
                               json={"payload": {"b": 2}}, headers=api)
        task_id = waited.json()["task_id"]
        again = requests.get(f"{base}/api/executions/{task_id}/?wait=5", headers=api, timeout=30)
        bad = requests.post(f"{base}/api/triggers/echo/dispatch/?wait=x", json={}, headers=api,
                            timeout=30)
        late = requests.post(f"{base}/api/triggers/slow/dispatch/?wait=0.5", timeout=30,
                             json={"payload": {"n": 0}}, headers=api)
    finally:
        stop(server)
    assert (webhook.status_code, webhook.json()) == (200, {"a": 1})
    assert waited.status_code == 200 and waited.json()["output"] == {"b": 2}
    assert again.status_code == 200 and again.json()["status"] == "succeeded"
    assert bad.status_code == 400 and "wait" in bad.json()
    assert late.status_code == 202 and late.json()["status"] in ("queued", "running")


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("release", [False, True])
def test_a_wait_on_a_web_thread_keeps_its_connection(release, running, listening,  # noqa: F811
                                                      settings):
    """The web server's waits (release=False) leave the connection of the thread their reads
    run in to the requests that share it; other waits close theirs after a moment."""
    settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS = 30
    execution = running()
    web_thread = SyncThread(0)

    async def wait() -> tuple[int, int]:
        async with ThreadSensitiveContext(executor=web_thread):
            before = await sync_to_async(backend_pid)()
            await execution_wait_async(execution=execution, timeout=0.3, release=release)
            return before, await sync_to_async(backend_pid)()

    try:
        before, after = asyncio.run(wait())
    finally:
        web_thread.submit(lambda: connection.close()).result()  # looked up in that thread
        web_thread.shutdown()
    assert (before == after) is not release


def wait_idle(thread) -> bool:
    deadline = time.monotonic() + 5
    while thread.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread.pending == 0


# --- a thousand waiting webhooks ----------------------------------------------------------------

SLEEPER = f"""
import time

def handle(event, context):
    time.sleep({SLEEP})
    return {{"n": event["n"]}}
""".encode()


def percentile95(samples: list[float]) -> float:
    return sorted(samples)[int(0.95 * (len(samples) - 1))]


async def post(port: int, path: str, body: bytes,
               headers: dict[str, str]) -> tuple[int, str, dict]:
    """One POST on its own connection; (status, task id header, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
        "Content-Length": len(body), "Connection": "close", **headers}.items())
    writer.write(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
    raw = await reader.read()
    writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), fields.get("x-kubefunction-task-id", ""), json.loads(
        content or b"null")


def call_all(port: int, token: str, answers: dict) -> None:
    """Each caller n posts {"n": n} and keeps its answer in `answers[n]`."""
    async def call(n: int) -> None:
        try:
            answers[n] = await post(port, "/t/sleeper", json.dumps({"n": n}).encode(),
                                    {"X-KubeFunction-Token": token, "Prefer": f"wait={WAIT}"})
        except OSError as exc:
            answers[n] = exc

    async def main():
        await asyncio.gather(*(call(n) for n in range(WAITERS)))
    asyncio.run(main())


def time_requests(session: requests.Session, url: str, until: float) -> list[float]:
    samples = []
    while time.monotonic() < until:
        started = time.perf_counter()
        response = session.get(url, timeout=10)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        time.sleep(0.02)
    return samples


def time_pages(base: str, browser: Client, seconds: float, meanwhile=None) -> dict:
    """Response times of /healthz and of the admin's function list (as `browser`'s logged-in
    user), requested side by side for `seconds`; `meanwhile()` runs while they are timed."""
    until = time.monotonic() + seconds
    admin_page = requests.Session()
    admin_page.cookies.set(settings.SESSION_COOKIE_NAME,
                           browser.cookies[settings.SESSION_COOKIE_NAME].value)
    timed: dict[str, list[float]] = {}
    timers = [threading.Thread(target=lambda name, s, url: timed.__setitem__(
        name, time_requests(s, url, until)), args=args) for args in (
        ("healthz", requests.Session(), f"{base}/healthz"),
        ("admin", admin_page, f"{base}/admin/functions/function/"))]
    for timer in timers:
        timer.start()
    if meanwhile is not None:
        meanwhile()
    for timer in timers:
        timer.join()
    return timed


def server_usage(server) -> tuple[int, int]:
    """(threads, Postgres connections) of the busiest of the server's worker processes."""
    port = int(settings.DATABASES["default"]["PORT"] or 5432)
    usage = []
    for process in psutil.Process(server.pid).children(recursive=True):
        connections = [c for c in process.net_connections("tcp")
                       if c.raddr and c.raddr.port == port]
        usage.append((process.num_threads(), len(connections)))
    return max(usage)


@pytest.fixture
def open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * WAITERS))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.load
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_a_thousand_waiting_webhooks_do_not_starve_the_admin(django_user_model, tmp_path,
                                                              open_files):
    admin = django_user_model.objects.create_superuser("root", password="root-password-1")
    version = function_register(name="sleeper", owner=admin, filename="sleeper.py", data=SLEEPER)
    trigger = trigger_create(name="sleeper", function=version.function, user=admin, kind="http")
    browser = Client()
    browser.force_login(admin)
    queue = f"load-{time.monotonic_ns()}"  # private: what is left queued is purged at the end
    # The defaults of `make up` (the safety net for a lost notification is one query per server
    # process, however many wait: executions/notifications.py), the dispatch rate limit aside.
    env = celery_env(KUBEFUNCTION_QUEUE=queue, KUBEFUNCTION_DISPATCH_RATE="",
                     DJANGO_DEBUG="false")
    worker = start_worker(f"load-{time.monotonic_ns()}@localhost", tmp_path / "worker.log", env,
                          concurrency=4, queue=queue)
    server, base = start_web(env, tmp_path / "web.log")
    try:
        port = int(base.rsplit(":", 1)[1])
        quiet = time_pages(base, browser, seconds=3)  # the floor: the same pages, no waiters
        answers: dict = {}
        callers = threading.Thread(target=call_all, args=(port, trigger.token, answers))
        callers.start()
        # Timed once every call is dispatched and waiting, until the first 504s come back.
        deadline = time.monotonic() + 60
        while Execution.objects.count() < WAITERS:
            assert time.monotonic() < deadline and callers.is_alive(), (
                f"{Execution.objects.count()} of {WAITERS} dispatched")
            time.sleep(0.1)
        usage: list = []
        timed = time_pages(base, browser, seconds=6,
                           meanwhile=lambda: usage.extend(server_usage(server)))
        threads, connections = usage
        callers.join(timeout=WAIT + 60)
        assert not callers.is_alive()
    finally:
        stop(server)
        stop(worker)
        with celery_app.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)

    p95 = {name: percentile95(samples) for name, samples in timed.items()}
    floor = {name: percentile95(samples) for name, samples in quiet.items()}
    print(f"while {WAITERS} waited: p95 {p95} (quiet: {floor}; goal: under the quiet p95 + "
          f"{LATENCY_GOAL * 1000:.0f} ms), samples {[len(s) for s in timed.values()]}, "
          f"busiest process: {threads} threads, {connections} database connections")
    for name in ("healthz", "admin"):
        assert p95[name] < floor[name] + LATENCY_GOAL, (name, p95, floor)
    # The waits hold neither a thread nor a database connection each.
    assert threads < 100 and connections <= settings.KUBEFUNCTION_WEB_THREADS + 2

    # Every caller got its answer: its own output, or 504 with the task id and result URL of
    # its execution; nothing lost: one execution per call, with the caller's event.
    assert sorted(answers) == list(range(WAITERS))
    assert [a for a in answers.values() if isinstance(a, BaseException)] == []
    statuses = [status for status, _, _ in answers.values()]
    assert set(statuses) <= {200, 504}, statuses
    assert 200 in statuses, "no waiter was answered with its function's output"
    executions = dict(Execution.objects.values_list("task_id", "input"))
    assert len(executions) == WAITERS
    for n, (status, task_id, body) in answers.items():
        assert executions[task_id] == {"n": n}
        if status == 200:
            assert body == {"n": n}
        else:
            assert body["task_id"] == task_id and body["result_url"].endswith(f"/{task_id}/")
