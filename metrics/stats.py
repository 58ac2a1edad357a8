"""Small statistics over timing samples, shared by the dispatch summary, load test and bench."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
