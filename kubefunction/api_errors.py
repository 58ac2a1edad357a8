"""One DRF exception handler: domain errors become 4xx JSON bodies naming the field."""

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import KubeFunctionError


def exception_handler(exc, context):
    """Map `KubeFunctionError` and Django's `ValidationError` to JSON; defer to DRF otherwise."""
    if isinstance(exc, KubeFunctionError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
