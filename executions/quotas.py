"""The daily quotas of an owner (functions/quotas.py has the limits and the hard caps):
executions dispatched and CPU seconds used per UTC day. A dispatch that would pass either is
refused with RateLimited (429) and a Retry-After until the next UTC midnight; counted only for
owners who have such a limit (one indexed count over today's executions of their functions)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Sum
from django.utils import timezone

from functions import quotas as function_quotas
from functions.models import Function
from kubefunction.errors import RateLimited

from .models import Execution


def _today(owner_id: int, now: datetime):
    return Execution.objects.filter(function__owner_id=owner_id,
                                    dispatched_at__gte=function_quotas.day_start(now))


def check_dispatch(function: Function, count: int, *, now: datetime | None = None) -> None:
    """RateLimited unless `function`'s owner may dispatch `count` more executions today."""
    limits = function_quotas.limits_for(function.owner_id)
    if not limits.any_daily:
        return
    now = now or timezone.now()
    retry = function_quotas.seconds_to_next_day(now)
    today = _today(function.owner_id, now)
    if limits.executions_per_day and today.count() + count > limits.executions_per_day:
        raise RateLimited(f"your quota is {limits.executions_per_day} executions per day (UTC): "
                          "it is spent for today.", retry_after=retry)
    if limits.cpu_seconds_per_day:
        used = today.aggregate(n=Sum("cpu_seconds"))["n"] or 0.0
        if used >= limits.cpu_seconds_per_day:
            raise RateLimited(f"your quota is {limits.cpu_seconds_per_day} CPU seconds per day "
                              f"(UTC): {used:.1f} s are used.", retry_after=retry)


def usage(owner, *, now: datetime | None = None) -> dict[str, float]:
    """What `owner` uses of each quota now."""
    now = now or timezone.now()
    today = _today(owner.pk, now)
    return {"functions": Function.objects.filter(owner=owner).count(),
            "stored_mb": round(function_quotas.stored_bytes(owner) / (1024 * 1024), 2),
            "executions_today": today.count(),
            "cpu_seconds_today": round(today.aggregate(n=Sum("cpu_seconds"))["n"] or 0.0, 1)}
