"""Per-function concurrency limits (docs/executions.md).

A function with `max_concurrency = N` never has more than N executions `running`: the claim
counts them under a per-function lock (`executions.transitions.claim`). An invocation that finds
the function full stays `queued` — it is not an attempt and never fails for it
(`transitions.postpone`) — and its task is sent again to check later: after
`KUBEFUNCTION_CONCURRENCY_RECHECK_SECONDS`, backing off up to ten times that, with jitter so
that waiting invocations do not wake together. Every check is a fresh chance at a free slot, so
each invocation runs eventually; the order among waiting ones is approximately, not strictly,
first come first served. This module is the policy (how long to wait); the claim and the
postponement are `executions.transitions`'.
"""

from __future__ import annotations

import random

from django.conf import settings

MAX_BACKOFF_FACTOR = 10


def recheck_delay(waits: int) -> float:
    """Seconds before an invocation that found its function full for the `waits`-th time
    (0-based) checks again."""
    base = settings.KUBEFUNCTION_CONCURRENCY_RECHECK_SECONDS
    delay = min(base * MAX_BACKOFF_FACTOR, base * 1.5 ** min(waits, 20))
    return delay * random.uniform(0.5, 1.5)

