"""Reads over the executions table: headline figures and time series for a time window.

On Postgres everything is computed in the database, percentiles included (`percentile_cont` over
an array of fractions: one sort per duration), and the rows of a window are found through the
index on `dispatched_at` (or `(function, -dispatched_at)` / `(trigger, -dispatched_at)`). On the
embedded SQLite database, which has no percentile aggregate, the same figures are computed in
Python over the window's rows, bounded by `SQLITE_ROW_CAP` (the most recent rows win).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.utils import timezone

from executions.models import Execution, ExecutionStatus

from .stats import percentile

FRACTIONS = (0.5, 0.95, 0.99)
DURATIONS = ("queue", "run", "total")
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


@dataclass
class Summary:
    invocations: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    queued: int = 0
    running: int = 0
    cold: int = 0
    warm: int = 0
    cpu_seconds: float = 0.0
    window_seconds: float = 0.0
    # {"queue": {0.5: s, 0.95: s, 0.99: s}, "run": …, "total": …}; None when nothing finished.
    percentiles: dict[str, dict[float, float | None]] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.timed_out

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


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _where(scope: Scope) -> tuple[str, list]:
    clauses, params = ["dispatched_at >= %s", "dispatched_at < %s"], [scope.since, scope.until]
    if scope.function_id is not None:
        clauses.append("function_id = %s")
        params.append(scope.function_id)
    if scope.trigger_id is not None:
        clauses.append("trigger_id = %s")
        params.append(scope.trigger_id)
    return " AND ".join(clauses), params


_SECONDS = {
    "queue": "date_part('epoch', started_at - dispatched_at)",
    "run": "date_part('epoch', finished_at - started_at)",
    "total": "date_part('epoch', finished_at - dispatched_at)",
}
_FRACTIONS_SQL = "ARRAY[" + ", ".join(str(f) for f in FRACTIONS) + "]::float8[]"


def _percentiles_sql(expression: str) -> str:
    return f"percentile_cont({_FRACTIONS_SQL}) WITHIN GROUP (ORDER BY {expression})"


def _counts_sql() -> str:
    s = ExecutionStatus
    return (
        "count(*), "
        f"count(*) FILTER (WHERE status = '{s.SUCCEEDED.value}'), "
        f"count(*) FILTER (WHERE status = '{s.FAILED.value}'), "
        f"count(*) FILTER (WHERE status = '{s.TIMED_OUT.value}'), "
        f"count(*) FILTER (WHERE status = '{s.QUEUED.value}'), "
        f"count(*) FILTER (WHERE status = '{s.RUNNING.value}'), "
        "count(*) FILTER (WHERE cold), count(*) FILTER (WHERE NOT cold), "
        "coalesce(sum(cpu_seconds), 0)"
    )


def _summary_from_row(row, window_seconds: float) -> Summary:
    summary = Summary(*row[:9], window_seconds=window_seconds)
    summary.cpu_seconds = float(summary.cpu_seconds or 0)
    for name, values in zip(DURATIONS, row[9:12], strict=True):
        summary.percentiles[name] = dict(zip(FRACTIONS, values or [None] * len(FRACTIONS),
                                             strict=True))
    return summary


# -- the embedded database: the same figures in Python ------------------------------------------

_ROW_FIELDS = ("function_id", "trigger_id", "dispatched_at", "started_at", "finished_at",
               "status", "cold", "cpu_seconds")


def _rows(scope: Scope) -> list[tuple]:
    queryset = Execution.objects.filter(dispatched_at__gte=scope.since,
                                        dispatched_at__lt=scope.until)
    if scope.function_id is not None:
        queryset = queryset.filter(function_id=scope.function_id)
    if scope.trigger_id is not None:
        queryset = queryset.filter(trigger_id=scope.trigger_id)
    return list(queryset.order_by("-dispatched_at").values_list(*_ROW_FIELDS)[:SQLITE_ROW_CAP])


def _seconds(start, end) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _summarise(rows: list[tuple], window_seconds: float) -> Summary:
    summary = Summary(window_seconds=window_seconds)
    samples: dict[str, list[float]] = {name: [] for name in DURATIONS}
    for _f, _t, dispatched, started, finished, status, cold, cpu in rows:
        summary.invocations += 1
        attr = {ExecutionStatus.SUCCEEDED: "succeeded", ExecutionStatus.FAILED: "failed",
                ExecutionStatus.TIMED_OUT: "timed_out", ExecutionStatus.QUEUED: "queued",
                ExecutionStatus.RUNNING: "running"}.get(status)
        if attr:
            setattr(summary, attr, getattr(summary, attr) + 1)
        if cold is True:
            summary.cold += 1
        elif cold is False:
            summary.warm += 1
        summary.cpu_seconds += cpu or 0.0
        for name, value in (("queue", _seconds(dispatched, started)),
                            ("run", _seconds(started, finished)),
                            ("total", _seconds(dispatched, finished))):
            if value is not None:
                samples[name].append(value)
    for name in DURATIONS:
        summary.percentiles[name] = {f: percentile(samples[name], f) for f in FRACTIONS}
    return summary


# -- public selectors ----------------------------------------------------------------------------

def summary(scope: Scope) -> Summary:
    """Invocations, outcome counts and rates, cold ratio, CPU and duration percentiles."""
    if not _postgres():
        return _summarise(_rows(scope), scope.seconds)
    where, params = _where(scope)
    sql = (f"SELECT {_counts_sql()}, "
           + ", ".join(_percentiles_sql(_SECONDS[name]) for name in DURATIONS)
           + f" FROM {Execution._meta.db_table} WHERE {where}")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return _summary_from_row(cursor.fetchone(), scope.seconds)


def breakdown(scope: Scope, *, by: str = "function", limit: int = 20) -> list[tuple[int, Summary]]:
    """Summary per function (`by="function"`) or per trigger, busiest first."""
    column = {"function": "function_id", "trigger": "trigger_id"}[by]
    if not _postgres():
        groups: dict[int, list[tuple]] = defaultdict(list)
        index = _ROW_FIELDS.index(column)
        for row in _rows(scope):
            if row[index] is not None:
                groups[row[index]].append(row)
        result = [(key, _summarise(rows, scope.seconds)) for key, rows in groups.items()]
        result.sort(key=lambda item: -item[1].invocations)
        return result[:limit]
    where, params = _where(scope)
    sql = (f"SELECT {column}, {_counts_sql()}, "
           + ", ".join(_percentiles_sql(_SECONDS[name]) for name in DURATIONS)
           + f" FROM {Execution._meta.db_table} WHERE {where} AND {column} IS NOT NULL"
           f" GROUP BY {column} ORDER BY count(*) DESC LIMIT %s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit])
        return [(row[0], _summary_from_row(row[1:], scope.seconds)) for row in cursor.fetchall()]


def _bucket_starts(scope: Scope, width: int) -> list[datetime]:
    first = int(scope.since.timestamp()) // width * width
    last = int(scope.until.timestamp()) // width * width
    return [datetime.fromtimestamp(t, tz=UTC) for t in range(first, last + 1, width)]


def timeseries(scope: Scope, *, width: int) -> list[Bucket]:
    """One bucket per `width` seconds over the scope (empty buckets included), oldest first."""
    buckets = {start: Bucket(start=start) for start in _bucket_starts(scope, width)}
    if _postgres():
        where, params = _where(scope)
        sql = (
            "SELECT floor(date_part('epoch', dispatched_at) / %s)::bigint * %s AS bucket, "
            "count(*), "
            f"count(*) FILTER (WHERE status IN ('{ExecutionStatus.FAILED.value}', "
            f"'{ExecutionStatus.TIMED_OUT.value}')), "
            "count(*) FILTER (WHERE cold), count(*) FILTER (WHERE NOT cold), "
            "coalesce(sum(cpu_seconds), 0), "
            f"{_percentiles_sql(_SECONDS['total'])} "
            f"FROM {Execution._meta.db_table} WHERE {where} GROUP BY 1 ORDER BY 1")
        with connection.cursor() as cursor:
            cursor.execute(sql, [width, width, *params])
            fetched = cursor.fetchall()
        for epoch, invocations, errors, cold, warm, cpu, total in fetched:
            start = datetime.fromtimestamp(int(epoch), tz=UTC)
            buckets[start] = Bucket(start=start, invocations=invocations, errors=errors,
                                    cold=cold, warm=warm, cpu_seconds=float(cpu),
                                    total=dict(zip(FRACTIONS, total or [None] * 3,
                                                   strict=True)))
        return sorted(buckets.values(), key=lambda b: b.start)
    samples: dict[datetime, list[float]] = defaultdict(list)
    for _f, _t, dispatched, _started, finished, status, cold, cpu in _rows(scope):
        start = datetime.fromtimestamp(int(dispatched.timestamp()) // width * width, tz=UTC)
        bucket = buckets.setdefault(start, Bucket(start=start))
        bucket.invocations += 1
        bucket.errors += status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT)
        bucket.cold += cold is True
        bucket.warm += cold is False
        bucket.cpu_seconds += cpu or 0.0
        total = _seconds(dispatched, finished)
        if total is not None:
            samples[start].append(total)
    for start, bucket in buckets.items():
        bucket.total = {f: percentile(samples[start], f) for f in FRACTIONS}
    return sorted(buckets.values(), key=lambda b: b.start)


# -- the dashboard: everything of a window in two statements ------------------------------------

# Above this many executions in a window, duration percentiles are computed over a uniform
# sample of about this many (chosen by bits of the random id, so the same rows every time);
# counts, rates and CPU stay exact. 10,000 samples put p95 within about ±1 %, p99 a few %.
SAMPLE_TARGET = 10_000
# The busiest-functions table shows one p95 per function: a smaller sample each suffices.
FUNCTION_SAMPLE_TARGET = 2_000


@dataclass
class Overview:
    summary: Summary
    buckets: list[Bucket]
    functions: list[tuple[int, Summary]]
    sampled: bool = False  # percentiles are over a sample of the window's executions


def _sample_bound(rows: int, target: int | None = None) -> int:
    """`_SAMPLE_KEY < bound` keeps about `target` (default SAMPLE_TARGET) of `rows` rows."""
    target = target or SAMPLE_TARGET
    return 1024 if rows <= target else max(1, -(-1024 * target // rows))


# A uniform number in 0..1023 per execution, from the first bits of its random (uuid4) id: the
# sample is the same rows on every read, and the covering index holds the id.
_SAMPLE_KEY = "(get_byte(uuid_send(id), 0) * 4 + get_byte(uuid_send(id), 1) / 64)"


def overview(scope: Scope, *, width: int, functions: int = 10) -> Overview:
    """Summary, time series and busiest functions of a scope (what a dashboard shows).

    On Postgres: one statement counts per (bucket, function) cell — the cells add up to the
    buckets, the functions and the whole window — and a second computes the percentiles with
    GROUPING SETS over a bounded sample. Both read only the covering index `exec_window`.
    """
    if not _postgres():
        return Overview(summary=summary(scope), buckets=timeseries(scope, width=width),
                        functions=breakdown(scope, by="function", limit=functions)
                        if functions else [])
    where, params = _where(scope)
    table = Execution._meta.db_table
    bucket_sql = "floor(date_part('epoch', dispatched_at) / %s)::bigint * %s"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {bucket_sql}, function_id, {_counts_sql()} FROM {table} "
                       f"WHERE {where} GROUP BY 1, 2", [width, width, *params])
        cells = cursor.fetchall()

        def add(rows):
            out = [0] * 9
            for row in rows:
                out = [a + (b or 0) for a, b in zip(out, row[2:11], strict=True)]
            return out

        total_counts = add(cells)
        bucket_rows: dict[int, list] = defaultdict(list)
        function_rows: dict[int, list] = defaultdict(list)
        for row in cells:
            bucket_rows[int(row[0])].append(row)
            function_rows[row[1]].append(row)
        by_bucket = {key: add(rows) for key, rows in bucket_rows.items()}
        by_function = sorted(((key, add(rows)) for key, rows in function_rows.items()),
                             key=lambda item: -item[1][0])[:functions]
        bound = _sample_bound(total_counts[0])
        # Each function is sampled by its own count, so a small one keeps all its rows.
        cases = " ".join(f"WHEN {int(pk)} THEN {_sample_bound(c[0], FUNCTION_SAMPLE_TARGET)}"
                         for pk, c in by_function)
        function_bound = f"(CASE function_id {cases} ELSE 0 END)" if cases else "0"
        window = f"{where} AND {_SAMPLE_KEY} < GREATEST(%s, {function_bound})"
        inner = (f"SELECT {bucket_sql} AS bucket, function_id, id, dispatched_at, started_at, "
                 f"finished_at FROM {table} WHERE {window}")
        percentiles = [f"{_percentiles_sql(_SECONDS[name])} FILTER (WHERE {_SAMPLE_KEY} < %s)"
                       for name in DURATIONS]
        percentiles.append(f"{_percentiles_sql(_SECONDS['total'])} "
                           f"FILTER (WHERE {_SAMPLE_KEY} < {function_bound})")
        cursor.execute(
            "SELECT GROUPING(bucket), GROUPING(function_id), bucket, function_id, "
            + ", ".join(percentiles) + f" FROM ({inner}) w "
            "GROUP BY GROUPING SETS ((bucket), (function_id), ())",
            [bound, bound, bound, width, width, *params, bound])
        measured = cursor.fetchall()

    def fractions(values):
        return dict(zip(FRACTIONS, values or [None] * len(FRACTIONS), strict=True))

    whole = _summary_from_row([*total_counts, None, None, None], scope.seconds)
    p_bucket, p_function = {}, {}
    for g_bucket, g_function, bucket, function_id, queue, run, total, f_total in measured:
        if g_bucket and g_function:
            whole.percentiles = {"queue": fractions(queue), "run": fractions(run),
                                 "total": fractions(total)}
        elif not g_bucket:
            p_bucket[int(bucket)] = fractions(total)
        else:
            p_function[function_id] = fractions(f_total)
    buckets = []
    for start in _bucket_starts(scope, width):
        key = int(start.timestamp())
        c = by_bucket.get(key)
        if c is None:
            buckets.append(Bucket(start=start))
            continue
        buckets.append(Bucket(start=start, invocations=c[0], errors=c[2] + c[3], cold=c[6],
                              warm=c[7], cpu_seconds=float(c[8]),
                              total=p_bucket.get(key, fractions(None))))
    busiest = []
    for pk, c in by_function:
        one = _summary_from_row([*c, None, None, None], scope.seconds)
        one.percentiles["total"] = p_function.get(pk, fractions(None))
        busiest.append((pk, one))
    sampled = bound < 1024 or any(c[0] > FUNCTION_SAMPLE_TARGET for _, c in by_function)
    return Overview(summary=whole, buckets=buckets, functions=busiest, sampled=sampled)
