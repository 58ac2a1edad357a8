"""Operations on triggers: create, update, delete, webhook tokens, and the schedules that
django-celery-beat's database scheduler fires.

A schedule trigger owns one `PeriodicTask` (task `triggers.fire`, argument the trigger's id),
kept in step with the trigger in the same transaction: created, re-pointed at a new crontab,
enabled, disabled and deleted with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import zoneinfo
from urllib.parse import urlsplit

from celery.schedules import crontab
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from executions.callbacks import callback_url_check
from executions.models import Execution
from executions.services import execution_dispatch, execution_skip, payload_check
from functions.models import Function
from kubefunction.errors import InvalidInput, KubeFunctionError, RateLimited
from kubefunction.throttles import dispatch_wait, user_ident

from .models import PayloadFormat, SignatureScheme, Trigger, TriggerKind

logger = logging.getLogger(__name__)

EDITABLE = ("function", "kind", "enabled", "default_payload", "description", "public",
            "schedule", "timezone", "max_retries", "retry_backoff_seconds", "callback_url",
            "payload_format_version", "cors_allowed_origins", "signature", "signature_header",
            "signature_secret")
# HTTP-only options, reset (like `public`) when a trigger stops being an HTTP trigger.
HTTP_DEFAULTS = {"public": False, "payload_format_version": PayloadFormat.V1,
                 "cors_allowed_origins": [], "signature": SignatureScheme.NONE,
                 "signature_header": "", "signature_secret": ""}
# RFC 9110 field names (tokens); a few the generic signature scheme cannot be read from.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
ORIGIN_HOST = re.compile(r"[a-z0-9_.-]+|\[[0-9a-f:.]+\]")
RESERVED_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection",
                    "cookie", "authorization", "proxy-authorization", "origin", "prefer",
                    "te", "trailer", "upgrade", "keep-alive", "expect"}
FIRE_TASK = "triggers.fire"
CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
CRONTAB_MACROS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


# --- Tokens ------------------------------------------------------------------------------------

def token_hash(token: str) -> str:
    """The SHA-256 (hex) stored for a webhook token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(trigger: Trigger, token: str | None) -> bool:
    """Whether `token` is the trigger's webhook token (constant-time comparison of hashes)."""
    if not token or not trigger.token_hash:
        return False
    return hmac.compare_digest(token_hash(token), trigger.token_hash)


def webhook_url(trigger: Trigger, *, base: str | None = None) -> str:
    """The address of an HTTP trigger: KUBEFUNCTION_WEBHOOK_ORIGIN when set, else `base` (else
    KUBEFUNCTION_PUBLIC_URL), + /t/<name>.

    The separate origin wins over the caller's `base`: a link on the main origin would be served
    the sandboxed way (no cookies, CSP sandbox), which is not what an operator who set it wants
    callers to use."""
    if settings.KUBEFUNCTION_WEBHOOK_ORIGIN:
        root = settings.KUBEFUNCTION_WEBHOOK_ORIGIN
    else:
        root = settings.KUBEFUNCTION_PUBLIC_URL if base is None else base.rstrip("/")
    return root + reverse("trigger-webhook", kwargs={"name": trigger.name})


def _new_token(trigger: Trigger) -> str:
    token = secrets.token_urlsafe(32)
    trigger.token_hash = token_hash(token)
    return token


# --- Schedules ---------------------------------------------------------------------------------

def schedule_check(schedule: str) -> str:
    """A 5-field crontab (minute hour day-of-month month day-of-week), or a macro such as
    `@hourly`, normalised to single spaces; InvalidInput naming `schedule` otherwise."""
    text = " ".join((schedule or "").split())
    text = CRONTAB_MACROS.get(text.lower(), text)
    parts = text.split(" ") if text else []
    if len(parts) != 5:
        raise InvalidInput("a crontab has 5 fields: minute hour day-of-month month day-of-week "
                           f"(e.g. '*/5 * * * *'); got {len(parts)}.", field="schedule")
    for name, value in zip(CRONTAB_FIELDS, parts, strict=True):
        try:
            crontab(**{name: value})
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{name.replace('_', '-')} '{value}' is not valid: {exc}",
                               field="schedule") from exc
    try:
        crontab(**dict(zip(CRONTAB_FIELDS, parts, strict=True)))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"'{text}' is not a valid crontab: {exc}", field="schedule") from exc
    return text


def schedule_interval(schedule: str) -> int:
    """The shortest time in seconds between two fires of a checked 5-field crontab: the
    smallest gap between its fire times within a day, or to the first of the next day."""
    minute, hour, *_ = schedule.split(" ")
    cron = crontab(minute=minute, hour=hour)
    times = sorted(h * 60 + m for h in cron.hour for m in cron.minute)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    gaps.append(24 * 60 - times[-1] + times[0])
    return 60 * min(gaps)


def schedule_interval_check(schedule: str) -> None:
    """Refuse (naming `schedule`) a crontab that fires more often than
    KUBEFUNCTION_SCHEDULE_MIN_INTERVAL allows."""
    shortest = settings.KUBEFUNCTION_SCHEDULE_MIN_INTERVAL
    every = schedule_interval(schedule)
    if every < shortest:
        raise InvalidInput(f"'{schedule}' fires every {every} s at times; schedules may fire at "
                           f"most once every {shortest} s.", field="schedule")


def schedule_count_check(trigger: Trigger) -> None:
    """Refuse (naming `schedule`) one schedule trigger more than its function's owner may have
    (KUBEFUNCTION_MAX_SCHEDULES_PER_USER). Locks the owner's row first, so two concurrent
    creations cannot both take the last place."""
    from django.contrib.auth import get_user_model

    limit = settings.KUBEFUNCTION_MAX_SCHEDULES_PER_USER
    owner_id = Function.objects.filter(pk=trigger.function_id).values_list(
        "owner_id", flat=True).first()
    if limit <= 0 or owner_id is None:
        return
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))
    others = Trigger.objects.filter(kind=TriggerKind.SCHEDULE, function__owner_id=owner_id)
    if trigger.pk is not None:
        others = others.exclude(pk=trigger.pk)
    if others.count() >= limit:
        raise InvalidInput(f"the owner of '{trigger.function.name}' already has {limit} schedule "
                           f"triggers, the most allowed (KUBEFUNCTION_MAX_SCHEDULES_PER_USER); "
                           "delete or change one first.", field="schedule")


def retries_check(*, max_retries: int | None, retry_backoff_seconds: float | None) -> None:
    """Refuse retry settings outside KUBEFUNCTION_MAX_RETRIES_LIMIT and the backoff bounds
    (KUBEFUNCTION_RETRY_MIN_BACKOFF .. KUBEFUNCTION_RETRY_MAX_BACKOFF), naming the field."""
    limit = settings.KUBEFUNCTION_MAX_RETRIES_LIMIT
    if max_retries is not None and not 0 <= max_retries <= limit:
        raise InvalidInput(f"give 0 to {limit} retries (KUBEFUNCTION_MAX_RETRIES_LIMIT).",
                           field="max_retries")
    low = settings.KUBEFUNCTION_RETRY_MIN_BACKOFF
    high = settings.KUBEFUNCTION_RETRY_MAX_BACKOFF
    if retry_backoff_seconds is not None and not (
            math.isfinite(retry_backoff_seconds) and low <= retry_backoff_seconds <= high):
        raise InvalidInput(f"give {low} to {high} seconds.", field="retry_backoff_seconds")


def timezone_check(name: str) -> str:
    """An IANA time zone name (e.g. Europe/Paris); InvalidInput naming `timezone` otherwise."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InvalidInput(f"'{name}' is not a known time zone (use an IANA name such as "
                           "UTC or Europe/Paris).", field="timezone") from exc
    return name


def _periodic_task_name(trigger: Trigger) -> str:
    return f"trigger:{trigger.name}"


def crontab_drop_if_unused(crontab_id: int | None) -> None:
    """Delete a CrontabSchedule no PeriodicTask uses any more (they are shared by value)."""
    if crontab_id and not PeriodicTask.objects.filter(crontab_id=crontab_id).exists():
        CrontabSchedule.objects.filter(pk=crontab_id).delete()


def _sync_periodic_task(trigger: Trigger) -> None:
    """Make the trigger's PeriodicTask match it: one for a schedule trigger, none otherwise."""
    task = trigger.periodic_task
    old_crontab_id = task.crontab_id if task is not None else None
    if trigger.kind != TriggerKind.SCHEDULE:
        if task is not None:
            trigger.periodic_task = None
            Trigger.objects.filter(pk=trigger.pk).update(periodic_task=None)
            task.delete()
            crontab_drop_if_unused(old_crontab_id)
        return
    minute, hour, day_of_month, month_of_year, day_of_week = trigger.schedule.split(" ")
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
        day_of_week=day_of_week, timezone=trigger.timezone)
    fields = {
        "name": _periodic_task_name(trigger), "task": FIRE_TASK, "crontab": schedule,
        "interval": None, "solar": None, "clocked": None,
        "args": json.dumps([trigger.pk]), "kwargs": "{}",
        # No queue: beat sends to its default queue (KUBEFUNCTION_QUEUE), which its workers
        # consume, so a renamed queue never leaves stale rows behind.
        "queue": None, "enabled": trigger.enabled,
        "description": f"Fires trigger '{trigger.name}' (managed by KubeFunction; edit the "
                       "trigger, not this task).",
    }
    if task is None:
        task = PeriodicTask.objects.filter(name=fields["name"]).first() or PeriodicTask()
    changed = any(getattr(task, key) != value for key, value in fields.items())
    if task.pk is None or changed:
        for key, value in fields.items():
            setattr(task, key, value)
        task.save()  # django-celery-beat's signal tells a running beat to reload
        if old_crontab_id != schedule.pk:
            crontab_drop_if_unused(old_crontab_id)
    if trigger.periodic_task_id != task.pk:
        trigger.periodic_task = task
        Trigger.objects.filter(pk=trigger.pk).update(periodic_task=task)


# --- Create, update, delete --------------------------------------------------------------------

def cors_origins_check(origins: object) -> list[str]:
    """A trigger's CORS origins: `["*"]`, or a list of origins `scheme://host[:port]` (http or
    https), normalised as browsers send them (lower case, no default port); InvalidInput
    naming `cors_allowed_origins` for anything else."""
    field = "cors_allowed_origins"
    if origins is None or origins == "":
        return []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise InvalidInput('give a list of origins, e.g. ["https://app.example.com"], or '
                           '["*"].', field=field)
    if "*" in origins:
        if len(origins) != 1:
            raise InvalidInput('"*" allows every origin: give it alone (["*"]).', field=field)
        return ["*"]
    cleaned: list[str] = []
    for origin in origins:
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname
                or parts.username is not None or parts.password is not None
                or parts.path or parts.query or parts.fragment or "?" in origin
                or "#" in origin or any(c.isspace() for c in origin)):
            raise InvalidInput(f"{origin!r} is not an origin: give scheme://host[:port] "
                               "(http or https, no path), e.g. https://app.example.com.",
                               field=field)
        scheme = parts.scheme.lower()
        host = parts.hostname.lower()
        if ":" in host:  # an IPv6 address keeps its brackets
            host = f"[{host}]"
        if not ORIGIN_HOST.fullmatch(host):  # browsers send a name in punycode (ASCII)
            raise InvalidInput(f"{origin!r} is not an origin: its host must be an ASCII name "
                               "(punycode) or an IP address.", field=field)
        default = {"http": 80, "https": 443}[scheme]
        normal = f"{scheme}://{host}" + (f":{port}" if port and port != default else "")
        if normal not in cleaned:
            cleaned.append(normal)
    return cleaned


def _check_http_options(trigger: Trigger) -> None:
    """The HTTP-only options: payload format, CORS origins, signature scheme, header, secret."""
    http = trigger.kind == TriggerKind.HTTP
    if trigger.payload_format_version not in PayloadFormat.values:
        raise InvalidInput(f"give one of {', '.join(PayloadFormat.values)}.",
                           field="payload_format_version")
    if not http and trigger.payload_format_version != PayloadFormat.V1:
        raise InvalidInput("only HTTP triggers have a payload format version.",
                           field="payload_format_version")
    trigger.cors_allowed_origins = cors_origins_check(trigger.cors_allowed_origins)
    if not http and trigger.cors_allowed_origins:
        raise InvalidInput("only HTTP triggers have CORS origins.", field="cors_allowed_origins")
    scheme = trigger.signature or ""
    if scheme not in SignatureScheme.values:
        raise InvalidInput(f"give one of {', '.join(v for v in SignatureScheme.values if v)} "
                           "(or \"\" for the token header).", field="signature")
    if scheme and not http:
        raise InvalidInput("only HTTP triggers take signed calls.", field="signature")
    header = (trigger.signature_header or "").strip()
    if header and scheme != SignatureScheme.HMAC:
        raise InvalidInput("only the generic scheme (signature hmac-sha256) reads its signature "
                           "from a header you name.", field="signature_header")
    if header and (not HEADER_NAME.fullmatch(header) or header.lower() in RESERVED_HEADERS
                   or header.lower().startswith("x-kubefunction-")):
        raise InvalidInput(f"{header!r} is not a header a signature can be read from: give a "
                           "header name such as X-Signature-256.", field="signature_header")
    trigger.signature_header = header
    secret = trigger.signature_secret or ""
    if scheme and not secret.strip():
        raise InvalidInput(f"a {scheme} signature needs the secret the sender signs with.",
                           field="signature_secret")
    if secret and not scheme:
        raise InvalidInput("a signature secret goes with a signature scheme: set signature "
                           "too.", field="signature_secret")
    if "\x00" in secret:
        raise InvalidInput("the secret holds a NUL character.", field="signature_secret")
    if len(secret) > Trigger._meta.get_field("signature_secret").max_length:
        raise InvalidInput("the secret is over 200 characters.", field="signature_secret")
    if scheme and trigger.public:
        raise InvalidInput("a signed trigger takes only signed calls: it cannot be public too.",
                           field="public")


def _check_kind_fields(trigger: Trigger) -> None:
    trigger.timezone = timezone_check(trigger.timezone or "UTC")
    if trigger.kind == TriggerKind.SCHEDULE:
        trigger.schedule = schedule_check(trigger.schedule)
        schedule_interval_check(trigger.schedule)
    elif trigger.schedule:
        raise InvalidInput("only schedule triggers have a schedule.", field="schedule")
    if trigger.public and trigger.kind != TriggerKind.HTTP:
        raise InvalidInput("only HTTP triggers can be public.", field="public")
    _check_http_options(trigger)
    retries_check(max_retries=trigger.max_retries,
                  retry_backoff_seconds=trigger.retry_backoff_seconds)
    trigger.callback_url = callback_url_check(trigger.callback_url)  # the allow-list


def trigger_check(*, kind: str, schedule: str = "", timezone: str = "UTC",
                  public: bool = False, callback_url: str = "", **http_options) -> dict:
    """Validate the kind-specific fields without saving (for forms); returns the HTTP options
    as they would be saved (CORS origins normalised)."""
    unknown = set(http_options) - set(HTTP_DEFAULTS)
    if unknown:
        raise InvalidInput(f"'{sorted(unknown)[0]}' cannot be set.", field=sorted(unknown)[0])
    trigger = Trigger(kind=kind, schedule=schedule, timezone=timezone, callback_url=callback_url,
                      **{**HTTP_DEFAULTS, "public": public, **http_options})
    _check_kind_fields(trigger)
    return {key: getattr(trigger, key) for key in HTTP_DEFAULTS}


@transaction.atomic
def _save(trigger: Trigger) -> Trigger:
    """Validate, save, keep the PeriodicTask in step. Sets `trigger.token` (shown once) when a
    new webhook token was generated."""
    payload_check(trigger.default_payload, field="default_payload")
    _check_kind_fields(trigger)
    token = None
    if trigger.kind == TriggerKind.HTTP and not trigger.token_hash:
        token = _new_token(trigger)
    elif trigger.kind != TriggerKind.HTTP:
        trigger.token_hash = ""
    try:
        trigger.full_clean(exclude=["periodic_task"])
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidInput(" ".join(messages), field=field) from exc
    if trigger.kind == TriggerKind.SCHEDULE and (trigger.pk is None or Trigger.objects.filter(
            pk=trigger.pk).exclude(kind=TriggerKind.SCHEDULE).exists()):
        schedule_count_check(trigger)  # a new schedule: existing ones stay editable
    trigger.save()
    _sync_periodic_task(trigger)
    trigger.token = token
    return trigger


def trigger_create(*, name: str, function: Function, user=None, **fields) -> Trigger:
    """Map a new trigger name to a function. An HTTP trigger gets a webhook token, returned
    once as `trigger.token`; a schedule trigger gets its PeriodicTask."""
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidInput(f"'{key}' cannot be set.", field=key)
    if Trigger.objects.filter(name=name).exists():
        raise InvalidInput(f"a trigger named '{name}' already exists.", field="name")
    return _save(Trigger(name=name, function=function, created_by=user, **fields))


def trigger_update(*, trigger: Trigger, **changes) -> Trigger:
    """Change a trigger's fields (not its name). Changing the kind away from schedule or http
    drops the schedule, the PeriodicTask, the token and the HTTP options (`public`, CORS,
    signature...); changing it to http issues a token (`trigger.token`). Dropping the signature
    scheme drops its secret (and a generic header); the secret is kept when not given."""
    for key, value in changes.items():
        if key not in EDITABLE:
            raise InvalidInput(f"'{key}' cannot be changed.", field=key)
        setattr(trigger, key, value)
    if trigger.kind != TriggerKind.SCHEDULE and "schedule" not in changes:
        trigger.schedule = ""
    if trigger.kind != TriggerKind.HTTP:
        for key, default in HTTP_DEFAULTS.items():
            if key not in changes:
                setattr(trigger, key, default)
    if not trigger.signature and "signature_secret" not in changes:
        trigger.signature_secret = ""  # dropping the scheme drops its secret
    if trigger.signature != SignatureScheme.HMAC and "signature_header" not in changes:
        trigger.signature_header = ""
    return _save(trigger)


@transaction.atomic
def trigger_delete(*, trigger: Trigger) -> None:
    """Delete a trigger and its PeriodicTask (its executions stay, unlinked)."""
    trigger.delete()  # the post_delete handler (triggers.signals) removes the PeriodicTask


def trigger_token_regenerate(*, trigger: Trigger) -> str:
    """Issue a new webhook token for an HTTP trigger; the old one stops working at once.
    Returns the token, which is not stored (only its hash is)."""
    if trigger.kind != TriggerKind.HTTP:
        raise InvalidInput(f"trigger '{trigger.name}' is a {trigger.kind} trigger; only HTTP "
                           "triggers have a token.", field="kind")
    token = _new_token(trigger)
    Trigger.objects.filter(pk=trigger.pk).update(token_hash=trigger.token_hash)
    logger.info("webhook token of trigger %s regenerated", trigger.name)
    return token


# --- Firing ------------------------------------------------------------------------------------

def trigger_fire(*, trigger_id: int) -> Execution | None:
    """Dispatch a schedule trigger with its default payload (what beat's task calls). Returns
    the execution, or None when nothing could be dispatched (reason logged: beat must not
    crash on a trigger that was deleted, paused or whose function is not ready)."""
    trigger = Trigger.objects.select_related("function__active_version", "function__owner")\
        .filter(pk=trigger_id).first()
    if trigger is None:
        logger.warning("schedule fired for trigger id %s, which no longer exists", trigger_id)
        return None
    if trigger.kind != TriggerKind.SCHEDULE or not trigger.enabled:
        logger.info("schedule fired for trigger %s, which is %s: nothing dispatched",
                    trigger.name, "paused" if trigger.enabled is False else trigger.kind)
        return None
    wait = dispatch_wait(user_ident(trigger.function.owner) or f"trigger:{trigger.pk}")
    if wait is not None:
        # A fire is not queued for later: the next one comes anyway, and a backlog of fires
        # would only burst past the rate once it refills.
        if trigger.function.active_version is None:
            logger.error("schedule trigger %s fired over its owner's dispatch rate: skipped",
                         trigger.name)
            return None
        return execution_skip(
            trigger=trigger, error_type="RateLimited",
            reason=f"schedule fire skipped: the owner of '{trigger.function.name}' is over the "
                   f"dispatch rate ({settings.KUBEFUNCTION_DISPATCH_RATE}); the next fire in "
                   f"{wait:.0f} s or later may run.")
    try:
        execution = execution_dispatch(trigger=trigger, source="schedule")
    except RateLimited as exc:  # the owner's daily quota (executions/quotas.py)
        return execution_skip(trigger=trigger, error_type="RateLimited",
                              reason=f"schedule fire skipped: {exc.message}")
    except KubeFunctionError as exc:
        logger.error("schedule trigger %s fired but nothing was dispatched: %s",
                     trigger.name, exc.message)
        return None
    logger.info("schedule trigger %s dispatched execution %s", trigger.name, execution.task_id)
    return execution

