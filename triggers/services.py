"""Operations on triggers."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from executions.services import payload_check
from functions.models import Function
from kubefunction.errors import InvalidInput

from .models import Trigger

EDITABLE = ("function", "kind", "enabled", "default_payload", "description")


def _save(trigger: Trigger) -> Trigger:
    payload_check(trigger.default_payload, field="default_payload")
    try:
        trigger.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidInput(" ".join(messages), field=field) from exc
    trigger.save()
    return trigger


def trigger_create(*, name: str, function: Function, user=None, **fields) -> Trigger:
    """Map a new trigger name to a function."""
    if Trigger.objects.filter(name=name).exists():
        raise InvalidInput(f"a trigger named '{name}' already exists.", field="name")
    return _save(Trigger(name=name, function=function, created_by=user, **fields))


def trigger_update(*, trigger: Trigger, **changes) -> Trigger:
    """Change a trigger's function, kind, payload, description or enabled flag."""
    for key, value in changes.items():
        if key not in EDITABLE:
            raise InvalidInput(f"'{key}' cannot be changed.", field=key)
        setattr(trigger, key, value)
    return _save(trigger)
