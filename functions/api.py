"""REST endpoints for functions: /api/functions/ and its versions."""

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from kubefunction import audit
from kubefunction.access import KeyScope, OwnerOrModelPermission, scope_to_owner
from kubefunction.api_input import declared_length, refuse_unknown, wait_seconds
from kubefunction.errors import PayloadTooLarge

from . import builds, selectors, services
from .artifacts import SourceSizeLimitHandler
from .models import Function
from .serializers import (
    ActivateSerializer,
    BuildSerializer,
    FunctionCreateSerializer,
    FunctionSerializer,
    SourceUploadSerializer,
    VersionSerializer,
)

BUILD_WAIT_PARAMETER = OpenApiParameter(
    "wait", OpenApiTypes.FLOAT, description="Seconds to wait for the version's build to end "
                                            "(bounded by KUBEFUNCTION_MAX_WAIT).")

# Room in a multipart body for the form fields besides the source (name, env_vars, ...).
FORM_ALLOWANCE_BYTES = 1024 * 1024


class SourceMultiPartParser(MultiPartParser):
    """Multipart with the source size limit (KUBEFUNCTION_MAX_SOURCE_BYTES) enforced before the
    body is read: from Content-Length first, then byte by byte as the files stream in."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        limit = settings.KUBEFUNCTION_MAX_SOURCE_BYTES
        length = declared_length(request)
        if length is not None and length > limit + FORM_ALLOWANCE_BYTES:
            raise PayloadTooLarge(
                f"the upload is {length} bytes; a source may be at most {limit} bytes.",
                field="source")
        request.upload_handlers = [SourceSizeLimitHandler(request, limit=limit),
                                   *request.upload_handlers]
        return super().parse(stream, media_type, parser_context)


class FunctionViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                      mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """Functions you own (with `functions.view_function`: all; docs/security.md). Create with a
    multipart upload of the source."""

    serializer_class = FunctionSerializer
    # Uploading a version, building, activating and editing all need ownership or
    # `functions.change_function`.
    permission_classes = [IsAuthenticated, KeyScope, OwnerOrModelPermission]
    lookup_field = "name"
    parser_classes = [SourceMultiPartParser, FormParser, JSONParser]
    filterset_fields = ["runtime", "mode"]

    def get_queryset(self):
        queryset = Function.objects.select_related("owner", "active_version")
        return scope_to_owner(queryset, self.request.user, "owner")

    @staticmethod
    def owner_id_of(function: Function) -> int:
        return function.owner_id

    @extend_schema(request=FunctionCreateSerializer, responses={201: FunctionSerializer},
                   parameters=[BUILD_WAIT_PARAMETER])
    def create(self, request, *args, **kwargs):
        """Register a function from a multipart upload. `?wait=S` waits up to S seconds for the
        first version's build to end (its `status` is then ready or failed, with `build_log`)."""
        # Query parameters are checked before anything is stored.
        refuse_unknown(request.query_params, accepted=("wait", "format"), what="query parameter")
        wait = wait_seconds(request)
        form = FunctionCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        upload = data.pop("source")
        version = services.function_register(
            owner=request.user, filename=upload.name, data=upload.read(),
            handler=data.pop("handler", None), mode=data.pop("mode", None), **data)
        audit.added(user=request.user, obj=version.function, via=audit.API,
                    detail=f"version {version.number} ({version.handler})")
        if wait:
            version = selectors.version_wait(version=version, timeout=wait)
        body = FunctionSerializer(version.function, context=self.get_serializer_context()).data
        body["version"] = VersionSerializer(version).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        before = audit.snapshot(serializer.instance, serializer.validated_data)
        serializer.instance = services.function_update(
            function=serializer.instance, **serializer.validated_data)
        audit.changed(user=self.request.user, obj=serializer.instance, via=audit.API, before=before)

    @extend_schema(methods=["get"], responses=VersionSerializer(many=True))
    @extend_schema(methods=["post"], request=SourceUploadSerializer,
                   responses={201: VersionSerializer}, parameters=[BUILD_WAIT_PARAMETER])
    # A plain list (no pages, no filters): the schema says so too.
    @action(detail=True, methods=["get", "post"], pagination_class=None, filter_backends=[])
    def versions(self, request, name=None):
        """List versions, or upload a new one (multipart `source`, optional `handler`, `mode`)."""
        function = self.get_object()
        if request.method == "GET":
            versions = function.versions.select_related("function").order_by("-number")
            return Response(VersionSerializer(versions, many=True).data)
        # Query parameters are checked before anything is stored.
        refuse_unknown(request.query_params, accepted=("wait", "format"), what="query parameter")
        wait = wait_seconds(request)
        form = SourceUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["source"]
        version = services.version_create(
            function=function, filename=upload.name, data=upload.read(), user=request.user,
            handler=form.validated_data.get("handler"), mode=form.validated_data.get("mode"),
            convention=form.validated_data.get("convention"))
        audit.changed(user=request.user, obj=function, via=audit.API,
                      detail=f"Uploaded version {version.number} ({version.handler})")
        version.refresh_from_db()
        if wait:
            version = selectors.version_wait(version=version, timeout=wait)
        return Response(VersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=BuildSerializer, responses={202: VersionSerializer})
    @action(detail=True, methods=["post"])
    def build(self, request, name=None):
        """Build a version (default: the latest) for the function's runtime — the image for
        container runtimes — or retry its failed build. Answers 202; the version shows progress."""
        function = self.get_object()
        form = BuildSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        number = form.validated_data.get("version")
        versions = function.versions.select_related("function")
        version = get_object_or_404(versions, number=number) if number else versions.first()
        if version is None:
            raise NotFound("the function has no version.")
        builds.version_request_build(version=version)
        audit.changed(user=request.user, obj=function, via=audit.API,
                      detail=f"Requested a build of version {version.number}")
        version.refresh_from_db()
        return Response(VersionSerializer(version).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ActivateSerializer, responses=FunctionSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request, name=None):
        """Make an earlier (or later) ready version the active one: roll back or forward."""
        function = self.get_object()
        form = ActivateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        version = get_object_or_404(function.versions, number=form.validated_data["version"])
        services.version_activate(version=version)
        audit.changed(user=request.user, obj=function, via=audit.API,
                      detail=f"Activated version {version.number}")
        function.refresh_from_db()
        return Response(FunctionSerializer(function, context=self.get_serializer_context()).data)
