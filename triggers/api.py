"""REST endpoints for triggers: CRUD, `POST /api/triggers/<name>/dispatch/` and
`POST /api/triggers/<name>/token/` (a new webhook token)."""

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from executions import idempotency
from executions import services as execution_services
from executions.api_waits import WaitingResponse, WaitsWithoutThread
from executions.serializers import IDEMPOTENCY_PARAMETER, WAIT_PARAMETER, ExecutionSerializer
from kubefunction import audit
from kubefunction.access import KeyScope, OwnerOrModelPermission, scope_to_owner
from kubefunction.api_input import refuse_unknown, wait_seconds
from kubefunction.errors import InvalidInput, PayloadTooLarge
from kubefunction.throttles import dispatch_throttles

from . import keys, services
from .models import ApiKey, Trigger
from .serializers import (
    ApiKeyCreatedSerializer,
    ApiKeySerializer,
    BatchDispatchedSerializer,
    DispatchedSerializer,
    DispatchSerializer,
    TokenSerializer,
    TriggerSerializer,
)


class TriggerViewSet(WaitsWithoutThread, viewsets.ModelViewSet):
    """Triggers of functions you own (with `triggers.view_trigger`: all). Dispatching, editing
    and regenerating the token of someone else's need `triggers.change_trigger`; deleting
    them `triggers.delete_trigger`."""

    permission_classes = [IsAuthenticated, KeyScope, OwnerOrModelPermission]
    # Scoped API keys (triggers/keys.py): dispatching needs `invoke` on this trigger; any other
    # change `deploy`.
    key_scopes = {"dispatch_trigger": "invoke"}

    serializer_class = TriggerSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    filterset_fields = ["kind", "enabled", "function__name"]

    def get_queryset(self):
        queryset = Trigger.objects.select_related("function")
        return scope_to_owner(queryset, self.request.user, "function__owner")

    @staticmethod
    def owner_id_of(trigger: Trigger) -> int:
        return trigger.function.owner_id

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.trigger_create(
            name=data.pop("name"), function=data.pop("function"), user=self.request.user, **data)
        audit.added(user=self.request.user, obj=serializer.instance, via=audit.API,
                    detail=f"{serializer.instance.kind} trigger of "
                           f"{serializer.instance.function.name}")

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        data.pop("name", None)  # unchanged (the serializer refuses a rename)
        before = audit.snapshot(serializer.instance, data)
        serializer.instance = services.trigger_update(trigger=serializer.instance, **data)
        audit.changed(user=self.request.user, obj=serializer.instance, via=audit.API, before=before)

    def perform_destroy(self, instance):
        audit.deleted(user=self.request.user, obj=instance, via=audit.API)
        services.trigger_delete(trigger=instance)

    @extend_schema(request=None, responses={200: TokenSerializer})
    @action(detail=True, methods=["post"], url_path="token", url_name="token")
    def regenerate_token(self, request, name=None):
        """Issue a new webhook token for an HTTP trigger (shown once); the old one stops
        working at once."""
        refuse_unknown(request.data)  # it takes no fields
        trigger = self.get_object()
        token = services.trigger_token_regenerate(trigger=trigger)
        audit.changed(user=request.user, obj=trigger, via=audit.API, detail="Issued a new token")
        return Response({"name": trigger.name, "token": token,
                         "webhook_url": services.webhook_url(
                             trigger, base=request.build_absolute_uri("/"))})

    @extend_schema(request=DispatchSerializer, parameters=[WAIT_PARAMETER,
                                                           IDEMPOTENCY_PARAMETER],
                   responses={202: PolymorphicProxySerializer(
                       component_name="DispatchAnswer", resource_type_field_name=None,
                       serializers=[DispatchedSerializer, BatchDispatchedSerializer]),
                              200: ExecutionSerializer})
    @action(detail=True, methods=["post"], url_path="dispatch", url_name="dispatch",
            throttle_classes=dispatch_throttles())
    def dispatch_trigger(self, request, name=None):
        """Queue the function with a JSON payload; answers 202 with the task id at once.

        `?wait=S` waits up to S seconds and answers 200 with the execution when it finished.
        """
        # Every query parameter is checked before anything is queued: a bad one runs nothing.
        refuse_unknown(request.query_params, accepted=("wait", "format"), what="query parameter")
        wait = wait_seconds(request)
        trigger = self.get_object()
        limit = settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES * settings.KUBEFUNCTION_MAX_BATCH
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            raise PayloadTooLarge("the request body is over the size limit.", field="payload")
        form = DispatchSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        payloads = form.validated_data.get("payloads") or [
            form.validated_data.get("payload", execution_services.USE_DEFAULT)]
        batched = "payloads" in form.validated_data
        if wait and batched:
            raise InvalidInput("wait works with one `payload`; a batch answers at once (follow "
                               "it at /api/batches/<id>/).", field="wait")
        header = request.headers.get(idempotency.KEY_HEADER)
        if header is not None and batched:
            raise InvalidInput("a batch takes `idempotency_keys`, one per payload, not the "
                               "Idempotency-Key header.", field=idempotency.KEY_HEADER)
        keys = form.validated_data.get("idempotency_keys") or (
            None if header is None else [header])
        executions = execution_services.execution_dispatch_many(
            trigger=trigger, payloads=payloads, user=request.user, source="api",
            callback_url=form.validated_data.get("callback_url", ""), idempotency_keys=keys)
        if batched:
            batch = next((e.batch_id for e in executions if not e.replayed), None)
            return Response({"count": len(executions), "batch": batch and {
                "id": str(batch), "url": request.build_absolute_uri(
                    reverse("batch-detail", kwargs={"pk": batch}))},
                "executions": [self._dispatched(e) for e in executions]},
                status=status.HTTP_202_ACCEPTED)
        execution = executions[0]
        replayed = execution.replayed
        if wait:
            response = WaitingResponse(execution=execution, timeout=wait, answer=(
                lambda done: self._waited(done, replayed=replayed)))
        elif replayed:  # the key's first execution, as it stands now
            response = Response(self._state(execution, replayed=True),
                                status=status.HTTP_200_OK)
        else:
            response = Response(self._dispatched(execution), status=status.HTTP_202_ACCEPTED)
        if replayed:
            response[idempotency.REPLAYED_HEADER] = "true"
        return response

    def _waited(self, execution, *, replayed: bool = False) -> tuple[dict, int]:
        """200 with the execution when it finished within the wait (or the dispatch gave back
        an earlier one for its idempotency key), else 202 as without one."""
        if execution.is_finished or replayed:
            return self._state(execution, replayed=replayed), status.HTTP_200_OK
        return self._dispatched(execution), status.HTTP_202_ACCEPTED

    def _state(self, execution, *, replayed: bool = False) -> dict:
        data = ExecutionSerializer(execution, context={"request": self.request}).data
        return {**data, "replayed": replayed}

    def _dispatched(self, execution) -> dict:
        url = reverse("execution-detail", kwargs={"task_id": execution.task_id})
        return {"task_id": execution.task_id, "execution_id": str(execution.pk),
                "status": execution.status, "result_url": self.request.build_absolute_uri(url),
                "replayed": execution.replayed}


class ApiKeyViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                    mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Your scoped API keys (docs/security.md, "API keys"): POST makes one and shows the key
    once; DELETE revokes it (the record stays, with `revoked_at`). Only your own login, session
    or token manages keys: a key cannot."""

    serializer_class = ApiKeySerializer
    key_scope_refused = True
    filterset_fields = ["name"]

    def get_queryset(self):
        user = self.request.user
        if not user.is_authenticated:  # the schema's generation, or nobody
            return ApiKey.objects.none()
        return ApiKey.objects.filter(user=user).prefetch_related("triggers", "functions")

    @extend_schema(request=ApiKeySerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request, *args, **kwargs):
        form = ApiKeySerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        key, raw = keys.api_key_create(
            user=request.user, name=data["name"], scopes=data["scopes"],
            triggers=data.get("triggers", []), functions=data.get("functions", []),
            expires_at=data.get("expires_at"))
        audit.added(user=request.user, obj=key, via=audit.API,
                    detail=f"scopes {', '.join(key.scopes)}")
        body = ApiKeySerializer(key, context=self.get_serializer_context()).data
        return Response({**body, "key": raw}, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        keys.api_key_revoke(key=instance)
        audit.changed(user=self.request.user, obj=instance, via=audit.API, detail="Revoked")
