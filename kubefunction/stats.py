"""Small statistics over timing samples, shared by the apps: a batch's progress and the dispatch
summary (percentiles), the load test and the benchmarks (tables, reports)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The `fraction` (0..1) percentile by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(value: float | None) -> str:
    """Seconds as milliseconds for a table cell."""
    return "—" if value is None else f"{value * 1000:.1f} ms"


def floor_table(rows: Sequence[tuple[str, float | None]], floor: float) -> list[str]:
    """Lines of a table: each (name, seconds) with its time and its ratio to `floor` seconds."""
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{'':{width}}{'time':>12}  ratio to floor"]
    for name, seconds in rows:
        digits = 2 if seconds is None or seconds >= floor / 10 else 3  # small ratios: one more
        ratio = "—" if seconds is None else f"{seconds / floor:.{digits}f}×"
        lines.append(f"{name:{width}}{ms(seconds):>12}  {ratio}")
    return lines


def save_report(kind: str, figures: dict) -> Path:
    """Write a benchmark's figures to VAR_DIR/<kind>-<epoch seconds>.json; returns the path."""
    from django.conf import settings

    report = Path(settings.VAR_DIR) / f"{kind}-{int(time.time())}.json"
    report.write_text(json.dumps(figures, indent=2))
    return report
