"""Idempotent dispatch: an `Idempotency-Key` (a header on dispatch and webhook calls, a list for
a batch's payloads) names a request, so a client that retries it after a timeout or a lost answer
gets the execution its first try made instead of a second one.

- A key belongs to the function's owner and is remembered for
  KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS (`DispatchKey`); past that it names a new request.
  Keys sent to a webhook are kept apart, per trigger (`webhook_scope`): a webhook's callers
  (anyone, for a public trigger) can neither claim nor probe the keys of the owner's own
  dispatches or of the owner's other triggers.
- The same key with the same request gives back the first execution (its task id and state);
  with another request (another trigger, payload, or a webhook's method, path, query or body)
  it is refused with 409, naming the header.
- Race-safe: the key rows are inserted first, in the dispatch's transaction, with the unique
  constraint (owner, key) deciding which of concurrent dispatches made the execution; the others
  wait for its commit and read it (`INSERT ... ON CONFLICT DO NOTHING`, then a read of the keys).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from kubefunction.errors import Conflict, InvalidInput

from .models import DispatchKey, Execution
from .retention import payload_sha256

KEY_HEADER = "Idempotency-Key"
# On an answer that gives back an earlier execution (as Stripe names it).
REPLAYED_HEADER = "Idempotent-Replayed"
# Visible ASCII, as header values carry it (Stripe's and the IETF draft's keys fit).
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")


def key_check(value: object, *, field: str = KEY_HEADER) -> str:
    """A valid key, or InvalidInput (400) naming `field`."""
    if not isinstance(value, str) or not KEY_PATTERN.fullmatch(value):
        raise InvalidInput("an idempotency key is 1 to 255 visible ASCII characters (no spaces).",
                           field=field)
    return value


def request_sha256(trigger_id: int, payload: Any) -> str:
    """What a dispatch's key stands for: the trigger and the payload."""
    return payload_sha256({"trigger": trigger_id, "request": payload})


def webhook_sha256(trigger_id: int, *, method: str, path: str, query: str, body: bytes) -> str:
    """What a webhook call's key stands for: the trigger, method, path, query and body (not
    the headers or the time of the call, which a retry changes)."""
    return payload_sha256({"trigger": trigger_id, "webhook": [
        method, path, query, base64.b64encode(body).decode("ascii")]})


def webhook_scope(trigger_id: int) -> str:
    return f"webhook:{trigger_id}"


def window_start(now: datetime) -> datetime:
    return now - timedelta(hours=settings.KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS)


def claim(executions: Sequence[Execution], keys: Sequence[tuple[str, str] | None], *,
          owner_id: int, now: datetime, scope: str = "") -> tuple[list[Execution],
                                                                    list[Execution]]:
    """Inside the dispatch's transaction, before its executions are stored: record each keyed
    execution's (key, request hash). Returns (the executions to store and send, every
    execution in order): a key already held gives its first execution (`replayed` True) in
    place of the new one; one held for another request raises Conflict (409)."""
    wanted = {pair[0]: pair[1] for pair in keys if pair is not None}
    if len(wanted) < sum(pair is not None for pair in keys):
        raise InvalidInput("each payload of a batch needs its own idempotency key.",
                           field="idempotency_keys")
    # A key past the window names a new request.
    mine = DispatchKey.objects.filter(owner_id=owner_id, scope=scope, key__in=wanted)
    mine.filter(created_at__lt=window_start(now)).delete()
    DispatchKey.objects.bulk_create(
        [DispatchKey(owner_id=owner_id, scope=scope, key=pair[0], request_sha256=pair[1],
                     execution_id=execution.pk, created_at=now)
         for execution, pair in zip(executions, keys, strict=True) if pair is not None],
        ignore_conflicts=True)
    held = {key: (execution_id, digest) for key, execution_id, digest in
            mine.values_list("key", "execution_id", "request_sha256")}
    fresh, earlier = [], {}
    for execution, pair in zip(executions, keys, strict=True):
        if pair is None or held[pair[0]][0] == execution.pk:
            fresh.append(execution)
        elif held[pair[0]][1] != pair[1]:
            raise Conflict(f"the idempotency key {pair[0]!r} was used for another request "
                           f"(another trigger, payload or call) within "
                           f"{settings.KUBEFUNCTION_IDEMPOTENCY_WINDOW_HOURS} h: use a new key.",
                           field=KEY_HEADER)
        else:
            earlier[execution.pk] = held[pair[0]][0]
    if not earlier:
        return fresh, list(executions)
    first = Execution.objects.in_bulk(list(earlier.values()))
    for execution in first.values():
        execution.replayed = True
    return fresh, [first[earlier[e.pk]] if e.pk in earlier else e for e in executions]


def purge_expired_keys(*, now: datetime, limit: int) -> int:
    """Delete at most `limit` keys past the window (the retention task's step)."""
    old = list(DispatchKey.objects.filter(created_at__lt=window_start(now))
               .order_by().values_list("pk", flat=True)[:limit])
    if not old:
        return 0
    deleted, _ = DispatchKey.objects.filter(pk__in=old).delete()
    return deleted
