"""Who may see and do what (docs/security.md, "Who sees what"), and how often.

One rule for the API and the admin: everyone sees and acts on what they own; seeing another
owner's rows needs the model's `view_<model>` permission, acting on them (edit, build,
activate, dispatch, re-run, regenerate a token) its `change_<model>`, deleting them its
`delete_<model>`. Superusers hold every permission. `is_staff` alone grants nothing but the
admin's door. Every API request also counts against a per-user (per-address when anonymous)
rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db.models import Model, QuerySet
from rest_framework import permissions, throttling

from .errors import InvalidInput

logger = logging.getLogger(__name__)

try:  # the shared cache is Redis when the broker is
    from redis.exceptions import RedisError as _CacheError
except ImportError:  # pragma: no cover - redis comes with celery[redis]
    _CacheError = OSError


def permission_name(model: type[Model], verb: str) -> str:
    """`app_label.<verb>_<model>`, e.g. `executions.change_execution`."""
    return f"{model._meta.app_label}.{verb}_{model._meta.model_name}"


def sees_all(user, model: type[Model]) -> bool:
    """May `user` see every owner's rows of `model` (a superuser, or `view_<model>`)?"""
    return bool(getattr(user, "is_authenticated", False)
                and user.has_perm(permission_name(model, "view")))


def scope_to_owner(queryset: QuerySet, user, owner_path: str) -> QuerySet:
    """Filter `queryset` to rows whose `owner_path` is `user`, unless `user` may see them all."""
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    if sees_all(user, queryset.model):
        return queryset
    return queryset.filter(**{owner_path: user})


def scope_to_actor(queryset: QuerySet, user, owner_path: str, verb: str = "change") -> QuerySet:
    """Rows `user` may act on with `verb`: their own, or all with `<verb>_<model>`."""
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    if user.has_perm(permission_name(queryset.model, verb)):
        return queryset
    return queryset.filter(**{owner_path: user})


def may_act(user, *, owner_id: int | None, model: type[Model], verb: str = "change") -> bool:
    """May `user` do `verb` to a row of `model` owned by `owner_id`?"""
    if not getattr(user, "is_authenticated", False):
        return False
    return owner_id == user.pk or user.has_perm(permission_name(model, verb))


class OwnerOrModelPermission(permissions.BasePermission):
    """Object permission of the viewsets: reading a row the queryset let through is allowed;
    anything else needs ownership or the model permission of `view.permission_verbs[action]`
    (default: `delete` for destroy, `change` otherwise). The viewset names the owner of an
    object with `owner_id_of(obj)`; the permission is checked on the viewset's own model."""

    message = "you may see this, but not change it: it belongs to another owner."

    def has_object_permission(self, request, view, obj) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        verbs: dict[str, str] = getattr(view, "permission_verbs", {})
        verb = verbs.get(view.action, "delete" if view.action == "destroy" else "change")
        owner_of: Callable[[Any], int | None] = view.owner_id_of
        return may_act(request.user, owner_id=owner_of(obj), model=type(obj), verb=verb)


class KeyScope(permissions.BasePermission):
    """What a scoped API key (`request.auth`, triggers/keys.py) may do; any other caller passes.

    A view names the scope each action needs: `key_read_scope` for reading (None: any key may
    see what its user sees), `key_scopes[action]` for the rest (default `deploy`); `invoke`
    is checked again on the object (`key.may_invoke(trigger)`, an execution by its trigger).
    With `key_invoke_reads` a view also lets an `invoke` key read one object of a trigger it
    may invoke (the result URL of what it dispatched). A view with `key_scope_refused` takes no
    key at all (managing keys)."""

    message = "this API key's scopes do not allow it."

    @staticmethod
    def _scope(request, view) -> str | None:
        if request.method in permissions.SAFE_METHODS:
            return getattr(view, "key_read_scope", None)
        return getattr(view, "key_scopes", {}).get(getattr(view, "action", None), "deploy")

    @staticmethod
    def _reads_by_invoke(key, request, view) -> bool:
        return (request.method in permissions.SAFE_METHODS
                and getattr(view, "key_invoke_reads", False)
                and getattr(view, "action", None) == "retrieve"
                and not key.allows(getattr(view, "key_read_scope", None) or "")
                and key.allows("invoke"))

    def has_permission(self, request, view) -> bool:
        key = request.auth
        if not getattr(key, "is_api_key", False):
            return True
        if getattr(view, "key_scope_refused", False):
            self.message = "API keys cannot manage API keys: use your own login or token."
            return False
        scope = self._scope(request, view)
        return scope is None or key.allows(scope) or self._reads_by_invoke(key, request, view)

    def has_object_permission(self, request, view, obj) -> bool:
        key = request.auth
        if not getattr(key, "is_api_key", False):
            return True
        if self._scope(request, view) != "invoke" and not self._reads_by_invoke(key, request,
                                                                               view):
            return True
        trigger = getattr(obj, "trigger", obj)
        return trigger is not None and key.may_invoke(trigger)


# --- Runtimes the operator allows (KUBEFUNCTION_ALLOWED_RUNTIMES) ------------------------------

def allowed_runtimes() -> list[str]:
    return list(settings.KUBEFUNCTION_ALLOWED_RUNTIMES)


def runtime_allowed(*, runtime: str, owner_is_superuser: bool) -> bool:
    """Functions of superusers (the operators) may use any runtime; everyone else's only those
    of KUBEFUNCTION_ALLOWED_RUNTIMES. An empty `runtime` is the default one."""
    effective = runtime or settings.KUBEFUNCTION_RUNTIME
    return owner_is_superuser or effective in settings.KUBEFUNCTION_ALLOWED_RUNTIMES


def runtime_refusal(runtime: str) -> str:
    """Why a function on `runtime` may not run: names the runtime and the setting."""
    effective = runtime or settings.KUBEFUNCTION_RUNTIME
    listed = ",".join(allowed_runtimes()) or "(none)"
    return (f"the {effective} runtime is not allowed on this platform "
            f"(KUBEFUNCTION_ALLOWED_RUNTIMES={listed}): choose one of those.")


def runtime_check(*, runtime: str, owner) -> str:
    """`runtime` when the function's `owner` may use it, else `InvalidInput` naming `runtime`."""
    if not runtime_allowed(runtime=runtime,
                           owner_is_superuser=bool(getattr(owner, "is_superuser", False))):
        raise InvalidInput(runtime_refusal(runtime), field="runtime")
    return runtime


class _FailOpen:
    """A throttle whose cache is away lets the request through: rate limits must not take the
    API down with the cache (which is the broker's Redis)."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except (_CacheError, OSError) as exc:
            logger.warning("throttle %s skipped, its cache is unavailable: %s", self.scope, exc)
            return True


def client_address(request) -> str:
    """The caller's address, counting KUBEFUNCTION_TRUSTED_PROXIES proxies in X-Forwarded-For
    exactly as the API's rates do (the login throttle uses it too)."""
    return throttling.BaseThrottle().get_ident(request)


class UserRateThrottle(_FailOpen, throttling.UserRateThrottle):
    """Scope "user": KUBEFUNCTION_THROTTLE_USER requests per authenticated user."""


class AnonRateThrottle(_FailOpen, throttling.AnonRateThrottle):
    """Scope "anon": KUBEFUNCTION_THROTTLE_ANON requests per client address (e.g. token logins)."""
