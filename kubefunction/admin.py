"""The audit trail in the admin (Administration › Log entries): every change to functions,
versions and triggers from the admin, the API and the commands (kubefunction/audit.py), read
only. Superusers read every entry; anyone else with `admin.view_logentry` reads the entries of
their own changes."""

from django.contrib import admin
from django.contrib.admin.models import DELETION, LogEntry
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from kubefunction.admin_display import ReadOnlyAdmin


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ("action_time", "user", "content_type", "object_link", "action_flag",
                    "message")
    list_filter = ("action_flag", "content_type", "user")
    search_fields = ("object_repr", "change_message", "user__username")
    date_hierarchy = "action_time"
    list_select_related = ("user", "content_type")

    def get_queryset(self, request):
        entries = super().get_queryset(request)
        return entries if request.user.is_superuser else entries.filter(user=request.user)

    @admin.display(description="object", ordering="object_repr")
    def object_link(self, entry: LogEntry):
        if entry.action_flag != DELETION:  # a deleted object has no page to link to
            try:
                url = reverse(f"admin:{entry.content_type.app_label}_"
                              f"{entry.content_type.model}_change", args=[entry.object_id])
                return format_html('<a href="{}">{}</a>', url, entry.object_repr)
            except NoReverseMatch:
                pass
        return entry.object_repr

    @admin.display(description="what changed")
    def message(self, entry: LogEntry) -> str:
        return entry.get_change_message()
