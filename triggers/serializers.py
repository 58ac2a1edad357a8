"""API representations of triggers and dispatch requests."""

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from executions.callbacks import callback_url_check
from functions.models import Function
from kubefunction.access import scope_to_actor
from kubefunction.api_input import StrictInput
from kubefunction.errors import InvalidInput

from .models import ApiKey, KeyScope, Trigger, TriggerKind
from .services import webhook_url


class OwnedFunctionField(serializers.SlugRelatedField):
    """A function referenced by name, limited to those the requesting user may act on (their
    own; all with `functions.change_function`): seeing a function is not enough to point a
    trigger at it."""

    def get_queryset(self):
        request = self.context.get("request")
        return scope_to_actor(Function.objects.all(), getattr(request, "user", None), "owner")


class TriggerSerializer(StrictInput, serializers.ModelSerializer):
    """A trigger; `webhook_url` for HTTP triggers, `token` only in the answer that created it
    (the token is shown once; POST .../token/ issues a new one)."""

    function = OwnedFunctionField(slug_field="name")
    url = serializers.HyperlinkedIdentityField(view_name="trigger-detail", lookup_field="name")
    dispatch_url = serializers.HyperlinkedIdentityField(view_name="trigger-dispatch",
                                                        lookup_field="name")
    webhook_url = serializers.SerializerMethodField(
        help_text="HTTP triggers: POST here with the X-KubeFunction-Token header.")
    token = serializers.SerializerMethodField(
        help_text="HTTP triggers: the secret token, present only when it was just issued.")
    has_token = serializers.SerializerMethodField()
    periodic_task = serializers.SlugRelatedField(slug_field="name", read_only=True,
                                                 allow_null=True)
    cors_allowed_origins = serializers.JSONField(
        required=False, help_text=Trigger._meta.get_field("cors_allowed_origins").help_text)
    signature_secret = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False,
        max_length=200, style={"input_type": "password"},
        help_text="The secret the sender signs with (required with a signature scheme). "
                  "Write-only: never returned; has_signature_secret says whether one is set.")
    has_signature_secret = serializers.SerializerMethodField()

    class Meta:
        model = Trigger
        fields = ["url", "name", "function", "kind", "enabled", "default_payload", "description",
                  "dispatch_url", "webhook_url", "token", "has_token", "public", "schedule",
                  "timezone", "periodic_task", "max_retries", "retry_backoff_seconds",
                  "callback_url", "payload_format_version", "cors_allowed_origins",
                  "signature", "signature_header", "signature_secret", "has_signature_secret",
                  "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def get_webhook_url(self, trigger: Trigger) -> str | None:
        if trigger.kind != TriggerKind.HTTP:
            return None
        request = self.context.get("request")
        return webhook_url(trigger, base=request.build_absolute_uri("/") if request else None)

    def get_token(self, trigger: Trigger) -> str | None:
        return getattr(trigger, "token", None)

    def get_has_token(self, trigger: Trigger) -> bool:
        return bool(trigger.token_hash)

    def get_has_signature_secret(self, trigger: Trigger) -> bool:
        return bool(trigger.signature_secret)

    def validate_default_payload(self, value):
        if value is None:
            raise serializers.ValidationError("give a JSON value other than null ({} for none).")
        return value

    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("a trigger cannot be renamed.")
        return value


class TokenSerializer(serializers.Serializer):
    name = serializers.CharField()
    token = serializers.CharField(help_text="The new secret token (shown once).")
    webhook_url = serializers.URLField()


class DispatchSerializer(StrictInput, serializers.Serializer):
    """Either one `payload`, or a list of `payloads`; neither sends the trigger's default."""

    unknown_field_hint = ('the event goes in `payload` (e.g. {"payload": {"text": "hi"}}), '
                          "a batch in `payloads`")

    payload = serializers.JSONField(required=False,
                                    help_text="The event for one execution (any JSON).")
    payloads = serializers.ListField(child=serializers.JSONField(), required=False,
                                     allow_empty=False,
                                     max_length=settings.KUBEFUNCTION_MAX_BATCH,
                                     help_text="Events for a batch, one execution each.")
    callback_url = serializers.CharField(
        required=False, allow_blank=True, max_length=500,
        help_text="POST the result here when each execution ends (docs/callbacks.md); "
                  "default: the trigger's callback URL.")
    idempotency_keys = serializers.ListField(
        child=serializers.CharField(allow_null=True, max_length=255, trim_whitespace=False),
        required=False, allow_empty=False, max_length=settings.KUBEFUNCTION_MAX_BATCH,
        help_text="With `payloads`: one idempotency key per payload (null for none); a key "
                  "dispatched before gives back its execution (docs/triggers.md, "
                  "\"Idempotency\"). One `payload` takes the `Idempotency-Key` header.")

    def validate_callback_url(self, value):
        try:
            return callback_url_check(value)
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.message) from exc

    def validate(self, attrs):
        if "payload" in attrs and "payloads" in attrs:
            raise serializers.ValidationError(
                {"payloads": "give `payload` or `payloads`, not both."})
        keys = attrs.get("idempotency_keys")
        if keys is not None and len(keys) != len(attrs.get("payloads") or []):
            raise serializers.ValidationError({"idempotency_keys": (
                "give one key per payload of `payloads`; one `payload` takes the "
                "Idempotency-Key header.")})
        return attrs


class DispatchedSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    execution_id = serializers.UUIDField()
    status = serializers.CharField()
    result_url = serializers.URLField()
    replayed = serializers.BooleanField(
        help_text="True when an Idempotency-Key gave back an earlier dispatch's execution.")


class BatchLinkSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.URLField()


class BatchDispatchedSerializer(serializers.Serializer):
    """The answer to a dispatch of `payloads`: one task id per payload, in order."""

    count = serializers.IntegerField()
    batch = BatchLinkSerializer(allow_null=True)
    executions = DispatchedSerializer(many=True)


class _OwnField(serializers.SlugRelatedField):
    """A function or trigger of the requesting user's own, by name (a key acts for one user)."""

    def __init__(self, model, owner_path: str, **kwargs):
        self.model, self.owner_path = model, owner_path
        super().__init__(slug_field="name", **kwargs)

    def get_queryset(self):
        user = getattr(self.context.get("request"), "user", None)
        if not getattr(user, "is_authenticated", False):
            return self.model.objects.none()
        return self.model.objects.filter(**{self.owner_path: user})


class ApiKeySerializer(StrictInput, serializers.ModelSerializer):
    """A scoped API key; `key` only in the answer that made it (shown once)."""

    scopes = serializers.ListField(child=serializers.ChoiceField(choices=KeyScope.choices),
                                   allow_empty=False)
    triggers = serializers.ManyRelatedField(
        child_relation=_OwnField(Trigger, "function__owner"), required=False,
        help_text="invoke: the triggers it may dispatch (your own, by name).")
    functions = serializers.ManyRelatedField(
        child_relation=_OwnField(Function, "owner"), required=False,
        help_text="invoke: every trigger of these functions (your own, by name).")
    expired = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "triggers", "functions", "expires_at",
                  "expired", "last_used_at", "revoked_at", "created_at"]
        read_only_fields = ["id", "prefix", "last_used_at", "revoked_at", "created_at"]

    def get_expired(self, key: ApiKey) -> bool:
        return key.expires_at is not None and key.expires_at <= timezone.now()


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself: shown this once.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
