"""Prometheus exposition of the executions, computed at scrape time.

A custom Collector reads the database on every scrape instead of counting in process memory, so
every web process answers the same numbers, and they match the table (the system of record)
exactly. It reads the rollup tables (`metrics.rollup`) plus the executions dispatched since their
watermark, so a scrape costs the same on a million executions as on a thousand. Histogram bucket
counts are exact: the rollup's histogram bounds include every Prometheus bucket bound.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db.models import Count
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from executions.models import FINISHED_STATUSES, Execution, ExecutionStatus
from functions.models import Function, FunctionVersion

from . import histogram, selectors

logger = logging.getLogger(__name__)

BUCKETS = histogram.PROMETHEUS_BUCKETS
HISTOGRAMS = {
    "queue": ("kubefunction_execution_queue_seconds",
              "Seconds from dispatch to start (waiting for a worker)."),
    "run": ("kubefunction_execution_run_seconds",
            "Seconds from start to finish (the function's run)."),
    "total": ("kubefunction_execution_total_seconds",
              "Seconds from dispatch to the stored result (retrieval time)."),
    "init": ("kubefunction_cold_start_seconds",
             "Cold starts: seconds from starting the process/container/pod to the handler "
             "imported."),
}


def _celery_queue_length() -> int | None:
    """Messages waiting in the Celery queue, when the broker is Redis (LLEN of the queue's list)."""
    if not settings.BROKER_REDIS_URL:
        return None
    try:
        import redis

        client = redis.Redis.from_url(settings.BROKER_REDIS_URL, socket_timeout=2,
                                      socket_connect_timeout=2)
        return int(client.llen(settings.CELERY_TASK_DEFAULT_QUEUE))
    except Exception:  # a scrape must answer even when the broker does not
        logger.warning("could not read the Celery queue length from Redis", exc_info=True)
        return None


class ExecutionsCollector:
    """Counters, histograms and gauges from the executions (rolled up) and versions tables."""

    def collect(self):
        self.names = dict(Function.objects.values_list("pk", "name"))
        found = selectors.gather(None, None, group="function", sets=("group_kind",))
        invocations = CounterMetricFamily(
            "kubefunction_invocations", "Invocations dispatched, by function and status.",
            labels=["function", "status"])
        cold = CounterMetricFamily("kubefunction_cold_starts",
                                   "Invocations that started a new process or container.",
                                   labels=["function"])
        cpu = CounterMetricFamily("kubefunction_cpu_seconds",
                                  "CPU seconds used by finished invocations.",
                                  labels=["function"])
        by_status: dict[tuple[int, str], int] = {}
        finished: dict[int, list] = {}
        for _b, function_id, status, is_cold, n, seconds in found.counts:
            by_status[(function_id, status)] = by_status.get((function_id, status), 0) + n
            if status in FINISHED_STATUSES:
                cell = finished.setdefault(function_id, [0, 0.0])
                cell[0] += n if is_cold is True else 0
                cell[1] += seconds
        for (function_id, status), n in sorted(by_status.items()):
            invocations.add_metric([self.name(function_id), status], n)
        for function_id, (n, seconds) in sorted(finished.items()):
            cold.add_metric([self.name(function_id)], n)
            cpu.add_metric([self.name(function_id)], seconds)
        yield invocations
        yield cold
        yield cpu

        for kind, (name, documentation) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, documentation, labels=["function"])
            for (function_id, of_kind), counts in sorted(found.by_group_kind.items()):
                if of_kind == kind:
                    family.add_metric([self.name(function_id)],
                                      histogram.prometheus_buckets(counts),
                                      sum_value=found.sums[(function_id, kind)])
            yield family

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


def exposition() -> bytes:
    """The text exposition of all KubeFunction metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExecutionsCollector())
    return generate_latest(registry)
