"""URL map: admin, API (with schema and docs), HTTP triggers, health."""

from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from executions.api import CallbackKeyView
from triggers.views import webhook

from .api import router
from .health import readyz
from .throttles import TokenLoginView


async def healthz(request):
    """Liveness: the web process answers (on its event loop, behind no sync work)."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    # Logins count against the anonymous rate and django-axes' lockout (kubefunction.access).
    path("api/auth/token/", TokenLoginView.as_view(), name="api-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/callbacks/key/", CallbackKeyView.as_view(), name="callback-key"),
    path("api/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),  # readiness: database, broker, runtime
    path("t/<str:name>", webhook, name="trigger-webhook"),  # HTTP triggers (docs/triggers.md)
    path("t/<str:name>/", webhook),
    path("t/<str:name>/<path:subpath>", webhook),  # a path after it: functions with a convention
    path("", include("metrics.urls")),  # /metrics: the Prometheus exposition
]

# A database outage raised outside a view is a 503 too (kubefunction.api_errors).
handler500 = "kubefunction.api_errors.server_error"
# JSON or a plain page, never a debug page (docs/security.md, "Webhooks and error pages").
handler400 = "kubefunction.api_errors.bad_request"
