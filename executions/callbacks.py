"""Callbacks: POST an execution's result to the URL its dispatch named, signed and retried.

The URL is checked against `KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS` twice: when it is given
(`callback_url_check`, at dispatch or when a trigger is saved) and again before each delivery,
after resolving its host, so a name that later resolves to an internal address (a DNS trick) is
refused. The delivery connects to the very address that was checked, never follows a redirect,
and has short timeouts. See docs/callbacks.md for the payload and how a receiver verifies it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from kubefunction.errors import InvalidInput

from . import workers
from .models import CallbackStatus, Execution, ExecutionStatus

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-KubeFunction-Signature"
TIMESTAMP_HEADER = "X-KubeFunction-Timestamp"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_URL_LENGTH = 500  # Execution.callback_url and Trigger.callback_url
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CallbackRefused(Exception):
    """The URL may not be called (not allowed, or resolves outside the allow-list): permanent."""


# -- the allow-list ------------------------------------------------------------------------------

def allowed_patterns() -> list[str]:
    """The host patterns in force: the setting, plus loopback when the operator allows it
    (KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK, which `make up` sets for its README example)."""
    patterns = [p.strip().lower() for p in settings.KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS
                if p.strip()]
    if settings.KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK:
        patterns.extend(LOOPBACK_HOSTS)
    return patterns


def _split_pattern(pattern: str) -> tuple[str, str | None]:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 address → (host, port or None)."""
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        return host, (rest[1:] or None) if rest.startswith(":") else None
    if pattern.count(":") == 1:
        host, port = pattern.split(":")
        return host, port or None
    return pattern, None


def host_allowed(host: str, port: int) -> bool:
    """Whether `host:port` matches an allowed pattern (shell-style wildcards, e.g.
    `*.example.com`, `10.0.0.*:8080`; a pattern without a port allows any port)."""
    host = host.lower()
    for pattern in allowed_patterns():
        pattern_host, pattern_port = _split_pattern(pattern)
        if fnmatch.fnmatchcase(host, pattern_host) and pattern_port in (None, "*", str(port)):
            return True
    return False


def callback_url_check(url: str | None, *, field: str = "callback_url") -> str:
    """Return `url` when it may receive callbacks ("" for none); raise `InvalidInput` naming
    `field` otherwise: an http(s) URL without credentials whose host is allowed."""
    if not url:
        return ""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"give a URL of at most {MAX_URL_LENGTH} characters.", field=field)
    try:
        URLValidator(schemes=["http", "https"])(url)
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except (ValidationError, ValueError, KeyError):
        raise InvalidInput(f"'{url}' is not a valid http(s) URL.", field=field) from None
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("a callback URL may not hold credentials.", field=field)
    if not host_allowed(parts.hostname or "", port):
        raise InvalidInput(
            f"callbacks to {parts.hostname}:{port} are not allowed: an operator can add the host "
            "to KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS.", field=field)
    return url


@dataclass(frozen=True)
class Target:
    """Where a delivery connects: the checked address, with the URL's own host for the Host
    header and TLS."""

    scheme: str
    host: str
    port: int
    address: str
    path: str


def _address_allowed(address: str, port: int) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if ip.is_global:
        return True  # the name matched the list; a public address is what it names
    # Loopback, private, link-local, reserved: only when that address itself is allowed.
    return host_allowed(str(ip), port) or (ip.is_loopback and host_allowed("localhost", port))


def callback_target(url: str) -> Target:
    """Check `url` again and resolve its host; every address it resolves to must be allowed.

    Raises `CallbackRefused` (permanent) or `OSError` when the name does not resolve (retried).
    """
    try:
        callback_url_check(url)
    except InvalidInput as exc:
        raise CallbackRefused(exc.message) from exc
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    refused = [a for a in addresses if not _address_allowed(a, port)]
    if refused or not addresses:
        raise CallbackRefused(f"{host} resolves to {', '.join(refused) or 'nothing'}, which is "
                              "outside KUBEFUNCTION_CALLBACK_ALLOWED_HOSTS.")
    path = parts.path or "/"
    return Target(scheme=parts.scheme, host=host, port=port, address=addresses[0],
                  path=f"{path}?{parts.query}" if parts.query else path)


# -- the request ---------------------------------------------------------------------------------

def callback_secret() -> bytes:
    """The signing key: KUBEFUNCTION_CALLBACK_SECRET, else derived from SECRET_KEY as
    hex(HMAC-SHA256(SECRET_KEY, "kubefunction-callback-secret"))."""
    if settings.KUBEFUNCTION_CALLBACK_SECRET:
        return settings.KUBEFUNCTION_CALLBACK_SECRET.encode()
    return hmac.new(settings.SECRET_KEY.encode(), b"kubefunction-callback-secret",
                    hashlib.sha256).hexdigest().encode()


def callback_key(owner) -> bytes:
    """The key the callbacks of `owner`'s functions are signed with: hex(HMAC-SHA256(platform
    secret, "owner:<id>:<joined>")). Each owner verifies with their own key (GET
    /api/callbacks/key/), so knowing it never lets anyone forge another owner's callbacks."""
    joined = owner.date_joined.timestamp() if getattr(owner, "date_joined", None) else ""
    return hmac.new(callback_secret(), f"owner:{owner.pk}:{joined}".encode(),
                    hashlib.sha256).hexdigest().encode()


def callback_signature(body: bytes, timestamp: str, secret: bytes | None = None) -> str:
    """`sha256=` + hex HMAC-SHA256 of `"<timestamp>.<body>"`."""
    digest = hmac.new(secret or callback_secret(), timestamp.encode() + b"." + body,
                      hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def callback_payload(execution: Execution) -> dict:
    """What a receiver gets: the execution's identity, outcome and timings."""
    payload = {
        "event": "execution.finished",
        "task_id": execution.task_id,
        "execution_id": str(execution.pk),
        "status": execution.status,
        "function": execution.function.name,
        "version": execution.version.number,
        "trigger": execution.trigger.name if execution.trigger_id else None,
        "dispatched_at": _iso(execution.dispatched_at),
        "finished_at": _iso(execution.finished_at),
        "attempts": execution.attempt,
    }
    if execution.status == ExecutionStatus.SUCCEEDED:
        payload.update(output=execution.output, output_truncated=execution.output_truncated)
    else:
        payload.update(error_type=execution.error_type, error=execution.error)
    return payload


def _post(target: Target, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST to the checked address; (status, the first KiB of the answer)."""
    limit = settings.KUBEFUNCTION_CALLBACK_TIMEOUT
    timeout = urllib3.Timeout(connect=min(3.0, limit), read=limit)
    netloc = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != _DEFAULT_PORTS[target.scheme]:
        netloc = f"{netloc}:{target.port}"
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address, target.port, timeout=timeout, retries=False, maxsize=1,
            cert_reqs="CERT_REQUIRED", server_hostname=target.host,
            assert_hostname=target.host)
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout,
                                          retries=False, maxsize=1)
    try:
        response = pool.urlopen("POST", target.path, body=body,
                                headers={**headers, "Host": netloc}, redirect=False,
                                retries=False, preload_content=False)
        try:
            return response.status, response.read(1024)
        finally:
            response.release_conn()
    finally:
        pool.close()


# -- delivery state ------------------------------------------------------------------------------

def _send(execution_id: str) -> None:
    try:
        workers.send_callback(execution_id)
    except workers.BrokerUnreachable as exc:
        logger.exception("broker unreachable: callback of execution %s not sent", execution_id)
        Execution.objects.filter(pk=execution_id, callback_status=CallbackStatus.PENDING,
                                 callback_attempts=0).update(
            callback_status=CallbackStatus.FAILED,
            callback_error=f"not sent: the broker was unreachable ({exc})"[:2000])


def callback_schedule(*, execution_id: str) -> bool:
    """Mark a finished execution's callback pending and send its delivery task (after commit).
    False when it has no callback URL or its callback was already scheduled."""
    scheduled = Execution.objects.filter(pk=execution_id, callback_status=CallbackStatus.NONE)\
        .exclude(callback_url="").update(callback_status=CallbackStatus.PENDING)
    if scheduled:
        transaction.on_commit(lambda: _send(str(execution_id)))
    return bool(scheduled)


def _record(execution: Execution, attempt: int, status: str, error: str) -> None:
    """Store the outcome of attempt number `attempt`, unless another delivery already did."""
    Execution.objects.filter(pk=execution.pk, callback_status=CallbackStatus.PENDING,
                             callback_attempts=attempt - 1)\
        .update(callback_status=status, callback_attempts=attempt, callback_error=error[:2000])


def _attempt(execution: Execution, attempt: int) -> str:
    """Make one delivery; "" when the receiver answered 2xx, else what went wrong."""
    target = callback_target(execution.callback_url)
    body = json.dumps(callback_payload(execution), ensure_ascii=False,
                      separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "KubeFunction-Callback/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: callback_signature(body, timestamp,
                                             callback_key(execution.function.owner)),
        "X-KubeFunction-Execution": str(execution.pk),
        "X-KubeFunction-Attempt": str(attempt),
    }
    status, answer = _post(target, body, headers)
    if 200 <= status < 300:
        return ""
    note = " (redirects are not followed)" if 300 <= status < 400 else ""
    text = answer.decode("utf-8", "replace").strip()
    return f"HTTP {status}{note}" + (f": {text[:300]}" if text else "")


def callback_deliver(*, execution_id: str) -> float | None:
    """Make the next delivery attempt of a pending callback and record its outcome.

    Returns the seconds to wait before the next attempt, or None when there is none (delivered,
    failed for good, or nothing pending). Connection errors and non-2xx answers are retried with
    exponential backoff up to KUBEFUNCTION_CALLBACK_MAX_ATTEMPTS; a refused URL is not retried.
    """
    execution = Execution.objects.select_related("function__owner", "version", "trigger").filter(
        pk=execution_id, callback_status=CallbackStatus.PENDING).first()
    if execution is None:
        return None
    attempt = execution.callback_attempts + 1
    try:
        error = _attempt(execution, attempt)
    except CallbackRefused as exc:
        _record(execution, attempt, CallbackStatus.FAILED, f"refused: {exc}")
        return None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if not error:
        _record(execution, attempt, CallbackStatus.DELIVERED, "")
        return None
    if attempt >= settings.KUBEFUNCTION_CALLBACK_MAX_ATTEMPTS:
        _record(execution, attempt, CallbackStatus.FAILED, error)
        return None
    _record(execution, attempt, CallbackStatus.PENDING, error)
    return settings.KUBEFUNCTION_CALLBACK_BACKOFF_SECONDS * 2 ** (attempt - 1)
