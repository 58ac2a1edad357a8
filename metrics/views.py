"""`GET /metrics`: the Prometheus text exposition."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from .prometheus import exposition


def _authorized(request: HttpRequest) -> bool:
    """`Authorization: Bearer <KUBEFUNCTION_METRICS_TOKEN>`, or KUBEFUNCTION_METRICS_PUBLIC.

    The exposition names every tenant's functions: the operator's token may read them all,
    nobody else (an empty token opens nothing)."""
    if settings.KUBEFUNCTION_METRICS_PUBLIC:
        return True
    token = settings.KUBEFUNCTION_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        detail = ("a bearer token is required (KUBEFUNCTION_METRICS_TOKEN)" if
                  settings.KUBEFUNCTION_METRICS_TOKEN else
                  "/metrics is closed: the operator sets KUBEFUNCTION_METRICS_TOKEN (or "
                  "KUBEFUNCTION_METRICS_PUBLIC=true)")
        response = HttpResponse(detail + "\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
