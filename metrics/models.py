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
        help_text="Requests per level; empty: as many as the level's concurrency (one wave).")
    payload = models.JSONField(null=True, blank=True)
    levels = models.JSONField(
        default=list, help_text="One entry per concurrency level: concurrency, requests, errors, "
                                "p50/p95/max retrieval seconds, CPU utilisation (%), seconds.")
    cpu_count = models.PositiveIntegerField(help_text="Logical CPUs of the machine it ran on.")
    csv_path = models.CharField(max_length=500, blank=True)
    chart_svg = models.TextField(blank=True, help_text="Retrieval time and CPU against "
                                                       "concurrency (SVG).")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "load test run"

    def __str__(self) -> str:
        return f"load test of {self.trigger_name} at {self.created_at:%Y-%m-%d %H:%M}"
