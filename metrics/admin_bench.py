"""Timing of the admin's pages over a big executions table (default 100,000 rows)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from functions.models import Function
from functions.services import function_register
from kubefunction.stats import percentile
from triggers.models import Trigger
from triggers.services import trigger_create

from . import rollup
from .models import ExecutionRollup, LatencyRollup

NAME = "bench-admin"
STATUSES = [ExecutionStatus.SUCCEEDED] * 8 + [ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT]


def _fixture() -> tuple[Function, Trigger]:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    function = Function.objects.filter(name=NAME).first() or function_register(
        name=NAME, owner=user, filename="bench.py",
        data=b"def handle(event):\n    return event\n").function
    trigger = Trigger.objects.filter(name=NAME).first() or trigger_create(
        name=NAME, function=function, user=user)
    return function, trigger


def fill(rows: int, batch: int = 5000) -> tuple[Function, int]:
    """Make the bench function hold at least `rows` finished executions; returns it and how
    many rows were added."""
    function, trigger = _fixture()
    missing = added = max(0, rows - function.executions.count())
    now = timezone.now()
    while missing > 0:
        size = min(batch, missing)
        Execution.objects.bulk_create([
            Execution(task_id=str(uuid.uuid4()), function=function,
                      version_id=function.active_version_id, trigger=trigger, input={"i": i},
                      output={"i": i}, status=STATUSES[i % len(STATUSES)], runtime="local",
                      cold=i % 7 == 0, dispatched_at=now - timedelta(seconds=i + missing),
                      started_at=now, finished_at=now, logs="x" * 200)
            for i in range(size)])
        missing -= size
    if connection.vendor == "postgresql":
        # What autovacuum does to a live table: statistics, and the visibility map that lets the
        # dashboard's window scans stay index-only.
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Execution._meta.db_table}")
    return function, added


def top_up(function: Function, *, limit: timedelta = timedelta(days=1)) -> datetime | None:
    """Executions at one per second from the newest one to now (at most `limit` of them), with
    realistic timings: a live table's last minutes, which the rollup has not reached yet.
    Returns the oldest `dispatched_at` added (None: nothing added)."""
    trigger = Trigger.objects.get(name=NAME)
    now = timezone.now()
    newest = function.executions.order_by("-dispatched_at").values_list(
        "dispatched_at", flat=True).first() or now - limit
    first = max(newest, now - limit) + timedelta(seconds=1)
    rows = []
    for i in range(int((now - first).total_seconds()) + 1):
        dispatched = first + timedelta(seconds=i)
        started = dispatched + timedelta(milliseconds=5 + i % 25)
        cold = i % 7 == 0
        rows.append(Execution(
            task_id=str(uuid.uuid4()), function=function, version_id=function.active_version_id,
            trigger=trigger, input={"i": i}, output={"i": i}, status=STATUSES[i % len(STATUSES)],
            runtime="local", cold=cold, init_seconds=0.05 + (i % 11) / 100 if cold else None,
            cpu_seconds=0.01, dispatched_at=dispatched, started_at=started,
            finished_at=started + timedelta(milliseconds=20 + (i * 37) % 400), logs="x" * 200))
    Execution.objects.bulk_create(rows, batch_size=5000)
    return first if rows else None


def roll(*, rebuild: bool) -> tuple[float, rollup.RollResult]:
    """Rebuild (or advance) the rollup tables as the beat task would; seconds it took."""
    started = time.perf_counter()
    result = rollup.rollup_rebuild() if rebuild else rollup.rollup_advance()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for model in (ExecutionRollup, LatencyRollup):
                cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    return time.perf_counter() - started, result


def time_pages(function: Function, repeats: int = 5) -> list[tuple[str, float]]:
    """p50 seconds to render each admin page, as a logged-in superuser."""
    admin, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(admin)
    some = function.executions.order_by("-dispatched_at").first()
    changelist = reverse("admin:executions_execution_changelist")
    pages = {
        "admin index (dashboard, 24h)": reverse("admin:index"),
        "admin index (dashboard, 1h)": reverse("admin:index") + "?window=1h",
        "admin index (dashboard, 7d)": reverse("admin:index") + "?window=7d",
        "executions": changelist,
        "executions, status=failed": changelist + "?status__exact=failed",
        "executions, by function": changelist + f"?function__id__exact={function.pk}",
        "executions, page 100": changelist + "?p=100",
        "executions, search task id": changelist + f"?q={some.task_id}",
        "execution detail": reverse("admin:executions_execution_change", args=[some.pk]),
        "function page (charts, 24h)": reverse("admin:functions_function_change",
                                               args=[function.pk]),
        "function page (charts, 7d)": reverse("admin:functions_function_change",
                                              args=[function.pk]) + "?window=7d",
        "prometheus /metrics": reverse("metrics"),
        "functions": reverse("admin:functions_function_changelist"),
    }
    figures = []
    for name, url in pages.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            # The exposition is timed, not its token check.
            with override_settings(KUBEFUNCTION_METRICS_PUBLIC=True):
                response = client.get(url)
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")
        figures.append((name, percentile(times, 0.5)))
    return figures
