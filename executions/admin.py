"""Admin of the executions app: executions, read-only machine records fast on a table of millions
of rows, and batches with their progress bars (server-side HTML), counts, retrieval-time
percentiles and a link to each batch's executions."""

import uuid

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Q
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from functions import quotas as function_quotas
from functions.models import OwnerQuota
from kubefunction.access import permission_name
from kubefunction.admin_display import CappedCountPaginator, ReadOnlyAdmin, pre, pretty_json, shown
from kubefunction.errors import KubeFunctionError

from . import quotas
from .models import Batch, Execution, ExecutionStatus
from .reruns import RerunVersion, execution_rerun
from .selectors import progress_of, with_progress
from .services import execution_cancel

STATUS_COLOURS = {
    ExecutionStatus.QUEUED: "#777", ExecutionStatus.RUNNING: "#2a6ebb",
    ExecutionStatus.SUCCEEDED: "#2e7d32", ExecutionStatus.FAILED: "#c62828",
    ExecutionStatus.TIMED_OUT: "#ef6c00", ExecutionStatus.CANCELLED: "#6d4c41",
}


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _progress(batch):
    """The batch's progress, read once per row however many columns show it."""
    if getattr(batch, "_progress", None) is None:
        batch._progress = progress_of(batch)
    return batch._progress


class DeadLetterFilter(admin.SimpleListFilter):
    """Executions that failed for good after their last allowed attempt (a partial index)."""

    title = "dead letters"
    parameter_name = "dead_letter"

    def lookups(self, request, model_admin):
        return [("yes", "Dead letters"), ("pending", "Dead letters not re-run yet")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(dead_letter=True)
        if self.value() == "pending":
            return queryset.filter(dead_letter=True).exclude(
                Exists(Execution.objects.filter(rerun_of=OuterRef("pk"))))
        return queryset


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["short_task_id", "function", "trigger", "status_badge", "attempt_count",
                    "duration", "start", "dispatched_at"]
    list_filter = ["status", DeadLetterFilter, "function", "trigger",
                   ("cold", admin.BooleanFieldListFilter), "dispatched_at"]
    actions = ["rerun_same", "rerun_current", "redispatch", "cancel"]
    search_fields = ["task_id"]
    search_help_text = "Exact Celery task id or execution id."
    list_select_related = ["function", "trigger", "version"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50
    fieldsets = [
        (None, {"fields": ["task_id", "id", "function", "version", "trigger", "status_badge",
                           "dispatched_by"]}),
        ("Result", {"fields": ["input_json", "http_request", "output_json", "output_truncated",
                               "error_type", "error_text", "exit_code"]}),
        ("Logs", {"fields": ["logs_text", "logs_truncated"]}),
        ("Payload retention", {"fields": ["input_sha256", "output_sha256", "payload_purged_at"],
                               "description": "Set when the input and output were replaced by "
                                              "their SHA-256 hashes (docs/executions.md)."}),
        ("Attempts", {"fields": ["attempt_count", "max_retries", "retry_backoff_seconds",
                                 "dead_letter", "synchronous", "attempts_table"]}),
        ("Re-runs", {"fields": ["rerun_of_link", "reruns_links"]}),
        ("Callback and batch", {"fields": ["callback_url", "callback_status", "callback_attempts",
                                           "callback_error", "batch"]}),
        ("Timings and resources", {"fields": [
            "dispatched_at", "started_at", "finished_at", "queue_time", "run_time", "duration",
            "runtime", "start", "worker", "cpu_seconds", "peak_memory"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        """The payload retention section only once the payload was replaced by its hashes."""
        if obj is None or obj.payload_purged_at or obj.input_sha256:
            return self.fieldsets
        return [fieldset for fieldset in self.fieldsets if fieldset[0] != "Payload retention"]

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


    def has_rerun_permission(self, request) -> bool:
        """Executions are read-only records, but re-running one acts on it:
        `executions.change_execution` (docs/security.md)."""
        return request.user.has_perm(permission_name(Execution, "change"))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_rerun": self.has_rerun_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        rerun = path("<path:object_id>/rerun/<str:version>/",
                     self.admin_site.admin_view(self.rerun_view),
                     name="executions_execution_rerun")
        return [rerun, *super().get_urls()]

    def rerun_view(self, request, object_id, version):
        """The change page's re-run buttons (POST): re-run and go to the new execution."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_rerun_permission(request):
            raise PermissionDenied
        execution = get_object_or_404(Execution.objects.select_related(
            "function__active_version", "version", "trigger"), pk=object_id)
        try:
            rerun = execution_rerun(execution=execution, version=version, user=request.user)
        except KubeFunctionError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(
                reverse("admin:executions_execution_change", args=[execution.pk]))
        self.message_user(request, f"Queued re-run {rerun.task_id} (version "
                                   f"{rerun.version.number}) of {execution.task_id}.")
        return HttpResponseRedirect(reverse("admin:executions_execution_change",
                                            args=[rerun.pk]))

    def _rerun_selected(self, request, queryset, version: str, *, dead_letters_only=False):
        executions = Execution.objects.select_related(
            "function__active_version", "version", "trigger").filter(
            pk__in=queryset.values("pk")).order_by("dispatched_at")
        done, skipped = [], 0
        for execution in executions:
            if dead_letters_only and not execution.dead_letter:
                skipped += 1
                continue
            try:
                done.append(execution_rerun(execution=execution, version=version,
                                            user=request.user))
            except KubeFunctionError as exc:
                self.message_user(request, f"{execution.task_id}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Queued {len(done)} re-run(s) on the {version} "
                                       "version.")
        if skipped:
            self.message_user(request, f"Skipped {skipped} execution(s) that are not dead "
                                       "letters.", messages.WARNING)

    @admin.action(description="Re-run (same version)", permissions=["rerun"])
    def rerun_same(self, request, queryset):
        self._rerun_selected(request, queryset, RerunVersion.SAME)

    @admin.action(description="Re-run (current version)", permissions=["rerun"])
    def rerun_current(self, request, queryset):
        self._rerun_selected(request, queryset, RerunVersion.CURRENT)

    @admin.action(description="Re-dispatch dead letters (current version)",
                  permissions=["rerun"])
    def redispatch(self, request, queryset):
        self._rerun_selected(request, queryset, RerunVersion.CURRENT, dead_letters_only=True)

    def has_cancel_permission(self, request) -> bool:
        # Stopping someone's run changes it: the change permission, not the view one.
        return request.user.has_perm("executions.change_execution")

    @admin.action(description="Cancel (queued, retrying) or kill (running)",
                  permissions=["cancel"])
    def cancel(self, request, queryset):
        cancelled, refused = 0, 0
        for execution in Execution.objects.filter(pk__in=queryset.values("pk")):
            try:
                execution_cancel(execution=execution, user=request.user)
                cancelled += 1
            except KubeFunctionError:
                refused += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} execution(s).")
        if refused:
            self.message_user(request, f"Skipped {refused} execution(s) that had already "
                                       "ended.", messages.WARNING)

    @admin.display(description="task id", ordering="task_id")
    def short_task_id(self, execution):
        return execution.task_id[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, execution):
        colour = STATUS_COLOURS.get(execution.status, "#777")
        return format_html('<b style="color:{}">{}</b>', colour, execution.get_status_display())

    duration = shown("total_seconds", _seconds, description="total (dispatch → result)")
    queue_time = shown("queue_seconds", _seconds, description="queue wait")
    run_time = shown("run_seconds", _seconds, description="run time")
    input_json = shown("input", pretty_json, description="input")
    output_json = shown("output", pretty_json, description="output")
    error_text = shown("error", pre, description="error")
    logs_text = shown("logs", pre, description="logs")

    @admin.display(description="start", ordering="cold")
    def start(self, execution):
        return {True: "cold", False: "warm"}.get(execution.cold, "—")

    @admin.display(description="peak memory")
    def peak_memory(self, execution):
        value = execution.peak_memory_bytes
        return f"{value / 1024 / 1024:.1f} MiB" if value else "—"

    @admin.display(description="attempt")
    def attempt_count(self, execution):
        allowed = execution.max_retries + 1
        text = f"{execution.attempt} of {allowed}" if allowed > 1 else str(execution.attempt)
        if execution.dead_letter:
            return format_html('{} <b style="color:#c62828">dead letter</b>', text)
        return text

    @admin.display(description="earlier attempts")
    def attempts_table(self, execution):
        if not execution.attempts:
            return "—"
        rows = format_html_join("", (
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td></tr>"), (
            (a.get("attempt"), a.get("status"),
             f"{a.get('error_type', '')}{' (platform)' if a.get('platform') else ''}",
             a.get("exit_code") if a.get("exit_code") is not None else "—", a.get("worker"),
             a.get("started_at"), a.get("finished_at"), pre(a.get("error", "")))
            for a in execution.attempts))
        return format_html(
            '<table class="kf-attempts"><thead><tr><th>attempt</th><th>status</th>'
            "<th>error type</th><th>exit code</th><th>worker</th><th>started</th>"
            "<th>finished</th><th>error</th></tr></thead><tbody>{}</tbody></table>", rows)

    @admin.display(description="re-run of")
    def rerun_of_link(self, execution):
        if execution.rerun_of_id is None:
            return "—"
        task_id = Execution.objects.values_list("task_id", flat=True).get(
            pk=execution.rerun_of_id)
        url = reverse("admin:executions_execution_change", args=[execution.rerun_of_id])
        return format_html('<a href="{}">{}</a>', url, task_id)

    @admin.display(description="re-runs")
    def reruns_links(self, execution):
        reruns = execution.reruns.order_by("-dispatched_at").values_list(
            "pk", "task_id", "status")[:50]
        if not reruns:
            return "—"
        return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a> ({})', (
            (reverse("admin:executions_execution_change", args=[pk]), task_id, status)
            for pk, task_id, status in reruns))


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["short_id", "trigger", "source", "progress_bar", "size", "succeeded",
                    "failed", "in_flight", "p50", "p95", "created_at", "finished_at",
                    "executions_link"]
    list_filter = ["source", ("finished_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["=id", "trigger__name"]
    list_select_related = ["trigger", "created_by"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 25
    fields = ["id", "trigger", "created_by", "source", "size", "progress_bar", "succeeded",
              "failed", "timed_out", "cancelled", "in_flight", "p50", "p95", "created_at",
              "finished_at", "executions_link"]
    readonly_fields = fields

    def get_queryset(self, request):
        return with_progress(super().get_queryset(request))


    @admin.display(description="batch")
    def short_id(self, batch):
        return str(batch.pk)[:8]

    @admin.display(description="progress")
    def progress_bar(self, batch):
        progress = _progress(batch)
        ok = 100.0 * progress.succeeded / progress.size if progress.size else 0
        bad = 100.0 * progress.failed / progress.size if progress.size else 0
        cut = 100.0 * progress.cancelled / progress.size if progress.size else 0
        return format_html(
            '<div title="{} of {} done" style="width:160px;height:12px;background:#e0e0e0;'
            'border-radius:3px;overflow:hidden;display:inline-block;vertical-align:middle">'
            '<div style="width:{}%;height:100%;background:#2e7d32;float:left"></div>'
            '<div style="width:{}%;height:100%;background:#c62828;float:left"></div>'
            '<div style="width:{}%;height:100%;background:#6d4c41;float:left"></div></div>'
            ' <span>{} / {} ({}%)</span>',
            progress.done, progress.size, f"{ok:.2f}", f"{bad:.2f}", f"{cut:.2f}", progress.done,
            progress.size, f"{progress.percent:.0f}")

    succeeded = shown("succeeded", description="succeeded", of=_progress)
    failed = shown("failed", description="failed", of=_progress)
    timed_out = shown("timed_out", description="of which timed out", of=_progress)
    cancelled = shown("cancelled", description="cancelled", of=_progress)
    p50 = shown("p50_seconds", _seconds, description="p50 retrieval", of=_progress)
    p95 = shown("p95_seconds", _seconds, description="p95 retrieval", of=_progress)

    @admin.display(description="queued / running")
    def in_flight(self, batch):
        progress = _progress(batch)
        return f"{progress.queued} / {progress.running}"

    @admin.display(description="executions")
    def executions_link(self, batch):
        url = reverse("admin:executions_execution_changelist")
        return format_html('<a href="{}?batch__id__exact={}">executions</a>', url, batch.pk)


@admin.register(OwnerQuota)
class OwnerQuotaAdmin(admin.ModelAdmin):
    """Owners' quotas (functions/quotas.py) beside what each uses now. The model is the
    functions app's; its page is here because the usage counts executions."""

    list_display = ("user", "functions_used", "stored_used", "executions_used", "cpu_used")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
    readonly_fields = ("usage_now",)

    def get_queryset(self, request):
        return quotas.with_usage(super().get_queryset(request).select_related("user"))

    @staticmethod
    def _shown(quota: OwnerQuota, used: float, limit: str) -> str:
        own = [getattr(quota, name) for name in function_quotas.NAMES]
        cap = getattr(function_quotas.merged(own, is_superuser=quota.user.is_superuser), limit)
        return f"{used:g} / {cap if cap else '∞'}"

    @admin.display(description="functions")
    def functions_used(self, quota):
        return self._shown(quota, quota.used_functions, "functions")

    @admin.display(description="stored MB")
    def stored_used(self, quota):
        return self._shown(quota, round(quota.used_bytes / (1024 * 1024), 2), "stored_mb")

    @admin.display(description="executions today")
    def executions_used(self, quota):
        return self._shown(quota, quota.used_executions, "executions_per_day")

    @admin.display(description="CPU s today")
    def cpu_used(self, quota):
        return self._shown(quota, round(quota.used_cpu_seconds, 1), "cpu_seconds_per_day")

    @admin.display(description="used now (limit; ∞: unlimited)")
    def usage_now(self, quota):
        if quota.pk is None or not hasattr(quota, "used_functions"):
            return "—"
        return "; ".join(f"{label} {getattr(self, name)(quota)}" for label, name in (
            ("functions", "functions_used"), ("stored MB", "stored_used"),
            ("executions today", "executions_used"), ("CPU s today", "cpu_used")))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        function_quotas.forget(obj.user_id)
