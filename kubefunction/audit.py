"""The audit trail: who changed which function, version or trigger, when, what changed and
through which door.

One record for every door, Django's admin `LogEntry`: the admin writes its own for the edits
of its forms (as Django does); the API, the admin's actions and the commands write theirs
through `record`, naming the door ("via the API", "via the admin action Build image", "via
manage.py register_function"). They are read in the admin (Administration › Log entries, and
each object's History page). What changed is named field by field, with the old and the new
value of plain fields; a JSON field (environment variables, default payload) or a secret is
named only, never shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry

API = "the API"

# Fields whose values an audit record never shows (it names them).
UNSHOWN = {"env_vars", "default_payload", "signature_secret", "token", "token_hash",
           "cors_allowed_origins"}
SHOWN_MAX = 80


def _shown(value: object) -> str:
    if isinstance(value, (dict, list)):
        return "…"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 1] + "…"


def differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """`name: old → new` (or `name changed` for a field never shown) for each field whose
    value differs."""
    changed = []
    for name, old in before.items():
        new = after.get(name)
        if old == new:
            continue
        if name in UNSHOWN or isinstance(old, (dict, list)) or isinstance(new, (dict, list)):
            changed.append(f"{name} changed")
        else:
            changed.append(f"{name}: {_shown(old)} → {_shown(new)}")
    return changed


def snapshot(obj: object, fields: Iterable[str]) -> dict[str, Any]:
    """The values of `fields` on `obj` (a foreign key by its primary key)."""
    values = {}
    for name in fields:
        value = getattr(obj, name, None)
        values[name] = getattr(value, "pk", value)
    return values


def record(*, user, obj, action: int, message: str, via: str) -> None:
    """One audit record of `action` (ADDITION, CHANGE, DELETION) on `obj` by `user`; nothing
    for an anonymous caller (webhooks change no object)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return
    LogEntry.objects.log_actions(user_id=user.pk, queryset=[obj], action_flag=action,
                                 change_message=f"{message} (via {via})", single_object=True)


def added(*, user, obj, via: str, detail: str = "") -> None:
    record(user=user, obj=obj, action=ADDITION, via=via,
           message=f"Added{': ' + detail if detail else ''}")


def changed(*, user, obj, via: str, before: Mapping[str, Any] | None = None,
            detail: str = "") -> None:
    """A change: `detail` says what was done; `before` (field values before the change) adds
    each field that now differs. A change that changed nothing is not recorded."""
    parts = [detail] if detail else []
    if before is not None:
        parts += differences(before, snapshot(obj, before))
    if parts:
        record(user=user, obj=obj, action=CHANGE, via=via, message="; ".join(parts))


def deleted(*, user, obj, via: str) -> None:
    """Record before the delete (the record keeps the object's name and id)."""
    record(user=user, obj=obj, action=DELETION, via=via, message="Deleted")
