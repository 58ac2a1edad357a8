"""API representations of executions."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from kubefunction.api_input import StrictInput

from .models import Execution

WAIT_PARAMETER = OpenApiParameter(
    "wait", OpenApiTypes.FLOAT, description="Seconds to wait for the result (bounded).")
IDEMPOTENCY_PARAMETER = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, location=OpenApiParameter.HEADER,
    description="Names this dispatch (one `payload`): the same key from the same owner within "
                "KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS answers 200 with the first execution "
                "(header Idempotent-Replayed: true); another request under it is a 409.")


class AttemptSerializer(serializers.Serializer):
    """One earlier attempt of an execution (its last attempt is the execution itself)."""

    attempt = serializers.IntegerField()
    status = serializers.CharField()
    error_type = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True, help_text="Head and tail when long.")
    logs = serializers.CharField(allow_blank=True, required=False)
    exit_code = serializers.IntegerField(allow_null=True)
    worker = serializers.CharField(allow_blank=True)
    platform = serializers.BooleanField(required=False,
                                        help_text="A platform failure, not the function's.")
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()


class RerunSerializer(StrictInput, serializers.Serializer):
    version = serializers.ChoiceField(
        choices=[("same", "The version it ran"), ("current", "The function's active version")],
        default="same", help_text="Run the same version again, or the current one.")


class ExecutionSummarySerializer(serializers.ModelSerializer):
    function = serializers.SlugRelatedField(slug_field="name", read_only=True)
    version = serializers.SlugRelatedField(slug_field="number", read_only=True)
    trigger = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    total_seconds = serializers.FloatField(read_only=True, allow_null=True)
    result_url = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = ["task_id", "id", "function", "version", "trigger", "status", "error_type",
                  "runtime", "cold", "attempt", "dead_letter", "dispatched_at", "started_at",
                  "finished_at", "total_seconds", "result_url"]
        read_only_fields = fields

    def get_result_url(self, execution: Execution) -> str:
        url = reverse("execution-detail", kwargs={"task_id": execution.task_id})
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class ExecutionSerializer(ExecutionSummarySerializer):
    callback_url = serializers.CharField(read_only=True,
                                         help_text="The result is POSTed here when it ends.")
    queue_seconds = serializers.FloatField(read_only=True, allow_null=True)
    run_seconds = serializers.FloatField(read_only=True, allow_null=True)
    attempts = AttemptSerializer(many=True, read_only=True,
                                 help_text="Earlier attempts, oldest first, each with its error.")
    rerun_of = serializers.SerializerMethodField(
        help_text="Task id of the execution it re-runs (null when it is not a re-run).")
    reruns = serializers.SerializerMethodField(help_text="Task ids of its re-runs (newest "
                                                         "first, at most 50).")

    class Meta(ExecutionSummarySerializer.Meta):
        fields = ExecutionSummarySerializer.Meta.fields + [
            "input", "output", "output_truncated", "error", "logs", "logs_truncated",
            "exit_code", "worker", "cpu_seconds", "peak_memory_bytes", "queue_seconds",
            "run_seconds", "max_retries", "retry_backoff_seconds", "attempts", "synchronous",
            "http_request", "rerun_of", "reruns", "callback_url", "callback_status",
            "callback_attempts", "callback_error", "batch", "input_sha256", "output_sha256",
            "payload_purged_at"]
        read_only_fields = fields

    def get_rerun_of(self, execution: Execution) -> str | None:
        if execution.rerun_of_id is None:
            return None
        return Execution.objects.values_list("task_id", flat=True).get(pk=execution.rerun_of_id)

    def get_reruns(self, execution: Execution) -> list[str]:
        return list(execution.reruns.order_by("-dispatched_at")
                    .values_list("task_id", flat=True)[:50])
