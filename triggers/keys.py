"""Scoped API keys for service-to-service calls (`ApiKey`): `Authorization: Bearer
kf_<prefix>_<secret>`. A key acts as its user, sees what the user sees (404, as for the user,
for anything else) and may do only what its scopes allow (403 otherwise:
kubefunction.access.KeyScope): `invoke` the triggers (or the functions' triggers) it names,
`read` executions and batches, `deploy` functions, versions and triggers. Keys are stored as a
SHA-256 of the whole key (they are 256-bit random, so a fast hash is enough); an expired or
revoked key is refused with 401. User tokens and sessions keep working as before; keys cannot
make or revoke keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from kubefunction.errors import InvalidInput

from .models import ApiKey, KeyScope

KEYWORD = "Bearer"
KEY_START = "kf_"
# last_used_at is written at most this often per key (not one write per request).
LAST_USED_EVERY = timedelta(seconds=60)


def _sha256(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_check(*, user, scopes: list[str], triggers=(), functions=(),
                  expires_at=None) -> None:
    """InvalidInput (naming the field) unless these make a key `user` may have."""
    unknown = sorted(set(scopes) - set(KeyScope.values))
    if unknown or not scopes:
        raise InvalidInput(f"scopes are any of {', '.join(KeyScope.values)}"
                           + (f" (not {', '.join(unknown)})" if unknown else "") + ".",
                           field="scopes")
    if (triggers or functions) and KeyScope.INVOKE not in scopes:
        raise InvalidInput("triggers and functions are what the invoke scope may dispatch: add "
                           "invoke, or leave them out.", field="scopes")
    if KeyScope.INVOKE in scopes and not (triggers or functions):
        raise InvalidInput("an invoke key names the triggers (or functions) it may dispatch.",
                           field="triggers")
    for target, field in ((t.function for t in triggers), "triggers"), (functions, "functions"):
        if any(f.owner_id != user.pk for f in target):
            raise InvalidInput("a key may name only its user's own functions and triggers.",
                               field=field)
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at is in the past.", field="expires_at")


def api_key_create(*, user, name: str, scopes: list[str], triggers=(), functions=(),
                   expires_at=None) -> tuple[ApiKey, str]:
    """A new key for `user`; returns it and the key itself (shown once, never stored)."""
    triggers, functions = list(triggers), list(functions)
    api_key_check(user=user, scopes=scopes, triggers=triggers, functions=functions,
                  expires_at=expires_at)
    for _ in range(5):
        prefix = secrets.token_hex(4)
        raw = f"{KEY_START}{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(user=user, name=name, prefix=prefix,
                                            key_sha256=_sha256(raw), scopes=sorted(set(scopes)),
                                            expires_at=expires_at)
                key.triggers.set(triggers)
                key.functions.set(functions)
            return key, raw
        except IntegrityError:  # a prefix taken already: draw again
            continue
    raise RuntimeError("could not draw a free key prefix")


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_find(raw: str, *, touch: bool = True) -> ApiKey | None:
    """The live key `raw` is, or None (unknown, wrong, expired or revoked); `touch` records
    its use."""
    if not raw.startswith(KEY_START) or raw.count("_") < 2:
        return None
    prefix = raw[len(KEY_START):].split("_", 1)[0]
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.key_sha256, _sha256(raw)):
        return None
    now = timezone.now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now) \
            or not key.user.is_active:
        return None
    if touch and (key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def looks_like_key(header: str) -> bool:
    return header.startswith(f"{KEYWORD} {KEY_START}")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """DRF authentication by `Authorization: Bearer kf_...`; `request.auth` is the ApiKey."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not looks_like_key(header):
            return None  # another scheme's (Token, Basic) or none
        key = api_key_find(header[len(KEYWORD) + 1:].strip())
        if key is None:
            raise exceptions.AuthenticationFailed("unknown, expired or revoked API key.")
        return key.user, key

    def authenticate_header(self, request) -> str:
        return KEYWORD


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """The keys in the OpenAPI schema (drf-spectacular finds this by its target)."""

    target_class = "triggers.keys.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A scoped API key, kf_<prefix>_<secret> (POST /api/keys/)."}
