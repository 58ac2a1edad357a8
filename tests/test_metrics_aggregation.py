"""Aggregation (Postgres and the Python fallback) against the rows themselves, the rollup tables
against the raw table, the dashboard pages and the Prometheus exposition over a known table."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from executions.models import Execution, ExecutionStatus
from functions import services
from kubefunction.stats import floor_table, percentile, save_report
from metrics import histogram, rollup, selectors
from metrics.charts import nice_max
from metrics.models import ExecutionRollup, LatencyRollup
from triggers.services import trigger_create

pytestmark = pytest.mark.django_db

SOURCE = b"def handle(event, context):\n    return event\n"
STATUSES = [ExecutionStatus.SUCCEEDED] * 6 + [ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT,
                                               ExecutionStatus.QUEUED, ExecutionStatus.RUNNING]


def make_function(owner, name):
    function = services.function_register(name=name, owner=owner, filename="f.py",
                                          data=SOURCE).function
    return function, trigger_create(name=name, function=function)


def fill(function, trigger, count, *, now, step=37):
    """`count` executions spread over the last hours, with varied timings and outcomes."""
    rows = []
    for i in range(count):
        status = STATUSES[i % len(STATUSES)]
        dispatched = now - timedelta(seconds=step * i + 1)
        started = dispatched + timedelta(milliseconds=3 + i % 11) \
            if status != ExecutionStatus.QUEUED else None
        finished = started + timedelta(milliseconds=10 + (i * 7) % 400) \
            if started and status != ExecutionStatus.RUNNING else None
        rows.append(Execution(
            task_id=str(uuid.uuid4()), function=function, version_id=function.active_version_id,
            trigger=trigger, status=status, runtime="local",
            cold=None if finished is None else i % 4 == 0,
            init_seconds=0.02 + 0.013 * (i % 9) if finished and i % 4 == 0 else None,
            cpu_seconds=None if finished is None else 0.001 * (i % 13),
            dispatched_at=dispatched, started_at=started, finished_at=finished))
    Execution.objects.bulk_create(rows)
    return rows


@pytest.fixture
def table(admin_user):
    now = timezone.now()
    a, ta = make_function(admin_user, "alpha")
    b, tb = make_function(admin_user, "beta")
    rows_a = fill(a, ta, 300, now=now)
    rows_b = fill(b, tb, 120, now=now, step=91)
    return {"now": now, "a": a, "b": b, "ta": ta, "rows_a": rows_a, "rows_b": rows_b}


def expected(rows, since, until):
    rows = [r for r in rows if since <= r.dispatched_at < until]
    totals = [r.total_seconds for r in rows if r.total_seconds is not None]
    runs = [r.run_seconds for r in rows if r.run_seconds is not None]
    queues = [r.queue_seconds for r in rows if r.queue_seconds is not None]
    inits = [r.init_seconds for r in rows if r.init_seconds is not None]
    finished = [r for r in rows if r.is_finished]
    return {
        "invocations": len(rows),
        "succeeded": sum(r.status == ExecutionStatus.SUCCEEDED for r in rows),
        "failed": sum(r.status == ExecutionStatus.FAILED for r in rows),
        "timed_out": sum(r.status == ExecutionStatus.TIMED_OUT for r in rows),
        "queued": sum(r.status == ExecutionStatus.QUEUED for r in rows),
        "cold": sum(r.cold is True for r in rows), "warm": sum(r.cold is False for r in rows),
        "cpu": sum(r.cpu_seconds or 0 for r in rows), "finished": len(finished),
        "p": {"total": totals, "run": runs, "queue": queues, "init": inits},
    }


def check(summary, want):
    assert summary.invocations == want["invocations"]
    assert summary.succeeded == want["succeeded"]
    assert summary.failed == want["failed"]
    assert summary.timed_out == want["timed_out"]
    assert summary.queued == want["queued"]
    assert (summary.cold, summary.warm) == (want["cold"], want["warm"])
    assert summary.cpu_seconds == pytest.approx(want["cpu"])
    assert summary.finished == want["finished"]
    for duration, samples in want["p"].items():
        for fraction in selectors.FRACTIONS:
            assert summary.p(duration, fraction) == pytest.approx(
                percentile(samples, fraction), rel=histogram.ERROR_BOUND), (duration, fraction)


@pytest.fixture(params=[True, False], ids=["database", "python-fallback"])
def in_database(request, monkeypatch) -> bool:
    """A test twice: on the Postgres queries, then on the Python fallback (as on SQLite)."""
    if not request.param:
        monkeypatch.setattr(selectors, "_postgres", lambda: False)
        monkeypatch.setattr(rollup, "_postgres", lambda: False)
    return request.param


def test_summary_matches_the_rows(table, in_database):
    now = table["now"]
    scope = selectors.scope_for("6h", now=now)
    check(selectors.summary(scope), expected(table["rows_a"] + table["rows_b"], scope.since, now))
    one = selectors.scope_for("24h", function_id=table["a"].pk, now=now)
    summary = selectors.summary(one)
    check(summary, expected(table["rows_a"], one.since, now))
    assert summary.success_rate == pytest.approx(summary.succeeded / summary.finished)
    assert summary.cold_ratio == pytest.approx(summary.cold / (summary.cold + summary.warm))
    assert summary.throughput == pytest.approx(summary.invocations / 86400)
    by_trigger = selectors.summary(selectors.scope_for("24h", trigger_id=table["ta"].pk,
                                                       now=now))
    assert by_trigger.invocations == summary.invocations


def test_breakdown_and_timeseries(table, in_database):
    now = table["now"]
    scope = selectors.scope_for("24h", now=now)
    rows = selectors.breakdown(scope, by="function")
    assert [pk for pk, _ in rows] == [table["a"].pk, table["b"].pk]  # busiest first
    check(rows[1][1], expected(table["rows_b"], scope.since, now))
    assert [pk for pk, _ in selectors.breakdown(scope, by="trigger")] == [
        table["ta"].pk, table["b"].triggers.get().pk]

    buckets = selectors.timeseries(scope, width=3600)
    assert 24 <= len(buckets) <= 25
    assert all(b.start < c.start for b, c in zip(buckets, buckets[1:], strict=False))
    all_rows = table["rows_a"] + table["rows_b"]
    assert sum(b.invocations for b in buckets) == len(all_rows)
    assert sum(b.errors for b in buckets) == sum(
        r.status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT) for r in all_rows)
    busiest = max(buckets, key=lambda b: b.invocations)
    inside = [r.total_seconds for r in all_rows if r.total_seconds is not None
              and busiest.start <= r.dispatched_at < busiest.start + timedelta(hours=1)]
    assert busiest.total[0.95] == pytest.approx(percentile(inside, 0.95),
                                                rel=histogram.ERROR_BOUND)


def test_empty_window_has_no_percentiles(db):
    summary = selectors.summary(selectors.scope_for("1h"))
    assert summary.invocations == 0 and summary.p("total", 0.5) is None
    assert summary.success_rate is None and summary.cold_ratio is None


def test_nice_axis_maximum():
    assert [nice_max(v) for v in (0, 0.7, 3, 7, 130)] == [1.0, 1.0, 5, 10, 200]


def test_dashboard_pages_draw_charts(admin_client, table):
    index = admin_client.get(reverse("admin:index"))
    assert index.status_code == 200
    html = index.content.decode()
    for chart in ("platform-invocations", "platform-latency", "platform-cold", "platform-cpu"):
        assert f'id="{chart}"' in html
    assert html.count('class="kf-point"') > 20
    assert "seconds" in html and "Busiest functions" in html
    assert html.index("kf-dashboard") < html.index('id="content-main"')  # app list below
    assert "app-functions" in html
    page = admin_client.get(reverse("admin:functions_function_change", args=[table["a"].pk])
                            + "?window=6h")
    html = page.content.decode()
    assert page.status_code == 200
    assert f'id="function-{table["a"].pk}-latency"' in html and "last 6h" in html
    assert admin_client.get(reverse("admin:functions_function_add")).status_code == 200


def test_prometheus_counters_match_the_table(client, table, settings):
    settings.KUBEFUNCTION_METRICS_PUBLIC = True
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    counts = {}
    for sample in families["kubefunction_invocations"].samples:
        if sample.name == "kubefunction_invocations_total":
            counts[(sample.labels["function"], sample.labels["status"])] = sample.value
    for name, rows in (("alpha", table["rows_a"]), ("beta", table["rows_b"])):
        for status in ExecutionStatus:
            n = sum(r.status == status for r in rows)
            assert counts.get((name, status.value), 0) == n, (name, status)
    total = {s.labels["function"]: s.value for s in families["kubefunction_execution_total_seconds"]
             .samples if s.name.endswith("_count")}
    assert total["alpha"] == sum(r.total_seconds is not None for r in table["rows_a"])
    inf = [s for s in families["kubefunction_execution_run_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["function"] == "beta"]
    assert inf[-1].labels["le"] == "+Inf"
    assert [s.value for s in inf] == sorted(s.value for s in inf)  # cumulative
    cold = {s.labels["function"]: s.value for s in families["kubefunction_cold_starts"].samples}
    assert cold["alpha"] == sum(r.cold is True for r in table["rows_a"])
    queued = {s.labels["state"]: s.value
              for s in families["kubefunction_executions_in_progress"].samples}
    assert queued["queued"] == sum(r.status == ExecutionStatus.QUEUED
                                   for r in table["rows_a"] + table["rows_b"])
    assert "kubefunction_function_versions" in families


def test_metrics_token(client, settings, db):
    settings.KUBEFUNCTION_METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_overview_matches_the_other_selectors(table, in_database):
    scope = selectors.scope_for("24h", now=table["now"])
    view = selectors.overview(scope, width=3600)
    exact = selectors.summary(scope)
    assert view.summary.cpu_seconds == pytest.approx(exact.cpu_seconds)
    assert replace(view.summary, cpu_seconds=0) == replace(exact, cpu_seconds=0)
    series = selectors.timeseries(scope, width=3600)
    assert [(b.start, b.invocations, b.errors, b.cold, b.warm, b.total) for b in view.buckets] \
        == [(b.start, b.invocations, b.errors, b.cold, b.warm, b.total) for b in series]
    breakdown = dict(selectors.breakdown(scope))
    assert [pk for pk, _ in view.functions] == [table["a"].pk, table["b"].pk]
    for pk, got in view.functions:
        assert got.invocations == breakdown[pk].invocations
        assert got.p("total", 0.95) == breakdown[pk].p("total", 0.95)
    one = selectors.overview(selectors.scope_for("24h", function_id=table["b"].pk,
                                                 now=table["now"]), width=3600, functions=0)
    assert one.summary.invocations == len(table["rows_b"]) and one.functions == []


def figures(now, function_id):
    """Everything the dashboards and /metrics show, for comparing two states of the rollup."""
    out = []
    for window in selectors.WINDOWS:
        for pk in (None, function_id):
            view = selectors.overview(selectors.scope_for(window, function_id=pk, now=now),
                                      width=selectors.BUCKETS[window], functions=10)
            out.append((replace(view.summary, cpu_seconds=round(view.summary.cpu_seconds, 6)),
                        [(b.start, b.invocations, b.errors, b.cold, b.warm, b.total,
                          round(b.cpu_seconds, 6)) for b in view.buckets],
                        [(pk, s.invocations, s.failed, s.p("total", 0.95))
                         for pk, s in view.functions]))
    found = selectors.gather(None, None, group="function", sets=("group_kind",))
    out.append((sorted((c[:5] for c in found.counts), key=str),
                sorted(found.by_group_kind.items(), key=str)))
    return out


def rolled():
    return sorted(ExecutionRollup.objects.values_list(
        "width", "start", "function_id", "trigger_id", "status", "cold", "count")), sorted(
        LatencyRollup.objects.values_list("width", "start", "function_id", "kind", "bucket",
                                          "count"))


def test_the_rollup_answers_like_the_raw_table(table, in_database):
    now, alpha = table["now"], table["a"]
    raw = figures(now, alpha.pk)
    # Unfinished executions younger than STUCK_AFTER hold the watermark back: an hour ago.
    result = rollup.rollup_advance(now=now)
    oldest = min(r.dispatched_at for r in table["rows_a"] + table["rows_b"]
                 if r.status in rollup.UNFINISHED and r.dispatched_at >= now - rollup.STUCK_AFTER)
    assert result.rolled_until == rollup.floor_to(oldest, 60)
    assert ExecutionRollup.objects.filter(width=3600).exists()
    assert figures(now, alpha.pk) == raw
    before = rolled()
    assert rollup.rollup_advance(now=now).rolled_until == result.rolled_until  # idempotent
    assert rolled() == before

    # Two hours later every unfinished one counts as stuck: all is rolled, hours complete.
    later = rollup.rollup_advance(now=now + timedelta(hours=2))
    assert later.rolled_until > now
    plan = rollup.plan(now - timedelta(days=7), now)
    assert plan.hours and plan.minutes and plan.raw[0][1] - plan.raw[0][0] < timedelta(minutes=1)
    assert figures(now, alpha.pk) == raw

    # A stuck execution finishes: the next run recomputes its minute (and hour).
    stuck = next(r for r in table["rows_a"] if r.status == ExecutionStatus.QUEUED)
    Execution.objects.filter(pk=stuck.pk).update(
        status=ExecutionStatus.SUCCEEDED, started_at=stuck.dispatched_at,
        finished_at=stuck.dispatched_at + timedelta(seconds=1), cold=True)
    assert figures(now, alpha.pk) == raw  # until the next run: stale by design
    then = now + timedelta(hours=2, minutes=1)
    assert rollup.rollup_advance(now=then).reopened >= 1
    after = figures(now, alpha.pk)
    assert after != raw
    advanced = rolled()
    rollup.rollup_rebuild(now=then)
    assert rolled() == advanced
    rollup.RollupState.objects.all().delete()  # no watermark: everything read raw
    assert figures(now, alpha.pk) == after


def test_histogram_estimates_and_exact_prometheus_buckets():
    import random

    generator = random.Random(5)
    samples = [generator.lognormvariate(-3, 1.6) for _ in range(3000)] + [0.005, 0.01, 2.5]
    counts = histogram.merge({}, [(histogram.bucket_of(histogram.micros(v)), 1)
                                  for v in samples])
    for fraction in (0.01, 0.5, 0.9, 0.95, 0.99):
        assert histogram.estimate(counts, fraction) == pytest.approx(
            percentile(samples, fraction), rel=histogram.ERROR_BOUND)
    assert histogram.ERROR_BOUND < 0.05
    for le, n in histogram.prometheus_buckets(counts)[:-1]:
        assert n == sum(v <= float(le) for v in samples), le  # a value on a bound counts in it
    assert histogram.prometheus_buckets(counts)[-1] == ("+Inf", len(samples))
    assert histogram.estimate({}, 0.5) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_rollers_agree_with_one(table):
    """Rollers racing (beat overlapping a manual run) serialize on the state row's lock: the
    tables end as one run leaves them, with every execution counted once."""
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serializes writers itself (and answers 'database is locked')")
    then = table["now"] + timedelta(hours=2)
    errors = []

    def roll():
        try:
            rollup.rollup_advance(now=then)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=roll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    raced = rolled()
    assert sum(row[-1] for row in raced[0] if row[0] == rollup.HOUR) == \
        len(table["rows_a"]) + len(table["rows_b"])
    rollup.rollup_rebuild(now=then)
    assert rolled() == raced


def test_rollup_metrics_command(table):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("rollup_metrics", stdout=out)
    assert "rolled up until" in out.getvalue()
    first = rolled()
    assert first[0] and first[1]
    out = StringIO()
    call_command("rollup_metrics", "--rebuild", stdout=out)
    assert "rolled up until" in out.getvalue() and rolled()[0]


def test_dashboard_says_when_the_rollup_is_behind(admin_client, table):
    note = "The metrics rollup has not run yet"
    assert note in admin_client.get(reverse("admin:index")).content.decode()
    rollup.rollup_advance()
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert note not in html and "kf-rollup-note" not in html
    rollup.RollupState.objects.update(rolled_until=timezone.now() - timedelta(hours=3))
    assert "minutes behind" in admin_client.get(reverse("admin:index")).content.decode()


def test_generate_executions_refuses_bad_counts(admin_user):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--functions"):
        call_command("generate_executions", "--functions", "0")
    with pytest.raises(CommandError, match="--count"):
        call_command("generate_executions", "--count", "0")
    assert not Execution.objects.exists()


def test_benchmark_tables_show_ratios_to_the_floor_and_reports_are_saved(settings, tmp_path):
    lines = floor_table([("floor", 0.25), ("cold", 0.3), ("warm p50", 0.0005)], 0.25)
    assert lines[0].split() == ["time", "ratio", "to", "floor"]
    assert lines[1].split() == ["floor", "250.0", "ms", "1.00×"]
    assert lines[2].split() == ["cold", "300.0", "ms", "1.20×"]
    assert lines[3].split() == ["warm", "p50", "0.5", "ms", "0.002×"]
    settings.VAR_DIR = tmp_path
    report = save_report("bench-test", {"floor": 0.25})
    assert report.parent == tmp_path and report.name.startswith("bench-test-")
    assert report.read_text().strip().startswith("{") and '"floor": 0.25' in report.read_text()
