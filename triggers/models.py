"""Triggers: a unique name mapped to a function."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from kubefunction.models import NamedModel

TRIGGER_NAME = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
    "Use letters, digits, '-', '_' and '.', starting with a letter or digit (at most 100).",
)


class TriggerKind(models.TextChoices):
    MANUAL = "manual", "Manual (API, admin, command)"
    HTTP = "http", "HTTP webhook (POST /t/<name>)"
    SCHEDULE = "schedule", "Schedule (crontab)"


class PayloadFormat(models.TextChoices):
    V1 = "1.0", "1.0 (API Gateway REST API)"
    V2 = "2.0", "2.0 (API Gateway HTTP API, function URLs)"


class SignatureScheme(models.TextChoices):
    NONE = "", "None: the X-KubeFunction-Token header"
    GITHUB = "github", "GitHub (X-Hub-Signature-256)"
    STRIPE = "stripe", "Stripe (Stripe-Signature, 5 minutes' tolerance)"
    HMAC = "hmac-sha256", "Generic HMAC-SHA256 of the body"


class Trigger(NamedModel):
    name = models.CharField(max_length=100, unique=True, validators=[TRIGGER_NAME],
                            help_text="Unique name used to dispatch, e.g. in URLs and commands.")
    function = models.ForeignKey("functions.Function", on_delete=models.CASCADE,
                                 related_name="triggers", help_text="The function it runs.")
    kind = models.CharField(max_length=16, choices=TriggerKind.choices,
                            default=TriggerKind.MANUAL, help_text="What fires the trigger.")
    enabled = models.BooleanField(default=True,
                                  help_text="A disabled trigger refuses dispatches.")
    default_payload = models.JSONField(default=dict, blank=True,
                                       help_text="The event sent when a dispatch gives none.")
    description = models.TextField(blank=True)
    # HTTP webhook: the token itself is shown once (on creation or regeneration); only its
    # SHA-256 is stored.
    token_hash = models.CharField(max_length=64, blank=True, editable=False,
                                  help_text="SHA-256 of the webhook's secret token.")
    public = models.BooleanField(default=False,
                                 help_text="HTTP triggers only: anyone may call it, no token.")
    # HTTP triggers of a function with a convention (docs/porting.md).
    payload_format_version = models.CharField(
        max_length=4, choices=PayloadFormat.choices, default=PayloadFormat.V1,
        help_text="Lambda convention: API Gateway's proxy event — 1.0 (REST API) or 2.0 "
                  "(HTTP API, function URLs).")
    cors_allowed_origins = models.JSONField(
        default=list, blank=True,
        help_text='Origins allowed to call it from a browser, e.g. ["https://app.example.com"] '
                  'or ["*"]: the platform answers their CORS preflight (OPTIONS) and adds '
                  "Access-Control-Allow-Origin. Empty: OPTIONS reaches the function.")
    signature = models.CharField(
        max_length=16, choices=SignatureScheme.choices, blank=True, default="",
        help_text="Authenticate calls by an HMAC signature of the body instead of the token "
                  "header: GitHub's X-Hub-Signature-256, Stripe's Stripe-Signature, or a "
                  "generic hex HMAC-SHA256 in signature_header.")
    signature_header = models.CharField(
        max_length=100, blank=True, default="",
        help_text="Generic signatures: the header carrying hex HMAC-SHA256 of the body "
                  "(optionally prefixed 'sha256='). Default X-Signature-256.")
    signature_secret = models.CharField(
        max_length=200, blank=True, default="",
        help_text="The shared secret the sender signs with. Write-only: never shown again.")
    # Schedule: a 5-field crontab in `timezone`, kept in django-celery-beat's PeriodicTask.
    schedule = models.CharField(max_length=200, blank=True,
                                help_text="Crontab: minute hour day-of-month month day-of-week.")
    timezone = models.CharField(max_length=64, default="UTC",
                                help_text="Time zone the crontab is read in, e.g. Europe/Paris.")
    periodic_task = models.OneToOneField("django_celery_beat.PeriodicTask", null=True,
                                         blank=True, on_delete=models.SET_NULL,
                                         related_name="+", editable=False)
    # Asynchronous invocations: retries with exponential backoff, then a dead letter.
    max_retries = models.PositiveSmallIntegerField(
        default=0, help_text="Retries after a function failure or timeout (asynchronous calls).")
    retry_backoff_seconds = models.FloatField(
        default=1.0, help_text="Delay before the first retry; doubled for each next one.")
    callback_url = models.URLField(max_length=500, blank=True,
                                   help_text="Default URL the result is POSTed to when an "
                                             "execution ends (must be allowed by settings).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")


class KeyScope(models.TextChoices):
    INVOKE = "invoke", "invoke: dispatch the chosen triggers (and re-run or cancel their runs)"
    READ = "read", "read: executions and batches"
    DEPLOY = "deploy", "deploy: create and change functions, versions and triggers"


class ApiKey(models.Model):
    """A key for one user's services (service-to-service calls): `Authorization: Bearer
    kf_<prefix>_<secret>`, acting as the user but only within its scopes (triggers/keys.py).
    Stored hashed; the key itself is shown once, when it is made."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_keys")
    name = models.CharField(max_length=100, help_text="What the key is for (e.g. 'billing-cron').")
    prefix = models.CharField(max_length=16, unique=True, editable=False,
                              help_text="The key's public part: it is shown, the rest is not.")
    key_sha256 = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list, blank=True,
                              help_text="Any of invoke, read, deploy.")
    triggers = models.ManyToManyField(Trigger, blank=True, related_name="api_keys",
                                      help_text="invoke: these triggers.")
    functions = models.ManyToManyField("functions.Function", blank=True, related_name="api_keys",
                                       help_text="invoke: every trigger of these functions.")
    expires_at = models.DateTimeField(null=True, blank=True,
                                      help_text="Refused (401) from then on; empty: never.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    # `request.auth` is a key (kubefunction.access.KeyScope reads its scopes).
    is_api_key = True

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (kf_{self.prefix}_…)"

    def allows(self, scope: str) -> bool:
        return scope in (self.scopes or [])

    def may_invoke(self, trigger: Trigger) -> bool:
        """Whether the key's `invoke` scope covers `trigger`."""
        if not self.allows(KeyScope.INVOKE):
            return False
        return self.triggers.filter(pk=trigger.pk).exists() or \
            self.functions.filter(pk=trigger.function_id).exists()
