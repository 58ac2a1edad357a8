"""REST endpoints of the executions app: executions (list with filters, read one by task id,
re-run or cancel one), batches with their progress, and the callback signing key."""

import django_filters
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from kubefunction.access import KeyScope, OwnerOrModelPermission, scope_to_owner
from kubefunction.api_input import wait_seconds
from kubefunction.throttles import dispatch_throttles

from . import reruns, services
from .api_waits import WaitingResponse, WaitsWithoutThread
from .callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER, callback_key
from .models import Batch, Execution, ExecutionStatus
from .selectors import progress_of, with_progress
from .serializers import (
    WAIT_PARAMETER,
    ExecutionSerializer,
    ExecutionSummarySerializer,
    RerunSerializer,
)

# The error bodies of the verbs (kubefunction/api_errors.py): `detail`, or the field the error
# names with its messages. Built once: spectacular warns about two components of one name.
_DETAIL = inline_serializer("ErrorDetail", {"detail": serializers.CharField()})
_STATUS_CONFLICT = inline_serializer(
    "StatusConflict", {"status": serializers.ListField(child=serializers.CharField())})
_FIELD_ERRORS = {"type": "object", "description": "The field the error names, with its messages "
                 "(or `detail`, a string, when the body cannot be parsed at all).",
                 "additionalProperties": {"anyOf": [
                     {"type": "array", "items": {"type": "string"}}, {"type": "string"}]}}
_NOT_YOURS = {
    403: OpenApiResponse(_DETAIL, description="Not authenticated, or you may see this execution "
                         "but not change it (executions.change_execution)."),
    404: OpenApiResponse(_DETAIL, description="No such execution among those you may see."),
}


class ExecutionFilter(django_filters.FilterSet):
    function = django_filters.CharFilter(field_name="function__name")
    trigger = django_filters.CharFilter(field_name="trigger__name")
    status = django_filters.ChoiceFilter(choices=ExecutionStatus.choices)
    dead_letter = django_filters.BooleanFilter(
        help_text="true: only executions that failed for good after their last attempt.")

    class Meta:
        model = Execution
        fields = ["function", "trigger", "status", "dead_letter"]


class NewestFirst(CursorPagination):
    """Cursor pages: no COUNT over a table that grows without end."""

    ordering = "-dispatched_at"
    page_size = 50
    max_page_size = 500
    page_size_query_param = "page_size"


class ExecutionViewSet(WaitsWithoutThread, viewsets.ReadOnlyModelViewSet):
    """Executions of your functions (with `executions.view_execution`: all), newest first; one by
    its Celery task id. Re-running someone else's needs `executions.change_execution`."""

    permission_classes = [IsAuthenticated, KeyScope, OwnerOrModelPermission]
    # Scoped API keys (triggers/keys.py): reading needs `read` (or, for one execution, `invoke`
    # on its trigger: the result URL of what the key dispatched); re-running and cancelling
    # `invoke` on the execution's trigger.
    key_read_scope = "read"
    key_invoke_reads = True
    key_scopes = {"rerun": "invoke", "cancel": "invoke"}

    lookup_field = "task_id"
    lookup_value_regex = "[^/]+"
    filterset_class = ExecutionFilter
    pagination_class = NewestFirst

    def get_queryset(self):
        queryset = Execution.objects.select_related("function", "version", "trigger")
        if self.action == "list":
            queryset = queryset.defer("input", "output", "error", "logs")
        return scope_to_owner(queryset, self.request.user, "function__owner")

    @staticmethod
    def owner_id_of(execution: Execution) -> int:
        return execution.function.owner_id

    def get_serializer_class(self):
        return ExecutionSummarySerializer if self.action == "list" else ExecutionSerializer

    @extend_schema(parameters=[WAIT_PARAMETER])
    def retrieve(self, request, *args, **kwargs):
        """One execution; `?wait=S` waits up to S seconds for it to finish."""
        execution = self.get_object()
        wait = wait_seconds(request)
        if wait and not execution.is_finished:
            return WaitingResponse(execution=execution, timeout=wait,
                                   answer=lambda waited: (self.get_serializer(waited).data, 200))
        return Response(self.get_serializer(execution).data)

    @extend_schema(request=RerunSerializer, responses={202: inline_serializer(
        "Rerun", {"task_id": serializers.CharField(), "execution_id": serializers.UUIDField(),
                  "status": serializers.CharField(), "rerun_of": serializers.CharField(),
                  "version": serializers.IntegerField(), "result_url": serializers.URLField()}),
        400: OpenApiResponse(_FIELD_ERRORS, description="A field of the body is wrong or "
                             "unknown; the body names it."),
        **_NOT_YOURS,
        409: OpenApiResponse(_FIELD_ERRORS, description="`execution`: it has not finished, or "
                             "kept only a hash of its input; `version`: that version cannot run "
                             "now (not built, no image for the runtime)."),
        429: OpenApiResponse(_DETAIL, description="Over the dispatch rate (`Retry-After`)."),
    })
    @action(detail=True, methods=["post"], throttle_classes=dispatch_throttles())
    def rerun(self, request, task_id=None):
        """Run a finished execution again with the same input: on the `same` version (default)
        or the function's `current` one. Answers 202 with the new execution's task id."""
        form = RerunSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        rerun = reruns.execution_rerun(execution=self.get_object(),
                                       version=form.validated_data["version"], user=request.user)
        url = reverse("execution-detail", kwargs={"task_id": rerun.task_id})
        return Response({"task_id": rerun.task_id, "execution_id": str(rerun.pk),
                         "status": rerun.status, "rerun_of": task_id,
                         "version": rerun.version.number,
                         "result_url": request.build_absolute_uri(url)},
                        status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={
        200: ExecutionSerializer, **_NOT_YOURS,
        409: OpenApiResponse(_STATUS_CONFLICT, description="It already ended: `status` names "
                             "its status.")})
    @action(detail=True, methods=["post"])
    def cancel(self, request, task_id=None):
        """Cancel a queued or retrying execution, or kill a running one: 200 with it, now
        `cancelled`. 409 naming `status` when it already ended."""
        execution = services.execution_cancel(execution=self.get_object(), user=request.user)
        return Response(self.get_serializer(execution).data)


# -- batches: `GET /api/batches/` and `/api/batches/<id>/` with progress ----------------------

class BatchSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="batch-detail")
    trigger = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    done = serializers.IntegerField(source="_progress.done", read_only=True)
    succeeded = serializers.IntegerField(source="_progress.succeeded", read_only=True)
    failed = serializers.IntegerField(source="_progress.failed", read_only=True,
                                      help_text="Failed or timed out.")
    timed_out = serializers.IntegerField(source="_progress.timed_out", read_only=True)
    cancelled = serializers.IntegerField(source="_progress.cancelled", read_only=True,
                                         help_text="Cancelled before or while running.")
    queued = serializers.IntegerField(source="_progress.queued", read_only=True)
    running = serializers.IntegerField(source="_progress.running", read_only=True)
    p50_seconds = serializers.FloatField(
        source="_progress.p50_seconds", read_only=True, allow_null=True,
        help_text="Median retrieval time (dispatched → finished) of its finished executions.")
    p95_seconds = serializers.FloatField(source="_progress.p95_seconds", read_only=True,
                                         allow_null=True)

    class Meta:
        model = Batch
        fields = ["url", "id", "trigger", "source", "size", "done", "succeeded", "failed",
                  "timed_out", "cancelled", "queued", "running", "p50_seconds", "p95_seconds",
                  "created_at", "finished_at"]

    def to_representation(self, batch):
        # The progress figures' fields read `_progress`: one `progress_of` per batch.
        if getattr(batch, "_progress", None) is None:
            batch._progress = progress_of(batch)
        return super().to_representation(batch)


class BatchViewSet(viewsets.ReadOnlyModelViewSet):
    """Batches you dispatched (with `executions.view_batch`: all), newest first, with their
    progress."""

    serializer_class = BatchSerializer
    filterset_fields = ["source", "trigger__name"]
    key_read_scope = "read"  # a scoped API key needs `read`

    def get_queryset(self):
        queryset = with_progress(Batch.objects.select_related("trigger").order_by("-created_at"))
        return scope_to_owner(queryset, self.request.user, "created_by")


# -- `GET /api/callbacks/key/`: the key your functions' callbacks are signed with ------------

class CallbackKeySerializer(serializers.Serializer):
    key = serializers.CharField(help_text="HMAC-SHA256 key of your callbacks' signatures.")
    signature_header = serializers.CharField()
    timestamp_header = serializers.CharField()


class CallbackKeyView(APIView):
    """The key that signs the callbacks of the functions you own (docs/callbacks.md)."""

    key_read_scope = "deploy"  # a secret: a scoped API key needs `deploy`

    @extend_schema(responses={200: CallbackKeySerializer})
    def get(self, request):
        return Response({"key": callback_key(request.user).decode(),
                         "signature_header": SIGNATURE_HEADER,
                         "timestamp_header": TIMESTAMP_HEADER})
