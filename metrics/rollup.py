"""Rollup tables: executions counted per minute and per hour, so that long windows and the
Prometheus scrape read a few thousand summary rows plus a few minutes of raw executions.

`ExecutionRollup` holds counts and CPU by (width, start, function, trigger, status, cold);
`LatencyRollup` holds histogram bucket counts (`metrics.histogram`) of the queue, run, total and
cold-start (init) durations by (width, start, function, trigger, kind, bucket). Both are keyed by
when the execution was *dispatched*, like every dashboard window.

`rollup_advance()` runs every minute (beat: `metrics.rollup`). Everything dispatched before
`RollupState.rolled_until` (the watermark, W) is in the tables; reads take the rollup below W
and the raw executions from W on (`plan`). W advances to

    min(now − LAG, the oldest execution still queued or running that is younger than STUCK_AFTER)

so a rolled minute normally holds only finished executions, which never change again, and reads
stay exact. Minutes and hours are recomputed from the executions table (delete + insert of the
range in one transaction), so a re-run is idempotent; rollers serialize on the state row
(`SELECT … FOR UPDATE`), so concurrent ones cannot interleave. Each run also recomputes the
rolled minutes that held queued or running executions (an execution stuck past STUCK_AFTER, or
one put back in the queue by a retry): until that run, such a minute is up to a minute stale.
`LAG` covers dispatch transactions that commit after the `dispatched_at` they stamped.
Minute rows older than `MINUTE_RETENTION` are dropped once their hour is rolled.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Min, Q
from django.db.models.functions import Trunc
from django.utils import timezone

from executions.models import Execution, ExecutionStatus

from . import histogram
from .models import ExecutionRollup, LatencyRollup, RollupState, RollupWidth

logger = logging.getLogger(__name__)

MINUTE, HOUR = RollupWidth.MINUTE.value, RollupWidth.HOUR.value
LAG = timedelta(minutes=2)
STUCK_AFTER = timedelta(hours=1)
MINUTE_RETENTION = timedelta(days=8)  # longer than the longest dashboard window (7 days)
CHUNK = timedelta(days=1)  # a backfill commits a day of executions at a time
UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
KINDS = ("queue", "run", "total", "init")

Range = tuple[datetime | None, datetime | None]  # [low, high); None: unbounded


def floor_to(moment: datetime, width: int) -> datetime:
    return datetime.fromtimestamp(int(moment.timestamp()) // width * width, tz=UTC)


def ceil_to(moment: datetime, width: int) -> datetime:
    floor = floor_to(moment, width)
    return floor if floor == moment else floor + timedelta(seconds=width)


def durations(dispatched, started, finished, init_seconds) -> list[tuple[str, int]]:
    """(kind, microseconds) of an execution's known durations."""
    out = []
    for kind, start, end in (("queue", dispatched, started), ("run", started, finished),
                             ("total", dispatched, finished)):
        if start is not None and end is not None:
            out.append((kind, histogram.micros(end - start)))
    if init_seconds is not None:
        out.append(("init", histogram.micros(init_seconds)))
    return out


# --- where to read from -------------------------------------------------------------------------

@dataclass
class Plan:
    """A window split into hour rows, minute rows and raw executions."""

    hours: list[Range] = field(default_factory=list)
    minutes: list[Range] = field(default_factory=list)
    raw: list[Range] = field(default_factory=list)


def rolled_until() -> datetime | None:
    return RollupState.objects.values_list("rolled_until", flat=True).first()


def plan(since: datetime | None, until: datetime | None, *, hours: bool = True,
         watermark: datetime | None = None) -> Plan:
    """How to read executions dispatched in [since, until) (None: unbounded) given the watermark
    (default: the stored one). `hours=False` keeps to minute rows (for charts whose buckets are
    not whole hours)."""
    watermark = rolled_until() if watermark is None else watermark
    if watermark is None:
        return Plan(raw=[(since, until)])
    low = None if since is None else ceil_to(since, MINUTE)
    high = watermark if until is None else min(floor_to(until, MINUTE), watermark)
    if low is not None and low >= high:
        return Plan(raw=[(since, until)])
    result = Plan()
    if since is not None and since < low:
        result.raw.append((since, low))
    if until is None or high < until:
        result.raw.append((high, until))
    hour_low = None if low is None else ceil_to(low, HOUR)
    hour_high = floor_to(high, HOUR)
    if hours and (hour_low is None or hour_low < hour_high):
        result.hours.append((hour_low, hour_high))
        if low is not None and low < hour_low:
            result.minutes.append((low, hour_low))
        if hour_high < high:
            result.minutes.append((hour_high, high))
    else:
        result.minutes.append((low, high))
    return result


def range_sql(column: str, ranges: list[Range]) -> tuple[str, list]:
    """`(column >= %s AND column < %s) OR …` for the ranges."""
    clauses, params = [], []
    for low, high in ranges:
        parts = []
        if low is not None:
            parts.append(f"{column} >= %s")
            params.append(low)
        if high is not None:
            parts.append(f"{column} < %s")
            params.append(high)
        clauses.append("(" + (" AND ".join(parts) or "TRUE") + ")")
    return "(" + " OR ".join(clauses) + ")", params


def range_q(column: str, ranges: list[Range]) -> Q:
    """The ORM's `range_sql`."""
    parts = []
    for low, high in ranges:
        bounds = {}
        if low is not None:
            bounds[f"{column}__gte"] = low
        if high is not None:
            bounds[f"{column}__lt"] = high
        if not bounds:
            return Q()  # unbounded: everything
        parts.append(Q(**bounds))
    query = Q(pk__in=[])
    for part in parts:
        query |= part
    return query


def _merge(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


# --- writing the rollup ---------------------------------------------------------------------------

_TABLE = Execution._meta.db_table
_US = "(extract(epoch from ({end} - {start})) * 1000000)::bigint"
KINDS_SQL = ", ".join([
    f"('queue', {_US.format(start='dispatched_at', end='started_at')})",
    f"('run', {_US.format(start='started_at', end='finished_at')})",
    f"('total', {_US.format(start='dispatched_at', end='finished_at')})",
    "('init', round(init_seconds * 1000000)::bigint)",
])


def _recompute_postgres(width: int, ranges: list[Range]) -> None:
    unit = {MINUTE: "minute", HOUR: "hour"}[width]
    start = f"date_trunc('{unit}', dispatched_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    where, params = range_sql("start", ranges)
    raw, raw_params = range_sql("dispatched_at", ranges)
    counts, latency = ExecutionRollup._meta.db_table, LatencyRollup._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {counts} WHERE width = %s AND {where}", [width, *params])
        cursor.execute(f"DELETE FROM {latency} WHERE width = %s AND {where}", [width, *params])
        cursor.execute(
            f"INSERT INTO {counts} (width, start, function_id, trigger_id, status, cold, count, "
            f"cpu_seconds) SELECT %s, {start}, function_id, trigger_id, status, cold, count(*), "
            f"coalesce(sum(cpu_seconds), 0) FROM {_TABLE} WHERE {raw} GROUP BY 2, 3, 4, 5, 6",
            [width, *raw_params])
        cursor.execute(
            f"INSERT INTO {latency} (width, start, function_id, trigger_id, kind, bucket, count, "
            f"sum_seconds) SELECT %s, {start}, function_id, trigger_id, k.kind, "
            f"width_bucket(k.us, {histogram.sql_thresholds()}), count(*), sum(k.us) / 1e6 "
            f"FROM {_TABLE} CROSS JOIN LATERAL (VALUES {KINDS_SQL}) AS k(kind, us) "
            f"WHERE {raw} AND k.us IS NOT NULL GROUP BY 2, 3, 4, 5, 6",
            [width, *raw_params])


def _recompute_python(width: int, ranges: list[Range]) -> None:
    ExecutionRollup.objects.filter(range_q("start", ranges), width=width).delete()
    LatencyRollup.objects.filter(range_q("start", ranges), width=width).delete()
    counts: dict[tuple, list] = defaultdict(lambda: [0, 0.0])
    latency: dict[tuple, list] = defaultdict(lambda: [0, 0])
    rows = Execution.objects.filter(range_q("dispatched_at", ranges)).values_list(
        "dispatched_at", "function_id", "trigger_id", "status", "cold", "cpu_seconds",
        "started_at", "finished_at", "init_seconds")
    for dispatched, function, trigger, status, cold, cpu, started, finished, init in \
            rows.iterator(chunk_size=5000):
        start = floor_to(dispatched, width)
        cell = counts[(start, function, trigger, status, cold)]
        cell[0] += 1
        cell[1] += cpu or 0.0
        for kind, us in durations(dispatched, started, finished, init):
            cell = latency[(start, function, trigger, kind, histogram.bucket_of(us))]
            cell[0] += 1
            cell[1] += us
    ExecutionRollup.objects.bulk_create(
        [ExecutionRollup(width=width, start=start, function_id=function, trigger_id=trigger,
                         status=status, cold=cold, count=n, cpu_seconds=cpu)
         for (start, function, trigger, status, cold), (n, cpu) in counts.items()],
        batch_size=1000)
    LatencyRollup.objects.bulk_create(
        [LatencyRollup(width=width, start=start, function_id=function, trigger_id=trigger,
                       kind=kind, bucket=bucket, count=n, sum_seconds=us / 1e6)
         for (start, function, trigger, kind, bucket), (n, us) in latency.items()],
        batch_size=1000)


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _recompute(width: int, ranges: list[Range]) -> None:
    if not ranges:
        return
    if _postgres():
        _recompute_postgres(width, ranges)
    else:
        _recompute_python(width, ranges)


@dataclass
class RollResult:
    rolled_until: datetime | None
    minutes: int = 0  # minutes recomputed
    hours: int = 0  # hours recomputed
    reopened: int = 0  # rolled minutes recomputed because they held unfinished executions


def _locked_state() -> RollupState:
    RollupState.objects.get_or_create(pk=1)
    return RollupState.objects.select_for_update().get(pk=1)


def _reopened(before: datetime) -> set[datetime]:
    """Rolled minutes (before `before`) that held, or now hold, unfinished executions."""
    held = set(ExecutionRollup.objects.filter(width=MINUTE, status__in=UNFINISHED,
                                              start__lt=before)
               .values_list("start", flat=True).distinct())
    now_held = set(Execution.objects.filter(status__in=UNFINISHED, dispatched_at__lt=before)
                   .annotate(minute=Trunc("dispatched_at", "minute", tzinfo=UTC))
                   .values_list("minute", flat=True).distinct())
    return held | now_held


def _step(now: datetime) -> tuple[RollResult, bool]:
    """One transaction: roll at most `CHUNK` further, recompute reopened minutes."""
    with transaction.atomic():
        state = _locked_state()
        horizon = floor_to(now - LAG, MINUTE)
        oldest = Execution.objects.filter(status__in=UNFINISHED,
                                          dispatched_at__gte=now - STUCK_AFTER) \
            .aggregate(m=Min("dispatched_at"))["m"]
        target = horizon if oldest is None else min(horizon, floor_to(oldest, MINUTE))
        start = state.rolled_until
        if start is None:
            first = Execution.objects.aggregate(m=Min("dispatched_at"))["m"]
            start = target if first is None else min(target, floor_to(first, HOUR))
        end = max(start, min(target, start + CHUNK))
        reopened = _reopened(start) if state.rolled_until is not None else set()
        minutes = _merge(([(start, end)] if end > start else [])
                         + [(m, m + timedelta(seconds=MINUTE)) for m in reopened])
        _recompute(MINUTE, minutes)
        hours = set()
        for low, high in minutes:
            hour = floor_to(low, HOUR)
            while hour < high:
                if hour + timedelta(seconds=HOUR) <= end:
                    hours.add(hour)
                hour += timedelta(seconds=HOUR)
        _recompute(HOUR, _merge([(h, h + timedelta(seconds=HOUR)) for h in hours]))
        old = min(now - MINUTE_RETENTION, floor_to(end, HOUR))
        ExecutionRollup.objects.filter(width=MINUTE, start__lt=old).delete()
        LatencyRollup.objects.filter(width=MINUTE, start__lt=old).delete()
        state.rolled_until = end
        state.save(update_fields=["rolled_until", "updated_at"])
    span = sum(((high - low) for low, high in minutes), timedelta())
    return RollResult(rolled_until=end, minutes=int(span.total_seconds()) // MINUTE,
                      hours=len(hours), reopened=len(reopened)), end >= target


def rollup_advance(*, now: datetime | None = None, max_steps: int = 400) -> RollResult:
    """Bring the rollup tables up to date (see the module docstring); idempotent."""
    now = now or timezone.now()
    total = RollResult(rolled_until=None)
    for _ in range(max_steps):
        result, done = _step(now)
        total.rolled_until = result.rolled_until
        total.minutes += result.minutes
        total.hours += result.hours
        total.reopened += result.reopened
        if done:
            break
    return total


def rollup_rebuild(*, now: datetime | None = None) -> RollResult:
    """Drop the rollup and build it again from the executions table (after rows were loaded
    with past `dispatched_at`, e.g. by a benchmark)."""
    with transaction.atomic():
        _locked_state()
        ExecutionRollup.objects.all().delete()
        LatencyRollup.objects.all().delete()
        RollupState.objects.filter(pk=1).update(rolled_until=None)
    return rollup_advance(now=now)
