"""A fixed, mergeable latency histogram: log-scale buckets from which percentiles are estimated.

Durations are counted in integer microseconds into buckets `(BOUNDS_US[i-1], BOUNDS_US[i]]`
(bucket 0: ≤ 100 µs; the last: over ~12 days). The bounds grow by 2^(1/8) per bucket and also
hold every Prometheus bucket bound (`PROMETHEUS_BUCKETS`), so Prometheus' cumulative `le` counts
are exact sums of buckets. Counts add up across minutes, hours, functions and triggers: that is
what makes the rollup tables mergeable.

A percentile is estimated as `kubefunction.stats.percentile` would compute it over the samples
(linear interpolation between the two ranked samples around the fraction), with each sample
replaced by its bucket's geometric midpoint. Each midpoint is within `ERROR_BOUND` (4.6 %) of
every value in its bucket, and an interpolation of such stand-ins stays within the same relative
bound of the exact figure. Below 100 µs the error is at most 50 µs; over the top bound the
estimate is the top bound.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from datetime import timedelta

# Seconds; a FaaS spans warm invocations in milliseconds to cold container starts in seconds.
PROMETHEUS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                      60.0, 300.0)
_LOW_US = 100
_STEPS = 8  # buckets per doubling
_DOUBLINGS = 34  # 100 µs · 2^34 ≈ 19.9 days

BOUNDS_US: tuple[int, ...] = tuple(sorted(
    {round(_LOW_US * 2 ** (k / _STEPS)) for k in range(_DOUBLINGS * _STEPS + 1)}
    | {round(bound * 1_000_000) for bound in PROMETHEUS_BUCKETS}))
BUCKETS = len(BOUNDS_US) + 1  # the last one holds everything over the top bound

# The worst relative error of a bucket's midpoint against a value in it.
ERROR_BOUND = max(math.sqrt(high / low) - 1 for low, high in zip(BOUNDS_US, BOUNDS_US[1:],
                                                                  strict=False))


def micros(value: timedelta | float | None) -> int | None:
    """A duration (timedelta, or float seconds) in whole microseconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1)
    return round(value * 1_000_000)


def bucket_of(us: int) -> int:
    """The bucket holding a duration of `us` microseconds (≤ its upper bound)."""
    return bisect_left(BOUNDS_US, us)


def sql_thresholds() -> str:
    """Postgres: `width_bucket(us, <this>)` equals `bucket_of(us)` (lower bounds, inclusive)."""
    return "ARRAY[" + ",".join(str(bound + 1) for bound in BOUNDS_US) + "]::bigint[]"


def midpoint(bucket: int) -> float:
    """The bucket's stand-in value, in seconds."""
    if bucket <= 0:
        return BOUNDS_US[0] / 2e6
    if bucket >= len(BOUNDS_US):
        return BOUNDS_US[-1] / 1e6
    return math.sqrt(BOUNDS_US[bucket - 1] * BOUNDS_US[bucket]) / 1e6


def estimate(counts: Mapping[int, int], fraction: float) -> float | None:
    """The `fraction` percentile of the counted durations, in seconds; None when empty."""
    ordered = sorted((bucket, n) for bucket, n in counts.items() if n > 0)
    total = sum(n for _, n in ordered)
    if not total:
        return None
    position = (total - 1) * fraction
    low_rank, high_rank = math.floor(position), math.ceil(position)
    low = high = None
    seen = 0
    for bucket, n in ordered:
        seen += n
        if low is None and seen > low_rank:
            low = midpoint(bucket)
        if seen > high_rank:
            high = midpoint(bucket)
            break
    assert low is not None and high is not None
    return low + (high - low) * (position - low_rank)


def prometheus_buckets(counts: Mapping[int, int]) -> list[tuple[str, int]]:
    """Cumulative `(le, count)` pairs at `PROMETHEUS_BUCKETS`, then `+Inf`: exact."""
    ordered = sorted(counts.items())
    out, seen, i = [], 0, 0
    for bound in PROMETHEUS_BUCKETS:
        limit = bucket_of(round(bound * 1_000_000))
        while i < len(ordered) and ordered[i][0] <= limit:
            seen += ordered[i][1]
            i += 1
        out.append((str(bound), seen))
    out.append(("+Inf", sum(n for _, n in ordered)))
    return out


def merge(into: dict[int, int], rows: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Add `(bucket, count)` rows into a histogram."""
    for bucket, n in rows:
        into[bucket] = into.get(bucket, 0) + n
    return into
