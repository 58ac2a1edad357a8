"""Server-side SVG charts: no JavaScript, no CDN, readable at a glance.

`chart()` draws lines and/or stacked bars over an x axis of times or numbers, with a title, y axis
ticks with the unit, x axis labels, a legend, and one element with class `kf-point` per data
point (each with a `<title>` tooltip), which the browser test counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 34, 58
COLOURS = {"ok": "#2e7d32", "error": "#c62828", "p50": "#1565c0", "p95": "#ef6c00",
           "p99": "#6a1b9a", "cold": "#0277bd", "warm": "#ffb300", "cpu": "#00897b",
           "grey": "#757575"}


@dataclass
class Series:
    name: str
    values: Sequence[float | None]
    colour: str
    kind: str = "line"  # "line" or "bar" (bars of the same chart stack)


def nice_max(value: float) -> float:
    """A round number ≥ value for the top of the y axis (1, 2, 2.5, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.3g}"


def _x_label(x) -> str:
    if isinstance(x, datetime):
        return x.strftime("%H:%M") if x.hour or x.minute else x.strftime("%d %b")
    return _fmt(x) if isinstance(x, int | float) else str(x)


def chart(*, title: str, xs: Sequence, series: Sequence[Series], unit: str,
          x_title: str = "", chart_id: str = "") -> SafeString:
    """An SVG chart of `series` (values aligned with `xs`); `unit` labels the y axis."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(xs), 1)
    bars = [s for s in series if s.kind == "bar"]
    lines = [s for s in series if s.kind == "line"]
    stacked = [sum(s.values[i] or 0 for s in bars) for i in range(len(xs))] if bars else []
    peak = max([*stacked, *(v for s in lines for v in s.values if v is not None), 0])
    top = nice_max(peak)
    slot = plot_w / n

    def x_at(i: int) -> float:
        return LEFT + slot * (i + 0.5)

    def y_at(v: float) -> float:
        return TOP + plot_h - (v / top) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="kf-chart" role="img" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
           + (f' id="{escape(chart_id)}"' if chart_id else "") + ">",
           f"<title>{escape(title)}</title>",
           f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" class="kf-title" '
           f'font-size="14" font-weight="bold" fill="currentColor">{escape(title)}</text>']
    # y axis: 5 ticks with grid lines, unit in the axis title
    for k in range(5):
        value = top * k / 4
        y = y_at(value)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#8884" stroke-width="1"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
                   f'fill="currentColor">{_fmt(value)}</text>')
    out.append(f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" font-size="11" '
               f'fill="currentColor" transform="rotate(-90 14 {TOP + plot_h / 2})" '
               f'class="kf-unit">{escape(unit)}</text>')
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" '
               'stroke="currentColor"/>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" '
               f'y2="{TOP + plot_h}" stroke="currentColor"/>')
    # x labels: at most ~8
    step = max(1, math.ceil(n / 8))
    for i in range(0, len(xs), step):
        out.append(f'<text x="{x_at(i):.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" '
                   f'font-size="10" fill="currentColor">{escape(_x_label(xs[i]))}</text>')
    if x_title:
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h + 30}" '
                   f'text-anchor="middle" font-size="11" fill="currentColor">'
                   f'{escape(x_title)}</text>')
    # stacked bars
    base = [0.0] * len(xs)
    bar_w = max(1.0, slot * 0.7)
    for s in bars:
        for i, value in enumerate(s.values):
            if not value:
                continue
            y_top, y_bottom = y_at(base[i] + value), y_at(base[i])
            out.append(f'<rect class="kf-point" x="{x_at(i) - bar_w / 2:.1f}" y="{y_top:.1f}" '
                       f'width="{bar_w:.1f}" height="{max(0.5, y_bottom - y_top):.1f}" '
                       f'fill="{s.colour}"><title>{escape(s.name)} at '
                       f'{escape(_x_label(xs[i]))}: {_fmt(value)} {escape(unit)}</title></rect>')
            base[i] += value
    # lines, broken where a value is missing
    for s in lines:
        path, points = [], []
        pen_down = False
        for i, value in enumerate(s.values):
            if value is None:
                pen_down = False
                continue
            x, y = x_at(i), y_at(value)
            path.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
            pen_down = True
            points.append(f'<circle class="kf-point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
                          f'fill="{s.colour}"><title>{escape(s.name)} at '
                          f'{escape(_x_label(xs[i]))}: {_fmt(value)} {escape(unit)}</title>'
                          "</circle>")
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{s.colour}" '
                       'stroke-width="2"/>')
        out.extend(points)
    # legend
    x = LEFT
    for s in series:
        out.append(f'<rect x="{x}" y="{HEIGHT - 16}" width="10" height="10" fill="{s.colour}"/>')
        out.append(f'<text x="{x + 14}" y="{HEIGHT - 7}" font-size="11" fill="currentColor" '
                   f'class="kf-legend">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    if not any(v for s in series for v in s.values):
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" '
                   'font-size="12" fill="#757575">no executions in this window</text>')
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 - every interpolated text is escaped above
