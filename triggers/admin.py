"""Admin for triggers: fields grouped by kind, the "Dispatch…" and "Regenerate token" actions.

A webhook token is shown once, in the message after the trigger is created or its token
regenerated; only its hash is stored.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from executions import services as execution_services
from kubefunction import audit
from kubefunction.errors import KubeFunctionError

from . import keys, services
from .forms import DispatchForm
from .models import ApiKey, KeyScope, Trigger, TriggerKind


class TriggerAdminForm(forms.ModelForm):
    """Checks the kind-specific fields with the service's own rules, naming the field."""

    callback_url = forms.URLField(
        required=False, max_length=500, assume_scheme="https",
        help_text=Trigger._meta.get_field("callback_url").help_text)
    # Not the model field: the secret is write-only, never rendered back (the form shows it
    # empty; left empty, the stored secret is kept).
    new_signature_secret = forms.CharField(
        label="Signature secret", required=False, strip=False, max_length=200,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The secret the sender signs with (required with a signature scheme). "
                  "Write-only: leave empty to keep the one set.")

    class Meta:
        model = Trigger
        fields = ["name", "function", "kind", "enabled", "description", "default_payload",
                  "public", "payload_format_version", "cors_allowed_origins", "signature",
                  "signature_header", "schedule", "timezone", "max_retries",
                  "retry_backoff_seconds", "callback_url"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Left out of a form (or of a non-HTTP trigger's), the format is the default 1.0.
        self.fields["payload_format_version"].required = False

    def clean_payload_format_version(self):
        return self.cleaned_data.get("payload_format_version") or "1.0"

    # The form's name for each field the service may name in an error.
    FIELD_OF = {"signature_secret": "new_signature_secret"}

    def clean(self):
        data = super().clean()
        scheme = data.get("signature") or ""
        kept = self.instance.signature_secret if self.instance.pk else ""
        secret = (data.get("new_signature_secret") or kept) if scheme else ""
        try:
            checked = services.trigger_check(
                kind=data.get("kind") or TriggerKind.MANUAL, schedule=data.get("schedule") or "",
                timezone=data.get("timezone") or "UTC", public=bool(data.get("public")),
                callback_url=data.get("callback_url") or "",
                payload_format_version=data.get("payload_format_version") or "1.0",
                cors_allowed_origins=data.get("cors_allowed_origins") or [],
                signature=scheme, signature_header=data.get("signature_header") or "",
                signature_secret=secret)
        except KubeFunctionError as exc:
            field = self.FIELD_OF.get(exc.field, exc.field)
            self.add_error(field if field in self.fields else None, exc.message)
        else:
            data["cors_allowed_origins"] = checked["cors_allowed_origins"]
        return data


@admin.register(Trigger)
class TriggerAdmin(admin.ModelAdmin):
    form = TriggerAdminForm
    list_display = ["name", "function", "kind", "enabled", "summary", "executions_link",
                    "updated_at"]
    list_filter = ["kind", "enabled", "public", "function"]
    search_fields = ["name", "function__name", "description"]
    list_select_related = ["function"]
    readonly_fields = ["webhook", "token_status", "signature_status", "periodic_task_link",
                       "created_by", "created_at", "updated_at"]
    actions = ["dispatch", "regenerate_token"]

    def get_fieldsets(self, request, obj=None):
        kind = obj.kind if obj else None

        def section(of_kind):  # the sections of other kinds start folded
            return [] if kind in (None, of_kind) else ["collapse"]

        return [
            (None, {"fields": ["name", "function", "kind", "enabled", "description",
                               "default_payload"]}),
            ("HTTP webhook", {"classes": section(TriggerKind.HTTP),
                              "description": "POST /t/&lt;name&gt; runs the function; "
                                             "the token is shown once, when it is issued.",
                              "fields": ["webhook", "token_status", "public",
                                         "payload_format_version", "cors_allowed_origins",
                                         "signature", "signature_header",
                                         "new_signature_secret", "signature_status"]}),
            ("Schedule", {"classes": section(TriggerKind.SCHEDULE),
                          "description": "A 5-field crontab: minute hour day-of-month month "
                                         "day-of-week, e.g. <code>*/5 * * * *</code>.",
                          "fields": ["schedule", "timezone", "periodic_task_link"]}),
            ("Retries and callback (asynchronous calls)", {
                "classes": ["collapse"],
                "fields": ["max_retries", "retry_backoff_seconds", "callback_url"]}),
            ("Record", {"classes": ["collapse"],
                        "fields": ["created_by", "created_at", "updated_at"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields + (["name"] if obj else [])

    @admin.display(description="executions")
    def executions_link(self, trigger):
        url = reverse("admin:executions_execution_changelist") + f"?trigger__id__exact={trigger.pk}"
        return format_html('<a href="{}">view</a>', url)

    @admin.display(description="fires on")
    def summary(self, trigger):
        if trigger.kind == TriggerKind.HTTP:
            signed = f" ({trigger.signature}-signed)" if trigger.signature else ""
            return "POST " + reverse("trigger-webhook", kwargs={"name": trigger.name}) + \
                (" (public)" if trigger.public else "") + signed
        if trigger.kind == TriggerKind.SCHEDULE:
            return f"{trigger.schedule} ({trigger.timezone})"
        return "dispatch"

    @admin.display(description="webhook URL")
    def webhook(self, trigger):
        if trigger.pk is None or trigger.kind != TriggerKind.HTTP:
            return "— (HTTP triggers only)"
        url = services.webhook_url(trigger)
        if trigger.signature:
            return format_html("<code>{}</code><br><small>the sender signs each call ({}); "
                               "the token header is not taken</small>", url,
                               trigger.get_signature_display())
        header = "" if trigger.public else " -H 'X-KubeFunction-Token: …'"
        return format_html("<code>{}</code><br><small>try: <code>curl -X POST {}{} "
                           "-d '{{\"x\": 1}}'</code></small>", url, url, header)

    @admin.display(description="token")
    def token_status(self, trigger):
        if trigger.kind != TriggerKind.HTTP:
            return "—"
        if not trigger.token_hash:
            return "none (regenerate to issue one)"
        return "set (only its SHA-256 is stored; use “Regenerate token” to issue a new one)"

    @admin.display(description="signature secret")
    def signature_status(self, trigger):
        if trigger.kind != TriggerKind.HTTP or not trigger.signature:
            return "— (signed triggers only)"
        return "set (never shown; type a new one above to replace it)" \
            if trigger.signature_secret else "none: the trigger takes no calls until one is set"

    @admin.display(description="periodic task")
    def periodic_task_link(self, trigger):
        task = trigger.periodic_task
        if task is None:
            return "—"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
        state = "enabled" if task.enabled else "paused"
        return format_html('<a href="{}">{}</a> ({}, last run {})', url, task.name, state,
                           task.last_run_at or "never")

    def save_model(self, request, obj, form, change):
        data = {k: form.cleaned_data[k] for k in services.EDITABLE if k in form.cleaned_data}
        if form.cleaned_data.get("new_signature_secret"):
            data["signature_secret"] = form.cleaned_data["new_signature_secret"]
        if change:
            saved = services.trigger_update(trigger=obj, **data)
        else:
            saved = services.trigger_create(name=form.cleaned_data["name"], user=request.user,
                                            **data)
            obj.__dict__.update(saved.__dict__)
        if getattr(saved, "token", None):
            self._show_token(request, saved, saved.token)

    def delete_model(self, request, obj):
        services.trigger_delete(trigger=obj)

    def delete_queryset(self, request, queryset):
        for trigger in queryset:
            services.trigger_delete(trigger=trigger)

    def _show_token(self, request, trigger, token) -> None:
        self.message_user(request, format_html(
            "Token of <b>{}</b> (shown once, copy it now): <code>{}</code><br>"
            "<code>curl -X POST {} -H 'X-KubeFunction-Token: {}' -d '{{\"x\": 1}}'</code>",
            trigger.name, token, services.webhook_url(trigger), token), messages.WARNING)

    @admin.action(description="Regenerate token (HTTP triggers)", permissions=["change"])
    def regenerate_token(self, request, queryset):
        for trigger in queryset:
            try:
                token = services.trigger_token_regenerate(trigger=trigger)
            except KubeFunctionError as exc:
                self.message_user(request, f"{trigger.name}: {exc.message}", messages.ERROR)
                continue
            audit.changed(user=request.user, obj=trigger,
                          via="the admin action Regenerate token", detail="Issued a new token")
            self._show_token(request, trigger, token)

    @admin.action(description="Dispatch… (JSON payload and count)", permissions=["change"])
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


class ApiKeyAdminForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=KeyScope.choices,
                                       widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ["name", "user", "scopes", "triggers", "functions", "expires_at"]

    request = None  # set by ApiKeyAdmin.get_form

    def clean(self):
        data = super().clean()
        if self.instance.pk is None and self.request is not None:
            try:
                keys.api_key_check(
                    user=key_owner(self.request, data), scopes=list(data.get("scopes") or []),
                    triggers=list(data.get("triggers") or []),
                    functions=list(data.get("functions") or []),
                    expires_at=data.get("expires_at"))
            except KubeFunctionError as exc:
                field = exc.field if exc.field in self.fields else None
                raise forms.ValidationError({field: exc.message} if field else exc.message) \
                    from exc
        return data


def key_owner(request, data: dict):
    """A superuser makes keys for any user; everyone else for themselves."""
    return data.get("user") if request.user.is_superuser and data.get("user") else request.user


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Scoped API keys (triggers/keys.py): made here or by POST /api/keys/, the key shown once;
    read only afterwards but for the Revoke action. Everyone but superusers sees and makes only
    their own."""

    form = ApiKeyAdminForm
    list_display = ("name", "user", "shown_prefix", "scopes", "expires_at", "last_used_at",
                    "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    filter_horizontal = ("triggers", "functions")
    actions = ["revoke"]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type(form.__name__, (form,), {"request": request})

    def get_queryset(self, request):
        keys_ = super().get_queryset(request).select_related("user")
        return keys_ if request.user.is_superuser else keys_.filter(user=request.user)

    def get_fields(self, request, obj=None):
        fields = ["name", "scopes", "triggers", "functions", "expires_at"]
        if request.user.is_superuser:
            fields.insert(1, "user")
        return fields if obj is None else [*fields, "prefix", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("name", "user", "scopes", "triggers", "functions", "expires_at", "prefix",
                "last_used_at", "revoked_at")

    def has_delete_permission(self, request, obj=None):
        return False  # revoked, not deleted: the record stays

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        """Only the user's own triggers and functions are offered (a superuser: all)."""
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if not request.user.is_superuser:
            owner = "function__owner" if db_field.name == "triggers" else "owner"
            field.queryset = field.queryset.filter(**{owner: request.user})
        return field

    @admin.display(description="key")
    def shown_prefix(self, key: ApiKey) -> str:
        return f"kf_{key.prefix}_…"

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data  # checked by the form (keys.api_key_check)
        key, raw = keys.api_key_create(
            user=key_owner(request, data), name=data["name"], scopes=list(data["scopes"]),
            triggers=data.get("triggers") or [], functions=data.get("functions") or [],
            expires_at=data.get("expires_at"))
        obj.pk, obj.prefix = key.pk, key.prefix  # Django's admin logs the addition of it
        self.message_user(request, format_html(
            "API key <b>{}</b> (shown once, copy it now): <code>{}</code><br>"
            "<code>curl -H 'Authorization: Bearer {}' {}</code>", key.name, raw, raw,
            reverse("apikey-list")), messages.WARNING)

    def save_related(self, request, form, formsets, change):
        pass  # api_key_create set the key's triggers and functions

    @admin.action(description="Revoke (refused with 401 from now on)")
    def revoke(self, request, queryset):
        for key in queryset.filter(revoked_at__isnull=True):
            keys.api_key_revoke(key=key)
            audit.changed(user=request.user, obj=key, via="the admin action Revoke",
                          detail="Revoked")
        self.message_user(request, "Revoked the selected key(s).")
