"""Per-owner quotas: how many functions, how many MB of uploaded sources, how many executions
and CPU seconds per UTC day. The operator sets defaults (KUBEFUNCTION_QUOTA_*, 0: unlimited)
and may give an owner other limits (`OwnerQuota` in the admin; an empty field: the default,
0: unlimited). Superusers have none.

- Functions and stored MB are hard caps: registering or uploading past them is refused with
  403 (QuotaExceeded) and nothing is stored.
- Executions and CPU seconds per day are rates: a dispatch past them is refused with 429 and a
  Retry-After until the next UTC midnight (executions/quotas.py checks them); a schedule that
  fires past them records a skipped execution, as for the dispatch rate.
- executions/quotas.py adds the daily checks and `usage(user)`, what the admin's quota page
  (Executions › Owner quotas) shows beside the limits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Sum

from kubefunction.errors import QuotaExceeded

from .models import Function, FunctionVersion

# An owner's limits are read at most this often per process (dispatch pays no query for them).
CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class Limits:
    """0 means unlimited."""

    functions: int = 0
    stored_mb: int = 0
    executions_per_day: int = 0
    cpu_seconds_per_day: int = 0

    @property
    def any_daily(self) -> bool:
        return bool(self.executions_per_day or self.cpu_seconds_per_day)


NAMES = tuple(field.name for field in fields(Limits))
_cache: dict[int, tuple[float, Limits]] = {}


def defaults() -> Limits:
    return Limits(settings.KUBEFUNCTION_QUOTA_FUNCTIONS, settings.KUBEFUNCTION_QUOTA_STORED_MB,
                  settings.KUBEFUNCTION_QUOTA_EXECUTIONS_PER_DAY,
                  settings.KUBEFUNCTION_QUOTA_CPU_SECONDS_PER_DAY)


def limits_for(owner_id: int, *, fresh: bool = False) -> Limits:
    """The owner's limits: none for a superuser, else their `OwnerQuota`'s fields, else the
    operator's defaults; read at most every CACHE_SECONDS per process unless `fresh`."""
    now = time.monotonic()
    cached = _cache.get(owner_id)
    if cached is not None and cached[0] > now and not fresh:
        return cached[1]
    row = get_user_model().objects.filter(pk=owner_id).values_list(
        "is_superuser", *(f"quota__{name}" for name in NAMES)).first()  # one query
    limits = merged(row[1:], is_superuser=row[0]) if row is not None else defaults()
    _cache[owner_id] = (now + CACHE_SECONDS, limits)
    return limits


def merged(own: Sequence[int | None], *, is_superuser: bool) -> Limits:
    """An owner's limits from their quota's fields (in NAMES' order; None: the default)."""
    if is_superuser:
        return Limits()
    base = defaults()
    return Limits(*(getattr(base, name) if value is None else value
                    for name, value in zip(NAMES, own, strict=True)))


def forget(owner_id: int | None = None) -> None:
    """Drop this process's cached limits (of one owner, or all): a changed quota applies at
    once here, within CACHE_SECONDS elsewhere."""
    if owner_id is None:
        _cache.clear()
    else:
        _cache.pop(owner_id, None)


def day_start(now: datetime) -> datetime:
    """The start of the UTC day `now` is in."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def seconds_to_next_day(now: datetime) -> float:
    return (day_start(now) + timedelta(days=1) - now).total_seconds()


def stored_bytes(owner) -> int:
    return FunctionVersion.objects.filter(function__owner=owner).aggregate(
        n=Sum("source_size"))["n"] or 0


def check_new_function(owner) -> None:
    """QuotaExceeded unless `owner` may have one more function."""
    limits = limits_for(owner.pk, fresh=True)
    if limits.functions and Function.objects.filter(owner=owner).count() >= limits.functions:
        raise QuotaExceeded(f"your quota is {limits.functions} function(s): delete one or ask "
                            "the operator for more.", field="name")


def check_upload(owner, size: int) -> None:
    """QuotaExceeded unless `owner` may store `size` more bytes of sources."""
    limits = limits_for(owner.pk, fresh=True)
    if limits.stored_mb and stored_bytes(owner) + size > limits.stored_mb * 1024 * 1024:
        raise QuotaExceeded(f"your quota is {limits.stored_mb} MB of uploaded sources: this "
                            f"upload of {size} bytes would pass it.", field="source")
