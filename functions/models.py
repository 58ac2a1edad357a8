"""Functions and their immutable versions."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from kubefunction.models import NamedModel

from .conventions import CHOICES as CONVENTION_CHOICES

DNS1123_LABEL = RegexValidator(
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
    "Use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit "
    "(a DNS-1123 label: the name becomes part of image and pod names).",
)


class Runtime(models.TextChoices):
    DEFAULT = "", "Platform default"
    LOCAL = "local", "Local process"
    DOCKER = "docker", "Docker container"
    KUBERNETES = "kubernetes", "Kubernetes pod"


class Mode(models.TextChoices):
    HANDLER = "handler", "Handler: call module.function(event[, context])"
    SCRIPT = "script", "Script: run the module; its standard output is the result"


def _default_timeout() -> int:
    return settings.KUBEFUNCTION_DEFAULT_TIMEOUT


def _default_memory() -> int:
    return settings.KUBEFUNCTION_DEFAULT_MEMORY_MB


class PayloadRetention(models.TextChoices):
    KEEP = "keep", "Keep inputs and outputs"
    DAYS = "days", "Keep them for N days, then only their hashes"
    HASH = "hash", "Store only their SHA-256 hashes"


class Function(NamedModel):
    name = models.CharField(
        max_length=63, unique=True, validators=[DNS1123_LABEL],
        help_text="DNS-1123 label: lowercase letters, digits and '-'; part of image and pod names.",
    )
    description = models.TextField(blank=True, help_text="What the function does, for people.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="functions",
        help_text="The user who owns the function; only they (and staff) can see or dispatch it.",
    )
    runtime = models.CharField(
        max_length=16, choices=Runtime.choices, blank=True, default=Runtime.DEFAULT,
        help_text="Where invocations run; blank uses KUBEFUNCTION_RUNTIME.",
    )
    handler = models.CharField(
        max_length=200,
        help_text="Handler mode: 'module.function'. Script mode: the module run as __main__.",
    )
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.HANDLER,
                            help_text="How the runner calls the code.")
    convention = models.CharField(
        max_length=32, choices=CONVENTION_CHOICES, blank=True, default="",
        help_text="The platform whose calling style the code follows (Lambda, OpenFaaS, "
                  "OpenWhisk, …): how its event, context and answer are made. Blank: ours. "
                  "Applies to the next uploaded version (docs/porting.md).")
    timeout_seconds = models.PositiveIntegerField(
        default=_default_timeout,
        validators=[MinValueValidator(1), MaxValueValidator(settings.KUBEFUNCTION_MAX_TIMEOUT)],
        help_text="An invocation running longer is killed and ends as timed out.",
    )
    memory_mb = models.PositiveIntegerField(
        default=_default_memory,
        validators=[MinValueValidator(32), MaxValueValidator(settings.KUBEFUNCTION_MAX_MEMORY_MB)],
        help_text="Memory limit of one invocation, in MiB.",
    )
    network = models.BooleanField(
        default=False,
        help_text="Give invocations network access. Off: containers run with no network at all.",
    )
    max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="At most this many invocations run at once; the rest wait in the queue. "
                  "Empty: no limit.",
    )
    payload_retention = models.CharField(
        max_length=8, choices=PayloadRetention.choices, default=PayloadRetention.KEEP,
        help_text="What is kept of each execution's input and output.")
    payload_retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="With 'days': how long inputs and outputs are kept.")
    env_vars = models.JSONField(
        default=dict, blank=True,
        help_text="Environment variables given to the function: an object of string to string.",
    )
    active_version = models.ForeignKey(
        "FunctionVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        help_text="The version invocations run; only a ready version can be active.",
    )
    @property
    def effective_runtime(self) -> str:
        return self.runtime or settings.KUBEFUNCTION_RUNTIME


class VersionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    BUILDING = "building", "Building"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


def _source_path(instance: FunctionVersion, filename: str) -> str:
    return f"sources/{instance.sha256[:2]}/{instance.sha256}/{instance.source_name}"


class FunctionVersion(models.Model):
    """One upload of a function's code. Never edited after creation; only its build fields move."""

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3… in upload order per function.")
    source = models.FileField(upload_to=_source_path,
                              help_text="The uploaded .py, .zip or .tar.gz.")
    source_name = models.CharField(max_length=255, help_text="The uploaded file's name.")
    source_size = models.PositiveIntegerField(help_text="Bytes of the uploaded file.")
    sha256 = models.CharField(max_length=64, db_index=True,
                              help_text="SHA-256 of the uploaded file's bytes.")
    handler = models.CharField(max_length=200, help_text="Handler this version was validated with.")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.HANDLER)
    convention = models.CharField(max_length=32, choices=CONVENTION_CHOICES, blank=True,
                                  default="", help_text="The calling convention it runs with.")
    requirements = models.TextField(blank=True,
                                    help_text="The archive's requirements.txt, if it has one.")
    status = models.CharField(max_length=16, choices=VersionStatus.choices,
                              default=VersionStatus.PENDING, db_index=True)
    build_log = models.TextField(blank=True, help_text="What preparing the version printed.")
    image = models.CharField(
        max_length=500, blank=True,
        help_text="Container image pinned by digest (registry/repository@sha256:…), once built.")
    image_tag = models.CharField(
        max_length=300, blank=True,
        help_text="Content-addressed tag: the same source, requirements and base share it.")
    installed_packages = models.TextField(
        blank=True, help_text="What pip really installed in the image (name==version per line).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    built_at = models.DateTimeField(null=True, blank=True,
                                    help_text="When the version became ready or failed.")

    class Meta:
        ordering = ["function", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["function", "number"], name="unique_version_number"),
        ]

    def __str__(self) -> str:
        return f"{self.function.name} v{self.number}"


class OwnerQuota(models.Model):
    """One owner's quotas, where they differ from the operator's defaults
    (KUBEFUNCTION_QUOTA_*; functions/quotas.py). Empty: the default; 0: unlimited."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="quota")
    functions = models.PositiveIntegerField(null=True, blank=True,
                                            help_text="Functions at most.")
    stored_mb = models.PositiveIntegerField(null=True, blank=True,
                                            help_text="MB of uploaded sources at most.")
    executions_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="Executions dispatched per UTC day at most.")
    cpu_seconds_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="CPU seconds of finished runs per UTC day at most.")

    class Meta:
        verbose_name = "owner quota"

    def __str__(self) -> str:
        return f"quota of {self.user}"
