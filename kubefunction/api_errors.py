"""One DRF exception handler: domain errors become 4xx JSON bodies naming the field.

It also answers 503 (with `Retry-After`) when the database is away, instead of a 500: an
orchestrator or a client can retry. `server_error` is the project's `handler500`, the last resort
for errors raised outside a view (in a middleware), with the same rule.
"""

from __future__ import annotations

import logging
import sys

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import KubeFunctionError

logger = logging.getLogger(__name__)

# The errors Django raises when it cannot reach the database (refused, reset, timed out, closed).
DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 5
# Paths whose clients are programs: errors are JSON there, HTML pages elsewhere (the admin).
JSON_PATH_PREFIXES = ("/api/", "/t/", "/readyz", "/healthz")
DATABASE_UNAVAILABLE = {"detail": "The database is unavailable; try again shortly.",
                        "code": "database_unavailable"}


def wants_json(request: HttpRequest) -> bool:
    """True for the API, webhook and probe paths."""
    return request.path.startswith(JSON_PATH_PREFIXES)


def database_unavailable_response(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """503 with `Retry-After`: JSON for programs, a plain page for people."""
    logger.warning("database unavailable for %s %s: %s", request.method, request.path, exc)
    if wants_json(request):
        response = JsonResponse(DATABASE_UNAVAILABLE, status=503)
    else:
        response = HttpResponse(
            "<!doctype html><title>Service unavailable</title><h1>Service unavailable</h1>"
            "<p>The database is unavailable; try again in a few seconds.</p>",
            status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def exception_handler(exc, context):
    """Map `KubeFunctionError`, Django's `ValidationError` and refused request bodies to 4xx
    JSON, database outages to 503; defer to DRF otherwise."""
    if isinstance(exc, KubeFunctionError):
        response = Response(exc.as_dict(), status=exc.status_code)
        if exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        retry_after = getattr(exc, "retry_after", None)  # a rate or a daily quota: when to retry
        if retry_after is not None:
            response["Retry-After"] = str(int(retry_after))
        return response
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": str(exc), "code": "request_too_large"},
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):  # too many fields or files, a malformed body...
        return Response({"detail": str(exc), "code": "bad_request"},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DATABASE_ERRORS):
        request = context.get("request")
        logger.warning("database unavailable for %s: %s", getattr(request, "path", "?"), exc)
        return Response(DATABASE_UNAVAILABLE, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return drf_exception_handler(exc, context)


def server_error(request: HttpRequest) -> HttpResponse:
    """`handler500`: a database outage is a 503; other errors are a JSON 500 on the API paths
    and the plain `500.html` elsewhere. Neither says more than "server error": the traceback
    goes to the log (with secrets masked, kubefunction.log_redaction), never to the client."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DATABASE_ERRORS):
        return database_unavailable_response(request, exc)
    if wants_json(request):
        return JsonResponse({"detail": "Server error.", "code": "server_error"}, status=500)
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """`handler400` (a SuspiciousOperation outside DRF: a disallowed Host, an unreadable body):
    JSON on the API paths, the plain `400.html` elsewhere."""
    if wants_json(request):
        return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=400)
    return defaults.bad_request(request, exception)
