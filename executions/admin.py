"""Admin for executions: read-only machine records, fast on a table of millions of rows."""

import uuid

from django.contrib import admin
from django.db.models import Q
from django.utils.html import format_html

from kubefunction.admin_display import CappedCountPaginator, pre, pretty_json

from .models import Execution, ExecutionStatus

STATUS_COLOURS = {
    ExecutionStatus.QUEUED: "#777", ExecutionStatus.RUNNING: "#2a6ebb",
    ExecutionStatus.SUCCEEDED: "#2e7d32", ExecutionStatus.FAILED: "#c62828",
    ExecutionStatus.TIMED_OUT: "#ef6c00",
}


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ["short_task_id", "function", "trigger", "status_badge", "duration",
                    "start", "dispatched_at"]
    list_filter = ["status", "function", "trigger", ("cold", admin.BooleanFieldListFilter),
                   "dispatched_at"]
    search_fields = ["task_id"]
    search_help_text = "Exact Celery task id or execution id."
    list_select_related = ["function", "trigger", "version"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50
    fieldsets = [
        (None, {"fields": ["task_id", "id", "function", "version", "trigger", "status_badge",
                           "dispatched_by"]}),
        ("Result", {"fields": ["input_json", "output_json", "output_truncated", "error_type",
                               "error_text", "exit_code"]}),
        ("Logs", {"fields": ["logs_text", "logs_truncated"]}),
        ("Timings and resources", {"fields": [
            "dispatched_at", "started_at", "finished_at", "queue_time", "run_time", "duration",
            "runtime", "start", "worker", "cpu_seconds", "peak_memory"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f for fieldset in self.fieldsets for f in fieldset[1]["fields"]]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("changelist"):
            queryset = queryset.defer("input", "output", "error", "logs")
        return queryset

    def get_search_results(self, request, queryset, search_term):
        """Exact, index-backed lookups only (the admin's default is a case-insensitive scan)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(Q(task_id=term) | Q(pk=uuid.UUID(term))), False
        except ValueError:
            return queryset.filter(task_id=term), False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # an execution never disappears

    @admin.display(description="task id", ordering="task_id")
    def short_task_id(self, execution):
        return execution.task_id[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, execution):
        colour = STATUS_COLOURS.get(execution.status, "#777")
        return format_html('<b style="color:{}">{}</b>', colour, execution.get_status_display())

    @admin.display(description="total (dispatch → result)")
    def duration(self, execution):
        return _seconds(execution.total_seconds)

    @admin.display(description="start", ordering="cold")
    def start(self, execution):
        return {True: "cold", False: "warm"}.get(execution.cold, "—")

    @admin.display(description="queue wait")
    def queue_time(self, execution):
        return _seconds(execution.queue_seconds)

    @admin.display(description="run time")
    def run_time(self, execution):
        return _seconds(execution.run_seconds)

    @admin.display(description="peak memory")
    def peak_memory(self, execution):
        value = execution.peak_memory_bytes
        return f"{value / 1024 / 1024:.1f} MiB" if value else "—"

    @admin.display(description="input")
    def input_json(self, execution):
        return pretty_json(execution.input)

    @admin.display(description="output")
    def output_json(self, execution):
        return pretty_json(execution.output)

    @admin.display(description="error")
    def error_text(self, execution):
        return pre(execution.error)

    @admin.display(description="logs")
    def logs_text(self, execution):
        return pre(execution.logs)
