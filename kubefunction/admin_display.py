"""Small helpers shared by the apps' admin pages: JSON and text shown readable, capped counts."""

from __future__ import annotations

import json

from django.core.paginator import Paginator
from django.utils.functional import cached_property
from django.utils.html import format_html


def pretty_json(value) -> str:
    """A JSON value indented inside <pre>, escaped."""
    if value is None:
        return "—"
    return format_html('<pre class="kf-pre">{}</pre>',
                       json.dumps(value, indent=2, ensure_ascii=False))


def pre(text: str) -> str:
    """Plain text (logs, tracebacks) inside <pre>, escaped."""
    return format_html('<pre class="kf-pre">{}</pre>', text) if text else "—"


class CappedCountPaginator(Paginator):
    """Counts at most `cap` + 1 rows, so a changelist over millions of rows never runs a full
    COUNT(*); past the cap the page count is approximate."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: self.cap + 1].count()
