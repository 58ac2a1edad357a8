"""REST endpoints for executions: list with filters, and read one by task id."""

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from kubefunction.access import scope_to_owner

from . import services
from .models import Execution, ExecutionStatus
from .serializers import (
    WAIT_PARAMETER,
    ExecutionSerializer,
    ExecutionSummarySerializer,
    wait_seconds,
)


class ExecutionFilter(django_filters.FilterSet):
    function = django_filters.CharFilter(field_name="function__name")
    trigger = django_filters.CharFilter(field_name="trigger__name")
    status = django_filters.ChoiceFilter(choices=ExecutionStatus.choices)

    class Meta:
        model = Execution
        fields = ["function", "trigger", "status"]


class NewestFirst(CursorPagination):
    """Cursor pages: no COUNT over a table that grows without end."""

    ordering = "-dispatched_at"
    page_size = 50
    max_page_size = 500
    page_size_query_param = "page_size"


class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Executions of your functions (staff: all), newest first; one by its Celery task id."""

    lookup_field = "task_id"
    lookup_value_regex = "[^/]+"
    filterset_class = ExecutionFilter
    pagination_class = NewestFirst

    def get_queryset(self):
        queryset = Execution.objects.select_related("function", "version", "trigger")
        if self.action == "list":
            queryset = queryset.defer("input", "output", "error", "logs")
        return scope_to_owner(queryset, self.request.user, "function__owner")

    def get_serializer_class(self):
        return ExecutionSummarySerializer if self.action == "list" else ExecutionSerializer

    @extend_schema(parameters=[WAIT_PARAMETER])
    def retrieve(self, request, *args, **kwargs):
        """One execution; `?wait=S` waits up to S seconds for it to finish."""
        execution = self.get_object()
        wait = wait_seconds(request)
        if wait:
            execution = services.execution_wait(execution=execution, timeout=wait)
        return Response(self.get_serializer(execution).data)
