"""Webhooks from third parties: a trigger authenticated by the sender's HMAC of the body.

Senders such as GitHub or Stripe cannot send our token header; they sign each delivery with a
secret shared at setup. A trigger with a `signature` scheme takes that signature instead of the
X-KubeFunction-Token header (and only it: a public flag does not open it):

- `github`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` (GitHub's docs,
  "Validating webhook deliveries").
- `stripe`: `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>[,v1=…]`;
  a timestamp more than STRIPE_TOLERANCE_SECONDS away from now is refused (replays), as
  Stripe's libraries do.
- `hmac-sha256`: the trigger's `signature_header` (default X-Signature-256) holds the hex
  HMAC-SHA256 of the body, optionally prefixed `sha256=`.

Comparisons are constant-time. The signature header reaches the function (it is the sender's,
not a credential of the platform's).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from django.http import HttpRequest

from .models import SignatureScheme, Trigger

STRIPE_TOLERANCE_SECONDS = 300
GENERIC_HEADER = "X-Signature-256"


class SignatureRefused(Exception):
    """The call's signature is missing or wrong (answered 401)."""


def _hex_hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())


def header_name(trigger: Trigger) -> str:
    """The header the trigger's scheme reads."""
    return {SignatureScheme.GITHUB: "X-Hub-Signature-256",
            SignatureScheme.STRIPE: "Stripe-Signature"}.get(
        trigger.signature, trigger.signature_header or GENERIC_HEADER)


def verify(trigger: Trigger, request: HttpRequest, body: bytes, *,
           now: float | None = None) -> None:
    """Return when the request carries a valid signature of `body` for the trigger's scheme;
    raise SignatureRefused saying what is wrong otherwise."""
    name = header_name(trigger)
    value = request.headers.get(name, "")
    if not trigger.signature_secret:
        raise SignatureRefused("this trigger has no signature secret set: it takes no calls.")
    if not value:
        raise SignatureRefused(f"send the body's signature in the {name} header.")
    secret = trigger.signature_secret
    if trigger.signature == SignatureScheme.STRIPE:
        _verify_stripe(secret, value, body, time.time() if now is None else now)
        return
    given = value.strip()
    if trigger.signature == SignatureScheme.GITHUB and not given.startswith("sha256="):
        raise SignatureRefused(f"the {name} header must read sha256=<hex digest>.")
    given = given.removeprefix("sha256=")
    if not _matches(_hex_hmac(secret, body), given):
        raise SignatureRefused(f"the {name} header does not match the body's signature.")


def _verify_stripe(secret: str, value: str, body: bytes, now: float) -> None:
    stamp, signatures = "", []
    for part in value.split(","):
        key, _, item = part.strip().partition("=")
        if key == "t":
            stamp = item
        elif key == "v1":
            signatures.append(item)
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not (stamp.isascii() and stamp.isdigit()) or not signatures:
        raise SignatureRefused("the Stripe-Signature header must read t=<time>,v1=<signature>.")
    if abs(now - int(stamp)) > STRIPE_TOLERANCE_SECONDS:
        raise SignatureRefused(f"the Stripe-Signature timestamp is more than "
                               f"{STRIPE_TOLERANCE_SECONDS} s away from now (a replay?).")
    expected = _hex_hmac(secret, stamp.encode() + b"." + body)
    if not any(_matches(expected, given) for given in signatures):
        raise SignatureRefused("no v1 signature in the Stripe-Signature header matches the body.")
