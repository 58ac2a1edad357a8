"""Small helpers shared by the apps' admin pages: JSON and text shown readable, capped counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
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


def shown(field: str, render: Callable[[Any], Any] | None = None, *, description: str,
          of: Callable[[Any], Any] | None = None) -> Callable:
    """A ModelAdmin display method showing one attribute of the object (or of `of(object)`),
    through `render` if given, e.g. `logs_text = shown("logs", pre, description="logs")`."""

    @admin.display(description=description)
    def display(model_admin, obj):
        value = getattr(of(obj) if of else obj, field)
        return render(value) if render else value

    return display


class CappedCountPaginator(Paginator):
    """Counts at most `cap` + 1 rows, so a changelist over millions of rows never runs a full
    COUNT(*); past the cap the page count is approximate."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: self.cap + 1].count()


class ReadOnlyAdmin:
    """ModelAdmin mixin for machine records: nothing is added, edited or deleted in the admin
    (its actions may still act on the records)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
