"""The daily quotas of an owner (functions/quotas.py has the limits and the hard caps):
executions dispatched and CPU seconds used per UTC day. A dispatch that would pass either is
refused with RateLimited (429) and a Retry-After until the next UTC midnight; counted only for
owners who have such a limit (one indexed count over today's executions of their functions)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, FloatField, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from functions import quotas as function_quotas
from functions.models import Function, FunctionVersion
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


def _per_owner(queryset, owner_path: str, total):
    """A subquery of `total` over `queryset`'s rows of the outer row's user."""
    rows = queryset.filter(**{owner_path: OuterRef("user")}).order_by().values(owner_path)
    return Coalesce(Subquery(rows.annotate(total=total).values("total")[:1]), 0,
                    output_field=FloatField())


def with_usage(quotas, *, now: datetime | None = None):
    """`OwnerQuota` rows annotated with what each owner uses now (one query for a whole page):
    `used_functions`, `used_bytes`, `used_executions` and `used_cpu_seconds` (today's)."""
    today = Execution.objects.filter(dispatched_at__gte=function_quotas.day_start(
        now or timezone.now()))
    return quotas.annotate(
        used_functions=_per_owner(Function.objects.all(), "owner", Count("pk")),
        used_bytes=_per_owner(FunctionVersion.objects.all(), "function__owner",
                              Sum("source_size")),
        used_executions=_per_owner(today, "function__owner", Count("pk")),
        used_cpu_seconds=_per_owner(today, "function__owner", Sum("cpu_seconds")))
