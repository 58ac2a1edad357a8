"""Stored load-test runs: what `manage.py loadtest` measured, shown in the admin with its chart."""

from __future__ import annotations

from django.db import models


class LoadTestRun(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    trigger_name = models.CharField(max_length=200, help_text="The trigger dispatched.")
    function_name = models.CharField(max_length=200)
    runtime = models.CharField(max_length=16, help_text="Runtime the function ran on.")
    requests = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Requests per level; empty: the default, ten per client and at least 50.")
    payload = models.JSONField(null=True, blank=True)
    levels = models.JSONField(
        default=list, help_text="One entry per concurrency level: concurrency, requests, errors, "
                                "p50/p95/max retrieval seconds, CPU utilisation (%), seconds, "
                                "and the Celery floor's p50/p95/throughput at that level.")
    warmup = models.JSONField(
        null=True, blank=True, help_text="The warm-up before the levels, in the same form; not "
                                         "part of the figures.")
    cpu_count = models.PositiveIntegerField(help_text="Logical CPUs of the machine it ran on.")
    csv_path = models.CharField(max_length=500, blank=True)
    chart_svg = models.TextField(blank=True, help_text="Retrieval time and CPU against "
                                                       "concurrency (SVG).")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "load test run"

    def __str__(self) -> str:
        return f"load test of {self.trigger_name} at {self.created_at:%Y-%m-%d %H:%M}"


class RollupWidth(models.IntegerChoices):
    MINUTE = 60, "minute"
    HOUR = 3600, "hour"


class Rollup(models.Model):
    """A count of the executions dispatched in [start, start + width) with this function and
    trigger (and what each table adds to the key). Written only by `metrics.rollup`."""

    width = models.PositiveIntegerField(choices=RollupWidth.choices)
    start = models.DateTimeField()
    # Plain ids (no constraint): a rollup row outlives nothing, and carries no cascade cost.
    function = models.ForeignKey("functions.Function", on_delete=models.DO_NOTHING,
                                 db_constraint=False, db_index=False, related_name="+")
    trigger = models.ForeignKey("triggers.Trigger", on_delete=models.DO_NOTHING, null=True,
                                db_constraint=False, db_index=False, related_name="+")
    count = models.PositiveIntegerField()

    class Meta:
        abstract = True


class ExecutionRollup(Rollup):
    """How many executions dispatched in [start, start + width) had this function, trigger,
    status and cold flag, and the CPU they used."""

    status = models.CharField(max_length=16)
    cold = models.BooleanField(null=True)
    cpu_seconds = models.FloatField(default=0.0)

    class Meta:
        indexes = [
            models.Index(fields=["width", "start"], name="rollup_window"),
            models.Index(fields=["function", "width", "start"], name="rollup_function"),
            models.Index(fields=["width", "start"], name="rollup_open",
                         condition=models.Q(status__in=["queued", "running"])),
        ]

    def __str__(self) -> str:
        return f"{self.count} {self.status} at {self.start:%Y-%m-%d %H:%M} (+{self.width} s)"


class LatencyRollup(Rollup):
    """Histogram bucket counts (see `metrics.histogram`) of one duration of the executions
    dispatched in [start, start + width) with this function and trigger."""

    kind = models.CharField(max_length=8, help_text="queue, run, total or init (cold start).")
    bucket = models.PositiveSmallIntegerField()
    sum_seconds = models.FloatField(default=0.0)

    class Meta:
        indexes = [
            models.Index(fields=["width", "start"], name="latency_window"),
            models.Index(fields=["function", "width", "start"], name="latency_function"),
        ]

    def __str__(self) -> str:
        return f"{self.count} {self.kind} in bucket {self.bucket} at {self.start:%Y-%m-%d %H:%M}"


class RollupState(models.Model):
    """One row: everything dispatched before `rolled_until` is in the rollup tables."""

    rolled_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"rolled up until {self.rolled_until}"
