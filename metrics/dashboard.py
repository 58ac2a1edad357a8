"""The dashboard's figures and charts for a scope: what the admin index and a function page show."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone
from django.utils.safestring import SafeString

from functions.models import Function

from . import histogram, rollup, selectors
from .charts import COLOURS, Series, chart
from .selectors import BUCKETS, DEFAULT_WINDOW, WINDOWS, Bucket, Overview, Summary

# Beat rolls up every minute and the watermark trails by the rollup's lag, or by an execution
# still running (up to an hour): past this, say so.
STALE_ROLLUP = timedelta(minutes=75)


@dataclass
class Figure:
    label: str
    value: str
    hint: str = ""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def headline(summary: Summary) -> list[Figure]:
    return [
        Figure("Invocations", f"{summary.invocations:,}",
               f"{summary.throughput * 60:.2f} per minute"),
        Figure("Success rate", _pct(summary.success_rate),
               f"{summary.succeeded:,} of {summary.finished:,} finished"),
        Figure("Errors", _pct(summary.error_rate), f"{summary.failed:,} failed"),
        Figure("Timeouts", _pct(summary.timeout_rate), f"{summary.timed_out:,} timed out"),
        Figure("Retrieval p50 / p95 / p99",
               " / ".join(_secs(summary.p("total", f)) for f in selectors.FRACTIONS),
               "dispatched → result stored"),
        Figure("Run p95", _secs(summary.p("run", 0.95)),
               f"queue wait p95 {_secs(summary.p('queue', 0.95))}"),
        Figure("Cold starts", _pct(summary.cold_ratio), f"{summary.cold:,} cold"),
        Figure("Cold-start time p50 / p95",
               " / ".join(_secs(summary.p("init", f)) for f in (0.5, 0.95)),
               "process/container start → handler imported"),
        Figure("CPU", f"{summary.cpu_seconds:,.1f} s",
               f"{summary.queued:,} queued, {summary.running:,} running, "
               f"{summary.cancelled:,} cancelled"),
    ]


def charts(buckets: list[Bucket], width: int, prefix: str) -> list[SafeString]:
    xs = [timezone.localtime(b.start) for b in buckets]
    step = f"per {width // 60} min" if width < 3600 else f"per {width // 3600} h"
    return [
        chart(title=f"Invocations and errors ({step})", xs=xs, unit="invocations",
              chart_id=f"{prefix}-invocations", series=[
                  Series("ok", [b.invocations - b.errors for b in buckets], COLOURS["ok"],
                         "bar"),
                  Series("errors + timeouts", [b.errors for b in buckets], COLOURS["error"],
                         "bar")]),
        chart(title="Retrieval time percentiles", xs=xs, unit="seconds",
              chart_id=f"{prefix}-latency", series=[
                  Series(f"p{int(f * 100)}", [b.total.get(f) for b in buckets],
                         COLOURS[f"p{int(f * 100)}"]) for f in selectors.FRACTIONS]),
        chart(title=f"Cold vs warm starts ({step})", xs=xs, unit="invocations",
              chart_id=f"{prefix}-cold", series=[
                  Series("cold", [b.cold for b in buckets], COLOURS["cold"], "bar"),
                  Series("warm", [b.warm for b in buckets], COLOURS["warm"], "bar")]),
        chart(title=f"CPU time used ({step})", xs=xs, unit="CPU seconds",
              chart_id=f"{prefix}-cpu", series=[
                  Series("CPU seconds", [b.cpu_seconds for b in buckets], COLOURS["cpu"],
                         "bar")]),
    ]


def window_of(request) -> str:
    window = request.GET.get("window", DEFAULT_WINDOW) if request is not None else DEFAULT_WINDOW
    return window if window in WINDOWS else DEFAULT_WINDOW


def rollup_note() -> str:
    """A word for the operator when the rollup is behind (beat not running): pages get slow."""
    watermark = rollup.rolled_until()
    if watermark is None:
        return ("The metrics rollup has not run yet: these figures are read from the executions "
                "themselves, which is slow on a big table. Run beat (task metrics.rollup) or "
                "manage.py rollup_metrics.")
    behind = timezone.now() - watermark
    if behind > STALE_ROLLUP:
        return (f"The metrics rollup is {int(behind.total_seconds() // 60)} minutes behind (is "
                "beat running?): the figures are right, but read more slowly.")
    return ""


def _context(window: str, view: Overview, prefix: str) -> dict:
    return {"window": window, "windows": list(WINDOWS), "figures": headline(view.summary),
            "rollup_note": rollup_note(),
            "charts": charts(view.buckets, BUCKETS[window], prefix),
            "error_bound": f"{math.ceil(histogram.ERROR_BOUND * 1000) / 10:.1f} %"}


def platform_context(request) -> dict:
    window = window_of(request)
    view = selectors.overview(selectors.scope_for(window), width=BUCKETS[window], functions=10)
    names = dict(Function.objects.filter(pk__in=[pk for pk, _ in view.functions])
                 .values_list("pk", "name"))
    return {
        **_context(window, view, "platform"),
        "functions": [{"pk": pk, "name": names.get(pk, pk), "invocations": s.invocations,
                       "error_rate": _pct(None if s.finished == 0 else
                                          (s.failed + s.timed_out) / s.finished),
                       "p95": _secs(s.p("total", 0.95)), "cold": _pct(s.cold_ratio),
                       "cpu": f"{s.cpu_seconds:,.1f} s"} for pk, s in view.functions],
    }


def function_context(request, function_id: int) -> dict:
    window = window_of(request)
    scope = selectors.scope_for(window, function_id=function_id)
    view = selectors.overview(scope, width=BUCKETS[window], functions=0)
    return _context(window, view, f"function-{function_id}")
