"""Who may see what, and how often: non-staff users see only what they own; staff see everything.
Every API request counts against a per-user (per-address when anonymous) rate."""

from __future__ import annotations

import logging

from django.db.models import QuerySet
from rest_framework import throttling

logger = logging.getLogger(__name__)

try:  # the shared cache is Redis when the broker is
    from redis.exceptions import RedisError as _CacheError
except ImportError:  # pragma: no cover - redis comes with celery[redis]
    _CacheError = OSError


def scope_to_owner(queryset: QuerySet, user, owner_path: str) -> QuerySet:
    """Filter `queryset` to rows whose `owner_path` is `user`, unless the user is staff."""
    if getattr(user, "is_staff", False):
        return queryset
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    return queryset.filter(**{owner_path: user})


class _FailOpen:
    """A throttle whose cache is away lets the request through: rate limits must not take the
    API down with the cache (which is the broker's Redis)."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except (_CacheError, OSError) as exc:
            logger.warning("throttle %s skipped, its cache is unavailable: %s", self.scope, exc)
            return True


class UserRateThrottle(_FailOpen, throttling.UserRateThrottle):
    """Scope "user": KUBEFUNCTION_THROTTLE_USER requests per authenticated user."""


class AnonRateThrottle(_FailOpen, throttling.AnonRateThrottle):
    """Scope "anon": KUBEFUNCTION_THROTTLE_ANON requests per client address (e.g. token logins)."""
