"""Helpers for management commands: turn domain errors into CommandError (message, exit 1)."""

from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from .errors import KubeFunctionError


@contextmanager
def domain_errors_as_command_errors():
    """Re-raise a `KubeFunctionError` as a `CommandError` naming the field."""
    try:
        yield
    except KubeFunctionError as exc:
        prefix = f"{exc.field}: " if exc.field else ""
        raise CommandError(f"{prefix}{exc.message}") from exc


def command_user(username: str | None):
    """The user a command acts as: the named one, else the first superuser."""
    users = get_user_model().objects
    if username:
        try:
            return users.get(username=username)
        except users.model.DoesNotExist:
            raise CommandError(f"no user named '{username}'.") from None
    user = users.filter(is_superuser=True).order_by("pk").first()
    if user is None:
        raise CommandError("no superuser exists: create one (createsuperuser) or pass --owner.")
    return user
