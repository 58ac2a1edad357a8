"""Reads over the executions: headline figures, time series and breakdowns for a time window.

A window is read from the rollup tables below their watermark (hour rows where the window holds
whole hours, minute rows at its edges) plus the raw executions of the last few minutes and of
the partial minute at its start (`metrics.rollup.plan`). Counts, rates and CPU are exact.
Duration percentiles — queue wait, run time, retrieval time and cold-start time — are estimated
from a log-scale histogram (`metrics.histogram`), within 4.6 % of the exact interpolated
percentile, whether the rows come from the rollup or raw: so a figure does not change when its
minute is rolled up.

On Postgres each read is two statements (counts; histograms with GROUPING SETS), the raw part
bucketed in SQL (`width_bucket` over the histogram's bounds). On the embedded SQLite database the
same figures are computed in Python from the rollup rows and at most `SQLITE_ROW_CAP` raw rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.utils import timezone

from executions.models import Execution, ExecutionStatus

from . import histogram, rollup
from .models import ExecutionRollup, LatencyRollup

FRACTIONS = (0.5, 0.95, 0.99)
DURATIONS = rollup.KINDS  # queue, run, total, init (cold start)
SQLITE_ROW_CAP = 200_000
WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24),
           "7d": timedelta(days=7)}
# Bucket width per window: about 24-48 buckets, so a chart stays readable.
BUCKETS = {"1h": 120, "6h": 900, "24h": 3600, "7d": 6 * 3600}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class Scope:
    """Which executions: all, one function's, or one trigger's, dispatched in [since, until)."""

    since: datetime
    until: datetime
    function_id: int | None = None
    trigger_id: int | None = None

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()


def scope_for(window: str = DEFAULT_WINDOW, *, function_id: int | None = None,
              trigger_id: int | None = None, now: datetime | None = None) -> Scope:
    """The scope of the last `window` (one of `WINDOWS`; an unknown one means the default)."""
    now = now or timezone.now()
    span = WINDOWS.get(window, WINDOWS[DEFAULT_WINDOW])
    return Scope(since=now - span, until=now, function_id=function_id, trigger_id=trigger_id)


_STATUS_FIELDS = {ExecutionStatus.SUCCEEDED: "succeeded", ExecutionStatus.FAILED: "failed",
                  ExecutionStatus.TIMED_OUT: "timed_out", ExecutionStatus.QUEUED: "queued",
                  ExecutionStatus.RUNNING: "running", ExecutionStatus.CANCELLED: "cancelled"}


@dataclass
class Summary:
    invocations: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    queued: int = 0
    running: int = 0
    cancelled: int = 0
    cold: int = 0
    warm: int = 0
    cpu_seconds: float = 0.0
    window_seconds: float = 0.0
    # {"queue": {0.5: s, 0.95: s, 0.99: s}, "run": …, "total": …, "init": …}; None: no values.
    percentiles: dict[str, dict[float, float | None]] = field(default_factory=dict)

    def add(self, status: str, cold: bool | None, count: int, cpu: float) -> None:
        self.invocations += count
        name = _STATUS_FIELDS.get(status)
        if name:
            setattr(self, name, getattr(self, name) + count)
        if cold is True:
            self.cold += count
        elif cold is False:
            self.warm += count
        self.cpu_seconds += cpu or 0.0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.timed_out + self.cancelled

    def _rate(self, count: int) -> float | None:
        return count / self.finished if self.finished else None

    @property
    def success_rate(self) -> float | None:
        return self._rate(self.succeeded)

    @property
    def error_rate(self) -> float | None:
        return self._rate(self.failed)

    @property
    def timeout_rate(self) -> float | None:
        return self._rate(self.timed_out)

    @property
    def cold_ratio(self) -> float | None:
        known = self.cold + self.warm
        return self.cold / known if known else None

    @property
    def throughput(self) -> float:
        """Invocations per second over the window."""
        return self.invocations / self.window_seconds if self.window_seconds else 0.0

    def p(self, duration: str, fraction: float) -> float | None:
        return self.percentiles.get(duration, {}).get(fraction)


@dataclass
class Bucket:
    start: datetime
    invocations: int = 0
    errors: int = 0  # failed or timed out
    cold: int = 0
    warm: int = 0
    cpu_seconds: float = 0.0
    total: dict[float, float | None] = field(default_factory=dict)  # fraction → seconds


def fractions(counts: dict[int, int] | None) -> dict[float, float | None]:
    return {f: histogram.estimate(counts or {}, f) for f in FRACTIONS}


def _postgres() -> bool:
    return connection.vendor == "postgresql"


# -- gathering: counts and histograms from the rollup and the raw executions ---------------------

@dataclass
class Gathered:
    """Counts per (bucket, group, status, cold): (count, cpu); histograms per grouping set."""

    counts: list[tuple] = field(default_factory=list)
    whole: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    by_bucket: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    by_group: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    by_group_kind: dict[tuple, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    sums: dict[tuple, float] = field(default_factory=lambda: defaultdict(float))  # (group, kind)


GROUPS = {"function": "function_id", "trigger": "trigger_id"}
SETS = ("whole", "bucket", "group", "group_kind")


def gather(since: datetime | None, until: datetime | None, *, function_id: int | None = None,
           trigger_id: int | None = None, width: int | None = None, group: str | None = None,
           sets: tuple[str, ...] = ("whole",)) -> Gathered:
    """Counts and duration histograms of the executions dispatched in [since, until)
    (None: unbounded), per time bucket of `width` seconds and/or per `group` ("function" or
    "trigger"). `sets` picks the histograms: "whole" (each duration), "bucket" and "group"
    (retrieval time per bucket / group), "group_kind" (each duration per group, with sums)."""
    read = rollup.plan(since, until, hours=width is None or width % rollup.HOUR == 0)
    filters = {"function_id": function_id, "trigger_id": trigger_id}
    if _postgres():
        return _gather_postgres(read, filters, width, group, sets)
    return _gather_python(read, filters, width, group, sets)


def _bucket_sql(column: str, width: int | None) -> str:
    if width is None:
        return "NULL::bigint"
    return f"(floor(date_part('epoch', {column}) / {int(width)})::bigint * {int(width)})"


def _parts(read: rollup.Plan, filters: dict, table: str) -> list[tuple[str, list, str]]:
    """(WHERE clause, params, source) for each part to read: rollup rows or raw executions."""
    extra, extra_params = "", []
    for column, value in filters.items():
        if value is not None:
            extra += f" AND {column} = %s"
            extra_params.append(value)
    parts = []
    rolled = []
    if read.hours:
        where, params = rollup.range_sql("start", read.hours)
        rolled.append((f"(width = {rollup.HOUR} AND {where})", params))
    if read.minutes:
        where, params = rollup.range_sql("start", read.minutes)
        rolled.append((f"(width = {rollup.MINUTE} AND {where})", params))
    if rolled:
        where = "(" + " OR ".join(w for w, _ in rolled) + ")"
        params = [p for _, ps in rolled for p in ps]
        parts.append((where + extra, params + extra_params, "rollup"))
    if read.raw:
        where, params = rollup.range_sql("dispatched_at", read.raw)
        parts.append((where + extra, params + extra_params, "raw"))
    return parts


def _gather_postgres(read: rollup.Plan, filters: dict, width: int | None, group: str | None,
                     sets: tuple[str, ...]) -> Gathered:
    out = Gathered()
    executions = Execution._meta.db_table
    g = GROUPS[group] if group else "NULL::bigint"
    count_parts, latency_parts, params_c, params_l = [], [], [], []
    for where, params, source in _parts(read, filters, executions):
        if source == "rollup":
            count_parts.append(
                f"SELECT {_bucket_sql('start', width)} AS b, {g} AS g, status, cold, count AS n, "
                f"cpu_seconds AS cpu FROM {ExecutionRollup._meta.db_table} WHERE {where}")
            latency_parts.append(
                f"SELECT {_bucket_sql('start', width)} AS b, {g} AS g, kind, bucket AS idx, "
                f"count AS n, sum_seconds AS s FROM {LatencyRollup._meta.db_table} "
                f"WHERE {where}")
        else:
            count_parts.append(
                f"SELECT {_bucket_sql('dispatched_at', width)} AS b, {g} AS g, status, cold, "
                f"1 AS n, coalesce(cpu_seconds, 0) AS cpu FROM {executions} WHERE {where}")
            latency_parts.append(
                f"SELECT {_bucket_sql('dispatched_at', width)} AS b, {g} AS g, k.kind, "
                f"width_bucket(k.us, {histogram.sql_thresholds()}) AS idx, 1 AS n, "
                f"k.us / 1e6 AS s "
                f"FROM {executions} CROSS JOIN LATERAL (VALUES {rollup.KINDS_SQL}) "
                f"AS k(kind, us) WHERE {where} AND k.us IS NOT NULL")
        params_c += params
        params_l += params
    if not count_parts:
        return out
    grouping = {"whole": ("kind", "idx"), "bucket": ("b", "tidx"), "group": ("g", "tidx"),
                "group_kind": ("g", "kind", "idx")}
    used = {column for s in sets for column in grouping[s]}
    flags = ", ".join(f"GROUPING({c})" if c in used else "1" for c in ("b", "g", "kind"))
    columns = ", ".join(c if c in used else "NULL" for c in ("b", "g", "kind", "idx", "tidx"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT b, g, status, cold, sum(n), sum(cpu) FROM ("
                       + " UNION ALL ".join(count_parts) + ") c GROUP BY 1, 2, 3, 4", params_c)
        out.counts = [(b, key, status, cold, int(n), float(cpu or 0))
                      for b, key, status, cold, n, cpu in cursor.fetchall()]
        cursor.execute(
            # One hash aggregate first (the grouping sets then sort only its few rows).
            f"SELECT {flags}, {columns}, sum(n), sum(s) FROM (SELECT *, CASE WHEN kind = "
            "'total' THEN idx END AS tidx FROM (SELECT b, g, kind, idx, sum(n) AS n, "
            "sum(s) AS s FROM (" + " UNION ALL ".join(latency_parts)
            + ") u GROUP BY 1, 2, 3, 4) p) h GROUP BY GROUPING SETS ("
            + ", ".join("(" + ", ".join(grouping[s]) + ")" for s in sets) + ")", params_l)
        for no_b, no_g, no_kind, b, key, kind, idx, tidx, n, s in cursor.fetchall():
            n = int(n)
            if no_b and no_g:  # whole
                out.whole[kind][idx] = n
            elif not no_b:
                if tidx is not None:
                    out.by_bucket[b][tidx] = n
            elif no_kind:
                if tidx is not None:
                    out.by_group[key][tidx] = n
            else:
                out.by_group_kind[(key, kind)][idx] = n
                out.sums[(key, kind)] += float(s or 0)
    return out


def _gather_python(read: rollup.Plan, filters: dict, width: int | None, group: str | None,
                   sets: tuple[str, ...]) -> Gathered:
    out = Gathered()
    counts: dict[tuple, list] = defaultdict(lambda: [0, 0.0])
    fine: dict[tuple, list] = defaultdict(lambda: [0, 0.0])  # (b, g, kind, idx) → (n, sum)
    conditions = {k: v for k, v in filters.items() if v is not None}

    def key_of(moment: datetime) -> int | None:
        return None if width is None else int(moment.timestamp()) // width * width

    def group_of(function_id: int, trigger_id: int | None) -> int | None:
        return {"function": function_id, "trigger": trigger_id}.get(group or "")

    rolled = [(width_, ranges) for width_, ranges in ((rollup.HOUR, read.hours),
                                                      (rollup.MINUTE, read.minutes)) if ranges]
    # Each rollup table into its cells: (bucket, group, its two key columns) → (count, its sum).
    tables = ((ExecutionRollup, counts, ("status", "cold", "cpu_seconds")),
              (LatencyRollup, fine, ("kind", "bucket", "sum_seconds")))
    for width_, ranges in rolled:
        where = rollup.range_q("start", ranges)
        for model, cells, (first, second, summed) in tables:
            for start, f, t, a, b, n, value in model.objects.filter(
                    where, width=width_, **conditions).values_list(
                    "start", "function_id", "trigger_id", first, second, "count", summed):
                cell = cells[(key_of(start), group_of(f, t), a, b)]
                cell[0] += n
                cell[1] += value
    if read.raw:
        rows = Execution.objects.filter(rollup.range_q("dispatched_at", read.raw), **conditions)\
            .order_by("-dispatched_at").values_list(
                "dispatched_at", "function_id", "trigger_id", "status", "cold", "cpu_seconds",
                "started_at", "finished_at", "init_seconds")[:SQLITE_ROW_CAP]
        for dispatched, f, t, status, cold, cpu, started, finished, init in rows:
            b, g = key_of(dispatched), group_of(f, t)
            cell = counts[(b, g, status, cold)]
            cell[0] += 1
            cell[1] += cpu or 0.0
            for kind, us in rollup.durations(dispatched, started, finished, init):
                cell = fine[(b, g, kind, histogram.bucket_of(us))]
                cell[0] += 1
                cell[1] += us / 1e6
    out.counts = [(*key, n, cpu) for key, (n, cpu) in counts.items()]
    for (b, g, kind, idx), (n, s) in fine.items():
        if "whole" in sets:
            histogram.merge(out.whole[kind], [(idx, n)])
        if kind == "total" and "bucket" in sets:
            histogram.merge(out.by_bucket[b], [(idx, n)])
        if kind == "total" and "group" in sets:
            histogram.merge(out.by_group[g], [(idx, n)])
        if "group_kind" in sets:
            histogram.merge(out.by_group_kind[(g, kind)], [(idx, n)])
            out.sums[(g, kind)] += s
    return out


# -- public selectors ----------------------------------------------------------------------------

def _gather_scope(scope: Scope, **options) -> Gathered:
    return gather(scope.since, scope.until, function_id=scope.function_id,
                  trigger_id=scope.trigger_id, **options)


def summary(scope: Scope) -> Summary:
    """Invocations, outcome counts and rates, cold ratio, CPU and duration percentiles."""
    found = _gather_scope(scope)
    result = Summary(window_seconds=scope.seconds)
    for _b, _g, status, cold, n, cpu in found.counts:
        result.add(status, cold, n, cpu)
    result.percentiles = {kind: fractions(found.whole.get(kind)) for kind in DURATIONS}
    return result


def breakdown(scope: Scope, *, by: str = "function", limit: int = 20) -> list[tuple[int, Summary]]:
    """Summary per function (`by="function"`) or per trigger, busiest first."""
    found = _gather_scope(scope, group=by, sets=("group_kind",))
    groups: dict[int, Summary] = {}
    for _b, key, status, cold, n, cpu in found.counts:
        if key is not None:
            groups.setdefault(key, Summary(window_seconds=scope.seconds)).add(status, cold, n,
                                                                              cpu)
    for key, one in groups.items():
        one.percentiles = {kind: fractions(found.by_group_kind.get((key, kind)))
                           for kind in DURATIONS}
    return sorted(groups.items(), key=lambda item: (-item[1].invocations, item[0]))[:limit]


def _bucket_starts(scope: Scope, width: int) -> list[datetime]:
    first = int(scope.since.timestamp()) // width * width
    last = int(scope.until.timestamp()) // width * width
    return [datetime.fromtimestamp(t, tz=UTC) for t in range(first, last + 1, width)]


def _buckets(scope: Scope, width: int, found: Gathered) -> list[Bucket]:
    buckets = {int(start.timestamp()): Bucket(start=start)
               for start in _bucket_starts(scope, width)}
    for key, _g, status, cold, n, cpu in found.counts:
        bucket = buckets.setdefault(int(key), Bucket(
            start=datetime.fromtimestamp(int(key), tz=UTC)))
        bucket.invocations += n
        bucket.errors += n if status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT) else 0
        bucket.cold += n if cold is True else 0
        bucket.warm += n if cold is False else 0
        bucket.cpu_seconds += cpu
    for key, bucket in buckets.items():
        bucket.total = fractions(found.by_bucket.get(key))
    return sorted(buckets.values(), key=lambda b: b.start)


def timeseries(scope: Scope, *, width: int) -> list[Bucket]:
    """One bucket per `width` seconds over the scope (empty buckets included), oldest first."""
    return _buckets(scope, width, _gather_scope(scope, width=width, sets=("bucket",)))


@dataclass
class Overview:
    summary: Summary
    buckets: list[Bucket]
    functions: list[tuple[int, Summary]]


def overview(scope: Scope, *, width: int, functions: int = 10) -> Overview:
    """Summary, time series and busiest functions of a scope (what a dashboard shows), read in
    one pass: counts per (bucket, function) cell add up to all three."""
    sets = ("whole", "bucket", "group") if functions else ("whole", "bucket")
    found = _gather_scope(scope, width=width, group="function" if functions else None,
                          sets=sets)
    whole = Summary(window_seconds=scope.seconds)
    groups: dict[int, Summary] = {}
    for _b, key, status, cold, n, cpu in found.counts:
        whole.add(status, cold, n, cpu)
        if functions and key is not None:
            groups.setdefault(key, Summary(window_seconds=scope.seconds)).add(status, cold, n,
                                                                              cpu)
    whole.percentiles = {kind: fractions(found.whole.get(kind)) for kind in DURATIONS}
    busiest = sorted(groups.items(), key=lambda item: (-item[1].invocations, item[0]))
    busiest = busiest[:functions]
    for key, one in busiest:
        one.percentiles["total"] = fractions(found.by_group.get(key))
    return Overview(summary=whole, buckets=_buckets(scope, width, found), functions=busiest)
