"""Executions: one row per invocation, written before its task is sent and never deleted."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class ExecutionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT,
                     ExecutionStatus.CANCELLED)
# What a cancel may stop: queued (also a retry waiting for its backoff) or running.
CANCELLABLE_STATUSES = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class CallbackStatus(models.TextChoices):
    NONE = "", "No callback"
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class Batch(models.Model):
    """One dispatch of many payloads; its executions point to it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    trigger = models.ForeignKey("triggers.Trigger", on_delete=models.SET_NULL, null=True,
                                blank=True, related_name="batches")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")
    size = models.PositiveIntegerField(help_text="How many executions it dispatched.")
    source = models.CharField(max_length=32, blank=True,
                              help_text="Where it came from: api, admin, command.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True,
                                       help_text="When its last execution ended.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The open batches, oldest first, for the reaper's sweep every second
            # (`hooks.batch_close_if_done`): without it the sweep reads past every closed batch.
            models.Index(fields=["created_at"], name="batch_open",
                         condition=models.Q(finished_at__isnull=True)),
        ]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"batch {self.id} ({self.size})"


def _seconds(start, end) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) / timedelta(seconds=1)


class Execution(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_id = models.CharField(max_length=64, unique=True,
                               help_text="Celery task id; AsyncResult(task_id) reads the result.")
    # Every index is written on each claim and finish (they change `status`): foreign keys
    # already led by a composite index below get none of their own.
    function = models.ForeignKey("functions.Function", on_delete=models.PROTECT,
                                 related_name="executions", db_index=False)
    version = models.ForeignKey("functions.FunctionVersion", on_delete=models.PROTECT,
                                related_name="executions", help_text="The version it ran.")
    trigger = models.ForeignKey("triggers.Trigger", on_delete=models.SET_NULL, null=True,
                                blank=True, related_name="executions", db_index=False)
    dispatched_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                      null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices,
                              default=ExecutionStatus.QUEUED)
    input = models.JSONField(null=True, blank=True, help_text="The event the function received.")
    output = models.JSONField(null=True, blank=True, help_text="What the function returned.")
    output_truncated = models.BooleanField(default=False,
                                           help_text="The output was over the size limit.")
    error_type = models.CharField(max_length=200, blank=True,
                                  help_text="Exception class or platform reason, e.g. Timeout.")
    error = models.TextField(blank=True, help_text="Error message with the function's traceback.")
    logs = models.TextField(blank=True, help_text="What the function printed (stdout, stderr).")
    logs_truncated = models.BooleanField(default=False,
                                         help_text="The logs were over the size limit.")
    exit_code = models.IntegerField(null=True, blank=True)
    runtime = models.CharField(max_length=16, blank=True, help_text="Runtime that ran it.")
    cold = models.BooleanField(null=True, blank=True, verbose_name="cold start",
                               help_text="True when a new process/container was started for it.")
    worker = models.CharField(max_length=255, blank=True, help_text="Celery worker that ran it.")
    cpu_seconds = models.FloatField(null=True, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    init_seconds = models.FloatField(
        null=True, blank=True, verbose_name="cold-start seconds",
        help_text="Time to start the process/container/pod and import the handler (cold only).")
    # Retries: the attempts before the last one, each {attempt, status, error_type, error,
    # exit_code, worker, started_at, finished_at}; `attempt` counts from 1.
    attempt = models.PositiveSmallIntegerField(default=1, help_text="Current attempt (1 = first).")
    max_retries = models.PositiveSmallIntegerField(
        default=0, help_text="Retries allowed after a function failure or timeout.")
    retry_backoff_seconds = models.FloatField(default=1.0)
    attempts = models.JSONField(default=list, blank=True,
                                help_text="Earlier attempts, each with its error.")
    dead_letter = models.BooleanField(
        default=False, help_text="Failed for good after its last allowed attempt.")
    synchronous = models.BooleanField(
        default=False, help_text="A caller waits for it (synchronous HTTP call): no retries.")
    http_request = models.BooleanField(
        default=False, verbose_name="HTTP request",
        help_text="The input describes a webhook's HTTP request, which the function's "
                  "convention turns into its event (functions/conventions/base.py).")
    callback_url = models.URLField(max_length=500, blank=True,
                                   help_text="The result is POSTed here when it ends.")
    callback_status = models.CharField(max_length=16, choices=CallbackStatus.choices,
                                       blank=True, default=CallbackStatus.NONE)
    callback_attempts = models.PositiveSmallIntegerField(default=0)
    callback_error = models.TextField(blank=True)
    rerun_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="reruns", help_text="The execution it re-runs.",
                                 db_index=False)
    batch = models.ForeignKey(Batch, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="executions", db_index=False)
    dispatched_at = models.DateTimeField()  # indexed by exec_window_covering
    due_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When its current message is due at a worker (dispatch, retry backoff, "
                  "concurrency wait); the reaper re-sends a queued execution long past it.")
    resends = models.PositiveSmallIntegerField(
        default=0, help_text="Times the reaper re-sent it (its message was presumed lost).")
    input_sha256 = models.CharField(max_length=64, blank=True,
                                    help_text="SHA-256 of the input when only its hash is kept.")
    output_sha256 = models.CharField(max_length=64, blank=True,
                                     help_text="SHA-256 of the output when only its hash is kept.")
    payload_purged_at = models.DateTimeField(
        null=True, blank=True, help_text="When its input and output were replaced by hashes.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-dispatched_at"]
        indexes = [
            models.Index(fields=["function", "-dispatched_at"], name="exec_function_recent"),
            models.Index(fields=["trigger", "-dispatched_at"], name="exec_trigger_recent"),
            models.Index(fields=["status", "-dispatched_at"], name="exec_status_recent"),
            # Partial indexes hold only the rows they serve, so most writes skip them.
            models.Index(fields=["batch", "status"], name="exec_batch_status",
                         condition=models.Q(batch__isnull=False)),
            models.Index(fields=["due_at"], name="exec_queued_due",
                         condition=models.Q(status="queued")),
            models.Index(fields=["rerun_of"], name="exec_reruns",
                         condition=models.Q(rerun_of__isnull=False)),
            models.Index(fields=["-dispatched_at"], name="exec_dead_letters",
                         condition=models.Q(dead_letter=True)),
            # The metrics dashboard reads a time window from this index alone (index-only scans
            # on Postgres; SQLite ignores INCLUDE).
            models.Index(fields=["dispatched_at"], name="exec_window_covering",
                         include=["function", "status", "cold", "cpu_seconds", "started_at",
                                  "finished_at", "id"]),
        ]

    # Not a column: True on an execution a dispatch gave back for an idempotency key it had
    # seen (executions/idempotency.py) instead of making a new one.
    replayed = False

    def __str__(self) -> str:
        return f"execution {self.task_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def queue_seconds(self) -> float | None:
        """Dispatched → started."""
        return _seconds(self.dispatched_at, self.started_at)

    @property
    def run_seconds(self) -> float | None:
        """Started → finished."""
        return _seconds(self.started_at, self.finished_at)

    @property
    def total_seconds(self) -> float | None:
        """Dispatched → finished: what a caller waits for the result."""
        return _seconds(self.dispatched_at, self.finished_at)


class DispatchKey(models.Model):
    """An `Idempotency-Key` an owner dispatched with: the same key again within
    KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS gives back this execution instead of a new one
    (executions/idempotency.py). The unique constraint, not a read before the write, makes
    concurrent dispatches with one key create one execution."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="dispatch_keys")
    # Whose keys these are: "" for the owner's own dispatches (API, admin, commands),
    # "webhook:<trigger id>" for a webhook's callers, who may not claim the owner's keys.
    scope = models.CharField(max_length=40, blank=True, default="")
    key = models.CharField(max_length=255)
    # SHA-256 of what was dispatched (trigger and payload, or a webhook's method, path, query
    # and body): the same key with another request is refused (409).
    request_sha256 = models.CharField(max_length=64)
    execution = models.ForeignKey(Execution, on_delete=models.CASCADE,
                                  related_name="dispatch_keys")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "scope", "key"],
                                               name="dispatch_key_per_owner")]

    def __str__(self) -> str:
        return f"idempotency key {self.key!r}"
