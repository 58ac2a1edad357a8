"""The API router: every app's viewsets under /api/."""

from rest_framework.routers import DefaultRouter

from executions.api import BatchViewSet, ExecutionViewSet
from functions.api import FunctionViewSet
from triggers.api import ApiKeyViewSet, TriggerViewSet

router = DefaultRouter()
router.register("functions", FunctionViewSet, basename="function")
router.register("triggers", TriggerViewSet, basename="trigger")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("batches", BatchViewSet, basename="batch")
router.register("keys", ApiKeyViewSet, basename="apikey")
