"""Admin for functions and their versions (versions are read-only machine records)."""

from django.contrib import admin, messages
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from kubefunction import audit
from kubefunction.access import permission_name
from kubefunction.admin_display import ReadOnlyAdmin, pre, shown
from kubefunction.errors import KubeFunctionError

from . import builds, executor, services
from .forms import FunctionAddForm, FunctionChangeForm
from .models import Function, FunctionVersion

VERSION_FIELDS = ["number", "status", "sha256", "source_name", "source_size", "handler", "mode",
                  "convention",
                  "image", "created_by", "created_at", "built_at"]


class VersionInline(admin.TabularInline):
    model = FunctionVersion
    fk_name = "function"
    fields = ["version_link", "status", "short_sha", "source_name", "handler", "mode",
              "created_at", "built_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ["-number"]

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="version")
    def version_link(self, version):
        url = reverse("admin:functions_functionversion_change", args=[version.pk])
        return format_html('<a href="{}">v{}</a>', url, version.number)

    @admin.display(description="sha256")
    def short_sha(self, version):
        return version.sha256[:12]


@admin.register(Function)
class FunctionAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "active_version_number", "mode", "effective_runtime",
                    "timeout_seconds", "memory_mb", "max_concurrency", "waiting",
                    "trigger_count", "executions_link", "updated_at"]
    list_filter = ["runtime", "mode", "convention", "owner"]
    search_fields = ["name", "description"]
    list_select_related = ["owner", "active_version"]
    readonly_fields = ["name", "owner", "handler", "mode", "convention", "load", "created_at",
                       "updated_at"]
    inlines = [VersionInline]
    actions = ["build_image"]

    @admin.action(description="Build image (latest version; retries a failed build)",
                  permissions=["change"])
    def build_image(self, request, queryset):
        queued = 0
        for function in queryset:
            version = function.versions.select_related("function").first()
            try:
                builds.version_request_build(version=version)
                queued += 1
                audit.changed(user=request.user, obj=function,
                              via="the admin action Build image",
                              detail=f"Requested a build of version {version.number}")
            except KubeFunctionError as exc:
                self.message_user(request, f"{function.name}: {exc.message}", messages.WARNING)
        if queued:
            self.message_user(request, f"Queued the build of {queued} function(s); the version "
                                       "pages show the build log as it runs.")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(trigger_total=Count("triggers"))

    def get_changelist_instance(self, request):
        """The page's queued counts in one grouped query (not one per function)."""
        changelist = super().get_changelist_instance(request)
        counts = executor.waiting_counts(function.pk for function in changelist.result_list)
        for function in changelist.result_list:
            function.waiting_total = counts.get(function.pk, 0)
        return changelist

    @admin.display(description="waiting")
    def waiting(self, function):
        """Queued executions: waiting for a worker, a retry, or a concurrency slot."""
        return getattr(function, "waiting_total", "—")

    @admin.display(description="executions now")
    def load(self, function):
        if function.pk is None:
            return "—"
        waiting = executor.waiting_counts([function.pk]).get(function.pk, 0)
        limit = function.max_concurrency
        running = f"{executor.running_count(function.pk)} running" + (
            f" (limit {limit})" if limit else " (no limit)")
        return f"{running}, {waiting} waiting in the queue"

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = FunctionChangeForm if obj else FunctionAddForm
        form = super().get_form(request, obj, change=change, **kwargs)
        form.owner = request.user  # a new class per call: safe to set
        return form

    def get_fields(self, request, obj=None):
        if obj is None:
            return list(FunctionAddForm._meta.fields)
        return ["name", "owner", "handler", "mode", "convention", *FunctionChangeForm._meta.fields,
                "load",
                "created_at", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_inlines(self, request, obj):
        return self.inlines if obj else []

    @admin.display(description="active version", ordering="active_version__number")
    def active_version_number(self, function):
        return f"v{function.active_version.number}" if function.active_version else "—"

    @admin.display(description="triggers", ordering="trigger_total")
    def trigger_count(self, function):
        return function.trigger_total

    @admin.display(description="executions")
    def executions_link(self, function):
        url = reverse("admin:executions_execution_changelist") + \
            f"?function__id__exact={function.pk}"
        return format_html('<a href="{}">view</a>', url)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if not change:
            upload = data["source"]
            version = services.function_register(
                name=data["name"], owner=request.user, filename=upload.name, data=upload.read(),
                handler=data.get("handler") or None, mode=data.get("mode") or None,
                convention=data.get("convention") or "",
                timeout_seconds=data["timeout_seconds"], memory_mb=data["memory_mb"],
                env_vars=data.get("env_vars") or {}, description=data.get("description", ""),
                runtime=data.get("runtime", ""), network=data.get("network", False))
            obj.__dict__.update(version.function.__dict__)
            return
        previous = Function.objects.get(pk=obj.pk)
        services.function_update(function=obj, **{k: data[k] for k in services.EDITABLE_SETTINGS})
        if data.get("active_version") and data["active_version"] != previous.active_version:
            services.version_activate(version=data["active_version"])
        if data.get("new_source"):
            upload = data["new_source"]
            version = services.version_create(function=obj, filename=upload.name,
                                              data=upload.read(), user=request.user)
            self.message_user(request, f"Uploaded version {version.number} ({version.status}).")


@admin.register(FunctionVersion)
class FunctionVersionAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["__str__", "status", "short_sha", "source_name", "handler", "mode",
                    "created_at", "built_at"]
    list_filter = ["status", "mode"]
    search_fields = ["function__name", "sha256"]
    list_select_related = ["function"]
    fields = [*VERSION_FIELDS, "function", "source", "requirements", "installed_text",
              "build_log_text"]
    readonly_fields = fields
    actions = ["activate", "retry_build"]


    def has_act_permission(self, request) -> bool:
        """Activating and building act on the function: `functions.change_function`."""
        return request.user.has_perm(permission_name(Function, "change"))

    @admin.display(description="sha256")
    def short_sha(self, version):
        return version.sha256[:12]

    installed_text = shown("installed_packages", pre, description="installed packages")
    build_log_text = shown("build_log", pre, description="build log")

    def _apply(self, request, queryset, operation, verb: str, action: str) -> None:
        done = 0
        for version in queryset.select_related("function"):
            try:
                operation(version=version)
                done += 1
                audit.changed(user=request.user, obj=version.function,
                              via=f"the admin action {action}",
                              detail=f"{verb} version {version.number}")
            except KubeFunctionError as exc:
                self.message_user(request, f"{version}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"{verb} {done} version(s).")

    @admin.action(description="Activate (roll back / forward to) the selected version",
                  permissions=["act"])
    def activate(self, request, queryset):
        self._apply(request, queryset, services.version_activate, "Activated", "Activate")

    @admin.action(description="Build (image for container runtimes; retry a failed build)",
                  permissions=["act"])
    def retry_build(self, request, queryset):
        self._apply(request, queryset, builds.version_request_build, "Queued the build of",
                    "Build")
