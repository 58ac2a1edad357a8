"""The platform-wide per-user rate limit on dispatch (KUBEFUNCTION_DISPATCH_RATE, e.g. 600/min).

Each dispatched payload counts, so a batch of N payloads costs N. The limit is a token bucket
(the generic cell rate algorithm) of the rate's size that refills continuously: a full bucket
takes a batch of up to KUBEFUNCTION_MAX_BATCH payloads even when that is more than the rate,
and the caller then waits until the bucket has refilled by as much. State lives in the shared
cache (Redis when the broker is Redis, updated atomically by a Lua script; per process
otherwise), so every web process applies the same budget.

DRF views use `DispatchRateThrottle`; other views (the HTTP webhook) call `dispatch_wait`. The
run path charges a function's owner for each retry (`dispatch_reserve`: delayed, never lost) and
each schedule fire (`dispatch_wait`: skipped over the rate), so neither goes round the rate.

Logins are throttled by django-axes (settings: AXES_*): `TokenLoginView` and `lockout_response`
fit it to the token login and to the API's JSON answers.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpResponse, JsonResponse
from redis.exceptions import RedisError
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.throttling import SimpleRateThrottle

from .access import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LOCK = threading.Lock()
# KEYS[1]: the theoretical arrival time (TAT); ARGV: now, cost and period in seconds, and "1"
# to reserve. Answers "0" and stores the new TAT when allowed, else the seconds to wait; a
# reservation stores the new TAT either way and answers when its slot comes.
_GCRA_LUA = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local reserve = ARGV[4] == '1'
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local allowance = period - cost
if allowance < 0 then allowance = 0 end
local wait = (tat - now) - allowance
if wait > 0 and not reserve then return tostring(wait) end
local new = tat + cost
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
if wait > 0 then return tostring(wait) end
return '0'
"""


def dispatch_rate() -> tuple[int, int] | None:
    """(payloads, seconds) from KUBEFUNCTION_DISPATCH_RATE; None when it is empty (no limit)."""
    rate = settings.KUBEFUNCTION_DISPATCH_RATE.strip()
    if not rate:
        return None
    number, _, period = rate.partition("/")
    return int(number), _PERIODS[period.strip()[0]]


def _take(key: str, cost: float, period: float, *, reserve: bool = False) -> float:
    """Take `cost` seconds of budget from the bucket at `key`; 0 when allowed, else the wait.
    `reserve`: take it even when over the rate (the wait is then when the slot comes)."""
    now = time.time()
    cache = caches["default"]
    if isinstance(cache, RedisCache):
        full_key = cache.make_and_validate_key(key)
        try:
            client = cache._cache.get_client(full_key, write=True)
            return float(client.eval(_GCRA_LUA, 1, full_key, repr(now), repr(cost),
                                     repr(period), "1" if reserve else "0"))
        except RedisError as exc:
            # Fail open: an unreachable Redis must not turn dispatches into 500s (the dispatch
            # itself then answers 503 if the broker, the same Redis, is down).
            logger.warning("dispatch rate limit not applied: Redis unreachable (%s)", exc)
            return 0.0
    with _LOCK:  # the local-memory cache lives in this process: a lock makes it atomic
        tat = max(float(cache.get(key) or now), now)
        wait = (tat - now) - max(0.0, period - cost)
        if wait > 0 and not reserve:
            return wait
        cache.set(key, tat + cost, timeout=int(tat + cost - now) + 1)
        return max(0.0, wait)


def dispatch_wait(ident: str, cost: int = 1) -> float | None:
    """Charge `cost` dispatches to `ident`; None when allowed, else the seconds to wait."""
    rate = dispatch_rate()
    if rate is None:
        return None
    number, period = rate
    wait = _take(f"kf:dispatch-rate:{ident}", cost * period / number, period)
    return wait or None


def dispatch_reserve(ident: str, cost: int = 1) -> float:
    """Charge `cost` dispatches to `ident` even over the rate: the seconds until they fit in
    it (0 now). For work that must not be lost but must not jump the rate either: a retry is
    sent with this as its countdown."""
    rate = dispatch_rate()
    if rate is None:
        return 0.0
    number, period = rate
    return _take(f"kf:dispatch-rate:{ident}", cost * period / number, period, reserve=True)


def user_ident(user) -> str | None:
    """A rate-limit identity for a user: its id and when it joined (a recreated database
    reuses ids; the join time tells two accounts apart). None for an anonymous user."""
    if not getattr(user, "is_authenticated", False):
        return None
    joined = getattr(user, "date_joined", None)
    return f"user:{user.pk}:{joined.timestamp() if joined else ''}"


def payload_count(request) -> int:
    """How many dispatches a request asks for: the length of its `payloads` list, else 1."""
    data = getattr(request, "data", None)
    payloads = data.get("payloads") if isinstance(data, dict) else None
    if isinstance(payloads, list) and payloads:
        return min(len(payloads), settings.KUBEFUNCTION_MAX_BATCH)
    return 1


class DispatchRateThrottle(SimpleRateThrottle):
    """DRF throttle for the dispatch and re-run endpoints: 429 with `Retry-After` once a
    user's dispatches go over KUBEFUNCTION_DISPATCH_RATE (anonymous callers: per address)."""

    scope = "dispatch"

    def __init__(self) -> None:
        self.rate = settings.KUBEFUNCTION_DISPATCH_RATE.strip() or None
        self._wait: float | None = None

    def allow_request(self, request, view) -> bool:
        ident = user_ident(request.user) or f"ip:{self.get_ident(request)}"
        self._wait = dispatch_wait(ident, payload_count(request))
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait


def dispatch_throttles() -> list:
    """Throttles of a dispatching endpoint: the API-wide per-user rate plus the dispatch rate
    (an action's `throttle_classes` replaces the defaults instead of adding to them)."""
    return [UserRateThrottle, AnonRateThrottle, DispatchRateThrottle]


def lockout_response(request, original_response=None, credentials=None) -> HttpResponse:
    """django-axes' answer to a locked-out login (AXES_LOCKOUT_CALLABLE): 429 with Retry-After,
    JSON for the API, a plain message for the admin and browsable-API forms."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    message = (f"Too many failed logins for this username from your address: logins are "
               f"refused for {max(1, round(seconds / 60))} minute(s) "
               f"(KUBEFUNCTION_LOGIN_FAILURE_LIMIT={settings.AXES_FAILURE_LIMIT}).")
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message, "code": "login_locked"}, status=429)
    else:
        response = HttpResponse(message + "\n", status=429, content_type="text/plain")
    response["Retry-After"] = str(max(1, seconds))
    return response


class TokenLoginView(ObtainAuthToken):
    """`POST /api/auth/token/`: DRF's token login, throttled per client address (the anonymous
    rate) and locked out by django-axes like the other login forms."""

    throttle_classes = [AnonRateThrottle]

    def get_serializer_context(self):
        # django-axes flags the request it authenticates, and its middleware reads that flag
        # off Django's request, not DRF's wrapper: hand it Django's.
        return {**super().get_serializer_context(), "request": self.request._request}
