"""Admin for triggers, with the "Dispatch…" action (a JSON payload and a count)."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from executions import services as execution_services
from kubefunction.errors import KubeFunctionError

from . import services
from .forms import DispatchForm
from .models import Trigger


@admin.register(Trigger)
class TriggerAdmin(admin.ModelAdmin):
    list_display = ["name", "function", "kind", "enabled", "executions_link", "updated_at"]
    list_filter = ["kind", "enabled", "function"]
    search_fields = ["name", "function__name", "description"]
    list_select_related = ["function"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    actions = ["dispatch"]

    @admin.display(description="executions")
    def executions_link(self, trigger):
        url = reverse("admin:executions_execution_changelist") + f"?trigger__id__exact={trigger.pk}"
        return format_html('<a href="{}">view</a>', url)

    def save_model(self, request, obj, form, change):
        data = {k: form.cleaned_data[k] for k in services.EDITABLE if k in form.cleaned_data}
        if change:
            services.trigger_update(trigger=obj, **data)
        else:
            created = services.trigger_create(name=form.cleaned_data["name"], user=request.user,
                                              **data)
            obj.__dict__.update(created.__dict__)

    @admin.action(description="Dispatch… (JSON payload and count)")
    def dispatch(self, request, queryset):
        form = DispatchForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            payload = form.cleaned_data["payload"]
            count = form.cleaned_data["count"]
            for trigger in queryset.select_related("function__active_version"):
                self._dispatch(request, trigger, payload, count)
            return None
        return TemplateResponse(request, "admin/triggers/trigger/dispatch.html", {
            **self.admin_site.each_context(request),
            "title": "Dispatch triggers", "form": form, "triggers": queryset,
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        })

    def _dispatch(self, request, trigger, payload, count) -> None:
        payloads = [execution_services.USE_DEFAULT if payload is None else payload] * count
        try:
            executions = execution_services.execution_dispatch_many(
                trigger=trigger, payloads=payloads, user=request.user,
                source="admin")
        except KubeFunctionError as exc:
            self.message_user(request, f"{trigger.name}: {exc.message}", messages.ERROR)
            return
        if len(executions) == 1:
            url = reverse("admin:executions_execution_change", args=[executions[0].pk])
        else:
            url = reverse("admin:executions_execution_changelist") + \
                f"?trigger__id__exact={trigger.pk}"
        self.message_user(request, format_html(
            'Queued {} execution(s) of <b>{}</b>: <a href="{}">see results</a>.',
            len(executions), trigger.name, url))
