"""Domain errors raised by services; the API and commands turn them into 4xx answers and messages.

Each carries the input field it is about (when there is one), so an API client is told which
field to fix.
"""

from __future__ import annotations


class KubeFunctionError(Exception):
    """Base of the errors a caller can act on. `status_code` is the HTTP answer it maps to."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict:
        key = self.field or "detail"
        return {key: [self.message]} if self.field else {"detail": self.message}


class InvalidInput(KubeFunctionError):
    """The request is malformed or refers to something that cannot be used."""


class NotFound(KubeFunctionError):
    status_code = 404


class Conflict(KubeFunctionError):
    """The request is valid but the current state forbids it (e.g. no ready version)."""

    status_code = 409


class PayloadTooLarge(KubeFunctionError):
    status_code = 413


class QuotaExceeded(KubeFunctionError):
    """An owner's quota (functions, stored bytes) would be passed: nothing is stored."""

    status_code = 403


class RateLimited(KubeFunctionError):
    """Too many dispatches: `retry_after` seconds until the next one is allowed."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = max(1, int(retry_after + 0.999))


class ServiceUnavailable(KubeFunctionError):
    """A service the request needs (the broker) is unreachable; trying later may work."""

    status_code = 503
