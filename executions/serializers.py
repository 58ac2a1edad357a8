"""API representations of executions."""

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from kubefunction.errors import InvalidInput

from .models import Execution

WAIT_PARAMETER = OpenApiParameter(
    "wait", OpenApiTypes.FLOAT, description="Seconds to wait for the result (bounded).")


def wait_seconds(request) -> float:
    """The `?wait=` query parameter as seconds, bounded by KUBEFUNCTION_MAX_WAIT."""
    raw = request.query_params.get("wait")
    if raw in (None, ""):
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput("wait must be a number of seconds.", field="wait") from None
    if not 0 <= value <= settings.KUBEFUNCTION_MAX_WAIT:
        raise InvalidInput(f"wait must be between 0 and {settings.KUBEFUNCTION_MAX_WAIT} seconds.",
                           field="wait")
    return value


class ExecutionSummarySerializer(serializers.ModelSerializer):
    function = serializers.SlugRelatedField(slug_field="name", read_only=True)
    version = serializers.SlugRelatedField(slug_field="number", read_only=True)
    trigger = serializers.SlugRelatedField(slug_field="name", read_only=True)
    total_seconds = serializers.FloatField(read_only=True, allow_null=True)
    result_url = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = ["task_id", "id", "function", "version", "trigger", "status", "error_type",
                  "runtime", "cold", "dispatched_at", "started_at", "finished_at",
                  "total_seconds", "result_url"]
        read_only_fields = fields

    def get_result_url(self, execution: Execution) -> str:
        url = reverse("execution-detail", kwargs={"task_id": execution.task_id})
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class ExecutionSerializer(ExecutionSummarySerializer):
    queue_seconds = serializers.FloatField(read_only=True, allow_null=True)
    run_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta(ExecutionSummarySerializer.Meta):
        fields = ExecutionSummarySerializer.Meta.fields + [
            "input", "output", "output_truncated", "error", "logs", "logs_truncated",
            "exit_code", "worker", "cpu_seconds", "peak_memory_bytes", "queue_seconds",
            "run_seconds"]
        read_only_fields = fields
