"""API representations of functions and versions."""

from django.conf import settings
from rest_framework import serializers

from kubefunction.access import runtime_check
from kubefunction.api_input import StrictInput
from kubefunction.errors import InvalidInput

from . import executor
from .conventions import CHOICES as CONVENTION_CHOICES
from .models import Function, FunctionVersion, Mode, PayloadRetention, Runtime


def _allowed_runtime(serializer: serializers.Serializer, value: str, owner) -> str:
    """The operator's allow-list (KUBEFUNCTION_ALLOWED_RUNTIMES) as a 400 naming `runtime`."""
    if owner is None:
        request = serializer.context.get("request")
        owner = getattr(request, "user", None)
    try:
        return runtime_check(runtime=value, owner=owner)
    except InvalidInput as exc:
        raise serializers.ValidationError(exc.message) from exc


class VersionSerializer(serializers.ModelSerializer):
    function = serializers.SlugRelatedField(slug_field="name", read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = FunctionVersion
        fields = ["function", "number", "status", "active", "sha256", "source_name", "source_size",
                  "handler", "mode", "convention", "requirements", "image", "installed_packages",
                  "build_log",
                  "created_at", "built_at"]
        read_only_fields = fields

    def get_active(self, version: FunctionVersion) -> bool:
        return version.function.active_version_id == version.pk


class FunctionSerializer(StrictInput, serializers.ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    active_version = serializers.SlugRelatedField(slug_field="number", read_only=True)
    url = serializers.HyperlinkedIdentityField(view_name="function-detail", lookup_field="name")
    waiting = serializers.SerializerMethodField(
        help_text="Executions queued now: waiting for a worker, a retry or a concurrency slot.")

    class Meta:
        model = Function
        fields = ["url", "name", "description", "owner", "runtime", "handler", "mode", "convention",
                  "timeout_seconds", "memory_mb", "network", "env_vars", "max_concurrency",
                  "payload_retention", "payload_retention_days", "waiting", "active_version",
                  "created_at", "updated_at"]
        read_only_fields = ["name", "owner", "handler", "mode", "convention", "active_version",
                            "created_at",
                            "updated_at"]

    def validate_runtime(self, value: str) -> str:
        if self.instance is not None and value == self.instance.runtime:
            return value  # unchanged: not this edit's business (dispatch refuses it if banned)
        return _allowed_runtime(self, value, getattr(self.instance, "owner", None))

    def get_waiting(self, function: Function) -> int:
        # In a list, one grouped query for the whole page, kept in the shared context.
        counts = self.context.setdefault("_waiting_counts", {}) if self.context else {}
        if function.pk not in counts:
            page = self.parent.instance if isinstance(self.parent, serializers.ListSerializer) \
                else [function]
            counts.update(dict.fromkeys((f.pk for f in page), 0))
            counts.update(executor.waiting_counts(f.pk for f in page))
        return counts.get(function.pk, 0)


class SourceUploadSerializer(StrictInput, serializers.Serializer):
    """A new version: the source file and, optionally, the handler and mode to validate against."""

    source = serializers.FileField(help_text="A .py file, or a .zip/.tar.gz with the code and an "
                                             "optional requirements.txt.")
    handler = serializers.CharField(required=False, max_length=200,
                                    help_text="'module.function' (handler mode) or the module "
                                              "to run (script mode). Detected when omitted.")
    mode = serializers.ChoiceField(choices=Mode.choices, required=False)
    convention = serializers.ChoiceField(
        choices=CONVENTION_CHOICES, required=False, allow_blank=True,
        help_text="The platform the code is written for: lambda, openfaas, openfaas-http, "
                  "openwhisk, cloudfunctions, fission, knative, azure, nuclio, windmill; blank "
                  "for ours (docs/porting.md). A new version keeps the function's when omitted.")

    def validate_source(self, upload):
        # Checked before the body is read: an oversized upload is never loaded into memory.
        limit = settings.KUBEFUNCTION_MAX_SOURCE_BYTES
        if upload.size > limit:
            raise serializers.ValidationError(
                f"'{upload.name}' is {upload.size} bytes; the limit is {limit} bytes.")
        return upload


class FunctionCreateSerializer(SourceUploadSerializer):
    name = serializers.CharField(max_length=63, help_text="DNS-1123 label, e.g. 'resize-image'.")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    runtime = serializers.ChoiceField(choices=Runtime.choices, required=False, default="")
    timeout_seconds = serializers.IntegerField(required=False, min_value=1,
                                               max_value=settings.KUBEFUNCTION_MAX_TIMEOUT)
    memory_mb = serializers.IntegerField(required=False, min_value=32,
                                         max_value=settings.KUBEFUNCTION_MAX_MEMORY_MB)
    network = serializers.BooleanField(required=False, default=False,
                                       help_text="Give invocations network access.")
    env_vars = serializers.JSONField(required=False, default=dict,
                                     help_text='An object of names to strings, e.g. {"A": "1"}.')
    payload_retention = serializers.ChoiceField(
        choices=PayloadRetention.choices, required=False, default=PayloadRetention.KEEP,
        help_text="Keep inputs and outputs, keep them N days, or store only their hashes.")
    payload_retention_days = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1,
        help_text="With payload_retention 'days' (and only then): days they are kept.")

    def validate_runtime(self, value: str) -> str:
        return _allowed_runtime(self, value, None)


class ActivateSerializer(StrictInput, serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="Number of a ready version.")


class BuildSerializer(StrictInput, serializers.Serializer):
    version = serializers.IntegerField(min_value=1, required=False,
                                       help_text="Version number; default: the latest.")
