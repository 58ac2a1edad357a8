"""Prometheus exposition of the executions table, computed at scrape time.

A custom Collector reads the table on every scrape instead of counting in process memory, so every
web process answers the same numbers, and they match the table (the system of record) exactly.
Counters are monotonic because executions are never deleted and a finished execution never
changes status.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from executions.models import FINISHED_STATUSES, Execution, ExecutionStatus
from functions.models import Function, FunctionVersion

logger = logging.getLogger(__name__)

# Seconds; a FaaS spans warm invocations in milliseconds to cold container starts in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PHASES = {
    "queue": ("dispatched_at", "started_at"),
    "run": ("started_at", "finished_at"),
    "total": ("dispatched_at", "finished_at"),
}


def _duration(start: str, end: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(end) - F(start), output_field=DurationField())


def _seconds(value) -> float:
    if value is None:
        return 0.0
    return value.total_seconds() if isinstance(value, timedelta) else float(value) / 1e6


def _celery_queue_length() -> int | None:
    """Messages waiting in the Celery queue, when the broker is Redis (LLEN of the queue's list)."""
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return None
    try:
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2,
                                      socket_connect_timeout=2)
        return int(client.llen(settings.CELERY_TASK_DEFAULT_QUEUE))
    except Exception:  # a scrape must answer even when the broker does not
        logger.warning("could not read the Celery queue length from Redis", exc_info=True)
        return None


class ExecutionsCollector:
    """Counters, histograms and gauges from the executions and function-version tables."""

    def collect(self):
        # Grouped by function id (the covering index holds it), named afterwards: no join.
        self.names = dict(Function.objects.values_list("pk", "name"))
        invocations = CounterMetricFamily(
            "kubefunction_invocations", "Invocations dispatched, by function and status.",
            labels=["function", "status"])
        for row in (Execution.objects.values("function_id", "status")
                    .annotate(n=Count("pk")).order_by()):
            invocations.add_metric([self.name(row["function_id"]), row["status"]], row["n"])
        yield invocations

        cold = CounterMetricFamily("kubefunction_cold_starts",
                                   "Invocations that started a new process or container.",
                                   labels=["function"])
        cpu = CounterMetricFamily("kubefunction_cpu_seconds",
                                  "CPU seconds used by finished invocations.",
                                  labels=["function"])
        for row in (Execution.objects.filter(status__in=FINISHED_STATUSES)
                    .values("function_id")
                    .annotate(cold=Count("pk", filter=Q(cold=True)), cpu=Sum("cpu_seconds"))
                    .order_by()):
            cold.add_metric([self.name(row["function_id"])], row["cold"])
            cpu.add_metric([self.name(row["function_id"])], float(row["cpu"] or 0))
        yield cold
        yield cpu

        yield from self._histograms()

        states = GaugeMetricFamily("kubefunction_executions_in_progress",
                                   "Executions queued (waiting for a worker) or running.",
                                   labels=["state"])
        counts = dict(Execution.objects.filter(
            status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RUNNING])
            .values_list("status").annotate(n=Count("pk")).order_by())
        for state in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING):
            states.add_metric([state.value], counts.get(state.value, 0))
        yield states

        length = _celery_queue_length()
        if length is not None:
            queue = GaugeMetricFamily("kubefunction_celery_queue_length",
                                      "Messages waiting in the Celery queue on the Redis broker.",
                                      labels=["queue"])
            queue.add_metric([settings.CELERY_TASK_DEFAULT_QUEUE], length)
            yield queue

        builds = GaugeMetricFamily("kubefunction_function_versions",
                                   "Function versions (image builds) by build status.",
                                   labels=["status"])
        counts = dict(FunctionVersion.objects.values_list("status").annotate(n=Count("pk"))
                      .order_by())
        for status, n in sorted(counts.items()):
            builds.add_metric([status], n)
        yield builds

    def name(self, function_id: int) -> str:
        return self.names.get(function_id, str(function_id))

    def _histograms(self):
        """One histogram per phase, by function; buckets counted in the database."""
        for phase, (start, end) in PHASES.items():
            family = HistogramMetricFamily(
                f"kubefunction_execution_{phase}_seconds",
                {"queue": "Seconds from dispatch to start (waiting for a worker).",
                 "run": "Seconds from start to finish (the function's run).",
                 "total": "Seconds from dispatch to the stored result (retrieval time)."}[phase],
                labels=["function"])
            aggregates = {f"le{i}": Count("pk", filter=Q(d__lte=timedelta(seconds=bound)))
                          for i, bound in enumerate(BUCKETS)}
            rows = (Execution.objects.filter(**{f"{start}__isnull": False,
                                                f"{end}__isnull": False})
                    .annotate(d=_duration(start, end)).values("function_id")
                    .annotate(n=Count("pk"), total=Sum("d"), **aggregates).order_by())
            for row in rows:
                buckets = [(str(bound), row[f"le{i}"]) for i, bound in enumerate(BUCKETS)]
                buckets.append(("+Inf", row["n"]))
                family.add_metric([self.name(row["function_id"])], buckets,
                                  sum_value=_seconds(row["total"]))
            yield family


def exposition() -> bytes:
    """The text exposition of all KubeFunction metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExecutionsCollector())
    return generate_latest(registry)
