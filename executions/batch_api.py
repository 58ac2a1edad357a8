"""REST endpoints for batches: `GET /api/batches/` and `/api/batches/<id>/` with progress."""

from rest_framework import serializers, viewsets

from kubefunction.access import scope_to_owner

from .batches import progress_of, with_progress
from .models import Batch


class BatchSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="batch-detail")
    trigger = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    done = serializers.SerializerMethodField()
    succeeded = serializers.SerializerMethodField()
    failed = serializers.SerializerMethodField(help_text="Failed or timed out.")
    timed_out = serializers.SerializerMethodField()
    cancelled = serializers.SerializerMethodField(help_text="Cancelled before or while running.")
    queued = serializers.SerializerMethodField()
    running = serializers.SerializerMethodField()
    p50_seconds = serializers.SerializerMethodField(
        help_text="Median retrieval time (dispatched → finished) of its finished executions.")
    p95_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = ["url", "id", "trigger", "source", "size", "done", "succeeded", "failed",
                  "timed_out", "cancelled", "queued", "running", "p50_seconds", "p95_seconds",
                  "created_at", "finished_at"]

    def _progress(self, batch):
        if getattr(batch, "_progress", None) is None:
            batch._progress = progress_of(batch)
        return batch._progress

    def get_done(self, batch) -> int:
        return self._progress(batch).done

    def get_succeeded(self, batch) -> int:
        return self._progress(batch).succeeded

    def get_failed(self, batch) -> int:
        return self._progress(batch).failed

    def get_timed_out(self, batch) -> int:
        return self._progress(batch).timed_out

    def get_cancelled(self, batch) -> int:
        return self._progress(batch).cancelled

    def get_queued(self, batch) -> int:
        return self._progress(batch).queued

    def get_running(self, batch) -> int:
        return self._progress(batch).running

    def get_p50_seconds(self, batch) -> float | None:
        return self._progress(batch).p50_seconds

    def get_p95_seconds(self, batch) -> float | None:
        return self._progress(batch).p95_seconds


class BatchViewSet(viewsets.ReadOnlyModelViewSet):
    """Batches you dispatched (with `executions.view_batch`: all), newest first, with their
    progress."""

    serializer_class = BatchSerializer
    filterset_fields = ["source", "trigger__name"]

    def get_queryset(self):
        queryset = with_progress(Batch.objects.select_related("trigger").order_by("-created_at"))
        return scope_to_owner(queryset, self.request.user, "created_by")
