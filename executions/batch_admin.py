"""Admin for batches: progress bars (server-side HTML), counts, retrieval-time percentiles and a
link to each batch's executions. Registered by an import in `executions.admin`."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from kubefunction.admin_display import CappedCountPaginator

from .batches import progress_of, with_progress
from .models import Batch


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # a machine record, like its executions

    def _progress(self, batch):
        if getattr(batch, "_progress", None) is None:
            batch._progress = progress_of(batch)
        return batch._progress

    @admin.display(description="batch")
    def short_id(self, batch):
        return str(batch.pk)[:8]

    @admin.display(description="progress")
    def progress_bar(self, batch):
        progress = self._progress(batch)
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

    @admin.display(description="succeeded")
    def succeeded(self, batch):
        return self._progress(batch).succeeded

    @admin.display(description="failed")
    def failed(self, batch):
        return self._progress(batch).failed

    @admin.display(description="of which timed out")
    def timed_out(self, batch):
        return self._progress(batch).timed_out

    @admin.display(description="cancelled")
    def cancelled(self, batch):
        return self._progress(batch).cancelled

    @admin.display(description="queued / running")
    def in_flight(self, batch):
        progress = self._progress(batch)
        return f"{progress.queued} / {progress.running}"

    @admin.display(description="p50 retrieval")
    def p50(self, batch):
        return _seconds(self._progress(batch).p50_seconds)

    @admin.display(description="p95 retrieval")
    def p95(self, batch):
        return _seconds(self._progress(batch).p95_seconds)

    @admin.display(description="executions")
    def executions_link(self, batch):
        url = reverse("admin:executions_execution_changelist")
        return format_html('<a href="{}?batch__id__exact={}">executions</a>', url, batch.pk)
