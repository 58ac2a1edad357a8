"""API representations of triggers and dispatch requests."""

from django.conf import settings
from rest_framework import serializers

from functions.models import Function
from kubefunction.access import scope_to_owner

from .models import Trigger


class OwnedFunctionField(serializers.SlugRelatedField):
    """A function referenced by name, limited to those the requesting user may use."""

    def get_queryset(self):
        request = self.context.get("request")
        return scope_to_owner(Function.objects.all(), getattr(request, "user", None), "owner")


class TriggerSerializer(serializers.ModelSerializer):
    function = OwnedFunctionField(slug_field="name")
    url = serializers.HyperlinkedIdentityField(view_name="trigger-detail", lookup_field="name")
    dispatch_url = serializers.HyperlinkedIdentityField(view_name="trigger-dispatch",
                                                        lookup_field="name")

    class Meta:
        model = Trigger
        fields = ["url", "name", "function", "kind", "enabled", "default_payload", "description",
                  "dispatch_url", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class DispatchSerializer(serializers.Serializer):
    """Either one `payload`, or a list of `payloads`; neither sends the trigger's default."""

    payload = serializers.JSONField(required=False,
                                    help_text="The event for one execution (any JSON).")
    payloads = serializers.ListField(child=serializers.JSONField(), required=False,
                                     max_length=settings.KUBEFUNCTION_MAX_BATCH,
                                     help_text="Events for a batch, one execution each.")

    def validate(self, attrs):
        if "payload" in attrs and "payloads" in attrs:
            raise serializers.ValidationError(
                {"payloads": "give `payload` or `payloads`, not both."})
        return attrs


class DispatchedSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    execution_id = serializers.UUIDField()
    status = serializers.CharField()
    result_url = serializers.URLField()
