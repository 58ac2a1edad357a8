"""`GET /metrics`: the Prometheus text exposition."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from .prometheus import exposition


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Open when `KUBEFUNCTION_METRICS_TOKEN` is empty, else `Authorization: Bearer <token>`."""
    token = settings.KUBEFUNCTION_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            response = HttpResponse("a bearer token is required\n", status=401,
                                    content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
