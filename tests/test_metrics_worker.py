"""Through a real Celery worker: /metrics after a dispatch burst, and `manage.py loadtest`."""

from __future__ import annotations

import csv
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from executions.models import FINISHED_STATUSES, Execution
from executions.services import execution_dispatch_many
from functions import services
from metrics.models import ExecutionRollup, LoadTestRun
from metrics.rollup import rollup_advance
from triggers.services import trigger_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

SOURCE = (b"def handle(event, context):\n"
          b"    if event.get('fail'):\n"
          b"        raise ValueError('asked to fail')\n"
          b"    return event\n")


@pytest.fixture
def trigger(admin_user, celery_worker_process):
    function = services.function_register(name="metered", owner=admin_user, filename="m.py",
                                          data=SOURCE, runtime="local").function
    return trigger_create(name="metered", function=function)


def wait_all(ids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Execution.objects.filter(pk__in=ids, status__in=FINISHED_STATUSES).count() == len(ids):
            return
        time.sleep(0.05)
    pytest.fail("the burst did not finish")


@pytest.mark.parametrize("rolled", [False, True], ids=["raw", "rolled-up-mid-burst"])
def test_metrics_counters_match_the_table_after_a_burst(client, trigger, rolled, settings):
    settings.KUBEFUNCTION_METRICS_PUBLIC = True
    payloads = [{"i": i, "fail": i % 5 == 0} for i in range(40)]
    executions = execution_dispatch_many(trigger=trigger, payloads=payloads)
    later = timezone.now() + timedelta(minutes=5)  # past the rollup's lag: all may be rolled
    if rolled:
        rollup_advance(now=later)  # while the burst runs: stops at the oldest unfinished one
    wait_all([e.pk for e in executions])
    if rolled:
        assert rollup_advance(now=later).rolled_until > executions[0].dispatched_at
        assert ExecutionRollup.objects.filter(function_id=trigger.function_id).exists()
    text = client.get("/metrics").content.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    scraped = {s.labels["status"]: s.value for s in families["kubefunction_invocations"].samples
               if s.name == "kubefunction_invocations_total"
               and s.labels["function"] == "metered"}
    table = {}
    for status in Execution.objects.filter(function__name="metered").values_list("status",
                                                                                flat=True):
        table[status] = table.get(status, 0) + 1
    assert scraped == table == {"succeeded": 32, "failed": 8}
    count = [s.value for s in families["kubefunction_execution_total_seconds"].samples
             if s.name.endswith("_count") and s.labels["function"] == "metered"]
    assert count == [40]
    cold = [s.value for s in families["kubefunction_cold_starts"].samples
            if s.labels["function"] == "metered"]
    assert cold[0] == Execution.objects.filter(function__name="metered", cold=True).count()
    starts = [s.value for s in families["kubefunction_cold_start_seconds"].samples
              if s.name.endswith("_count") and s.labels["function"] == "metered"]
    assert starts == [Execution.objects.filter(function__name="metered", init_seconds__gt=0)
                      .count()] and starts[0] >= 1
    assert "kubefunction_celery_queue_length" in families


def test_loadtest_prints_the_table_and_stores_the_run(admin_client, trigger, tmp_path):
    out = StringIO()
    call_command("loadtest", "metered", "--concurrency", "1,2,4",
                 "--payload", '{"x": 1}', "--out", str(tmp_path), stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert "concurrency" in text and "p95" in text and "CPU" in text and "floor p50" in text
    assert "warm-up: 4 requests at concurrency 4" in text
    run = LoadTestRun.objects.get()
    assert [lv["concurrency"] for lv in run.levels] == [1, 2, 4]
    # By default enough requests for percentiles at every level, after a warm-up kept apart.
    assert all(lv["requests"] == 50 and lv["errors"] == 0 for lv in run.levels)
    assert all(0 < lv["p50"] <= lv["p95"] <= lv["max"] < 30 for lv in run.levels)
    assert (run.warmup["concurrency"], run.warmup["requests"]) == (4, 4)
    # The Celery floor at the same concurrency beside each level.
    assert all(0 < lv["floor_p50"] <= lv["floor_p95"] < 30 and lv["floor_throughput"] > 0
               for lv in run.levels)
    rows = list(csv.DictReader(Path(run.csv_path).open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 2, 4]
    svg = Path(run.csv_path).with_suffix(".svg").read_text()
    assert svg.count('<circle class="kf-point"') == 3 * 3  # p50/p95/max at each level
    assert "Machine CPU utilisation" in svg and "CPU %" in svg
    page = admin_client.get(reverse("admin:metrics_loadtestrun_change", args=[run.pk]))
    assert page.status_code == 200 and b"loadtest-latency" in page.content
    assert b"Celery floor p50" in page.content
    assert Execution.objects.filter(function__name="metered").count() == 4 + 3 * 50
    call_command("loadtest", "metered", "--concurrency", "2", "--requests", "3", "--warmup",
                 "0", "--no-floor", "--out", str(tmp_path), stdout=StringIO(),
                 stderr=StringIO())
    run = LoadTestRun.objects.first()
    assert run.warmup is None and run.levels[0]["requests"] == 3
    assert run.levels[0]["floor_p50"] is None
