"""A logging filter that masks the platform's own secrets in every line a handler writes.

Exception messages are not ours to control (a driver may quote a connection string, a library
its settings), so the filter works on the final text of the record, its traceback included,
rather than trusting each `logger.error` call to be careful.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.utils.html import escape
from django.views.debug import ExceptionReporter

MASK = "********"
# Values shorter than this are not masked: replacing "x" or "1" everywhere would garble the log
# and hides nothing worth hiding.
MIN_SECRET_LENGTH = 6


def _url_secrets(url: str) -> list[str]:
    """The password of a URL and the URL itself when it carries one."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [url, password] if password else []


def platform_secrets() -> list[str]:
    """The values no log line may show, longest first (so a URL is masked before its password)."""
    from django.conf import settings

    values = [getattr(settings, "SECRET_KEY", "")]
    for database in getattr(settings, "DATABASES", {}).values():
        values.append(database.get("PASSWORD") or "")
    values += _url_secrets(getattr(settings, "CELERY_BROKER_URL", "") or "")
    for name in ("KUBEFUNCTION_REGISTRY_PASSWORD", "KUBEFUNCTION_CALLBACK_SECRET",
                 "KUBEFUNCTION_METRICS_TOKEN"):
        values.append(getattr(settings, name, "") or "")
    found = {str(value) for value in values if value and len(str(value)) >= MIN_SECRET_LENGTH}
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    for secret in platform_secrets() if secrets is None else secrets:
        text = text.replace(secret, MASK)
    return text


class SecretRedactionFilter(logging.Filter):
    """Rewrites the record's message and traceback with the platform's secrets masked.

    Settings are read on every record, not once, so a value changed at run time (tests, a reload)
    is masked too; the lookups are attribute reads.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            secrets = platform_secrets()
        except Exception:  # settings not configured yet (early start-up): nothing to mask
            return True
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed logging call: mask its format string at least
            message = str(record.msg)
        masked = redact(message, secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # The formatter reuses exc_text when it is set: format it here, masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


class SecretMaskingExceptionReporter(ExceptionReporter):
    """Django's debug page (DEBUG on only) with the same secrets masked: Django hides settings
    named like a password, but not the broker URL, a cache LOCATION, the environment's
    DATABASE_URL in META, or an exception message quoting any of them."""

    def get_traceback_html(self) -> str:
        return _redact_markup(str(super().get_traceback_html()))

    def get_traceback_text(self) -> str:
        return _redact_markup(str(super().get_traceback_text()))


def _redact_markup(text: str) -> str:
    secrets = platform_secrets()
    return redact(text, sorted({*secrets, *(str(escape(s)) for s in secrets)}, key=len,
                               reverse=True))


def install_secret_filter(logger: logging.Logger | None) -> None:
    """Put a SecretRedactionFilter on every handler of `logger` that has none (idempotent)."""
    for handler in getattr(logger, "handlers", ()):
        if not any(isinstance(f, SecretRedactionFilter) for f in handler.filters):
            handler.addFilter(SecretRedactionFilter())
