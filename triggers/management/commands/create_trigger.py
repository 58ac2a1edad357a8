"""manage.py create_trigger NAME FUNCTION: map a manual, http or schedule trigger to a function."""

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from functions.models import Function
from kubefunction import audit
from kubefunction.commands import command_user, domain_errors_as_command_errors
from triggers.models import PayloadFormat, SignatureScheme, TriggerKind
from triggers.services import trigger_create, webhook_url


class Command(BaseCommand):
    help = ("Create a trigger NAME that runs FUNCTION: manual (the default), http (a webhook; "
            "its token is printed once) or schedule (--schedule CRONTAB).")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("function")
        parser.add_argument("--kind", choices=TriggerKind.values, default=TriggerKind.MANUAL)
        parser.add_argument("--payload", help="Default payload (JSON).", default="{}")
        parser.add_argument("--schedule",
                            help="Schedule triggers: crontab 'minute hour day month weekday'.")
        parser.add_argument("--timezone", default="UTC",
                            help="Time zone the crontab is read in (default UTC).")
        parser.add_argument("--public", action="store_true",
                            help="HTTP triggers: anyone may call it, no token.")
        parser.add_argument("--max-retries", type=int, default=0,
                            help="Retries of asynchronous calls after a failure or timeout.")
        parser.add_argument("--retry-backoff", type=float, default=1.0,
                            help="Seconds before the first retry (doubled for each next one).")
        parser.add_argument("--callback-url", default="",
                            help="URL the result is POSTed to when an execution ends.")
        parser.add_argument("--payload-format-version", choices=PayloadFormat.values,
                            default=PayloadFormat.V1,
                            help="HTTP triggers of a lambda function: API Gateway's event 1.0 "
                                 "(REST API, the default) or 2.0 (HTTP API).")
        parser.add_argument("--cors-origin", action="append", default=[], dest="cors_origins",
                            metavar="ORIGIN",
                            help="HTTP triggers: an origin (scheme://host[:port]) browsers may "
                                 "call it from, or '*'; repeat for several.")
        parser.add_argument("--signature", choices=[v for v in SignatureScheme.values if v],
                            default="",
                            help="HTTP triggers: authenticate calls by the sender's HMAC "
                                 "signature instead of the token header.")
        parser.add_argument("--signature-secret",
                            help="The secret the sender signs with (visible in the process "
                                 "list: prefer --signature-secret-file).")
        parser.add_argument("--signature-secret-file", metavar="PATH",
                            help="Read the secret from this file ('-': standard input); one "
                                 "trailing newline is dropped.")
        parser.add_argument("--signature-header", default="",
                            help="--signature hmac-sha256: the header holding the signature "
                                 "(default X-Signature-256).")
        parser.add_argument("--disabled", action="store_true", help="Create it disabled.")
        parser.add_argument("--owner", help="Username recorded as creator.")

    def handle(self, *args, name, function, kind, payload, schedule, timezone, public,
               max_retries, retry_backoff, callback_url, disabled, owner, payload_format_version,
               cors_origins, signature, signature_secret, signature_secret_file,
               signature_header, **options):
        try:
            target = Function.objects.get(name=function)
        except Function.DoesNotExist:
            raise CommandError(f"no function named '{function}'.") from None
        try:
            default_payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not JSON: {exc}") from exc
        if max_retries < 0:
            raise CommandError("--max-retries must be 0 or more.")
        secret = self._secret(signature_secret, signature_secret_file)
        user = command_user(owner)
        with domain_errors_as_command_errors():
            trigger = trigger_create(
                name=name, function=target, user=user, kind=kind,
                default_payload=default_payload, schedule=schedule or "", timezone=timezone,
                public=public, max_retries=max_retries, retry_backoff_seconds=retry_backoff,
                callback_url=callback_url, enabled=not disabled,
                payload_format_version=payload_format_version, cors_allowed_origins=cors_origins,
                signature=signature, signature_header=signature_header, signature_secret=secret)
        audit.added(user=user, obj=trigger, via="manage.py create_trigger",
                    detail=f"{trigger.kind} trigger of {target.name}")
        self.stdout.write(self.style.SUCCESS(
            f"trigger '{trigger.name}' → {target.name} ({trigger.kind})"))
        if trigger.kind == TriggerKind.SCHEDULE:
            self.stdout.write(f"schedule: {trigger.schedule} ({trigger.timezone})"
                              + ("" if trigger.enabled else " — paused"))
        if trigger.kind == TriggerKind.HTTP:
            url = webhook_url(trigger)
            self.stdout.write(f"webhook: POST {url}")
            if trigger.cors_allowed_origins:
                self.stdout.write("CORS origins: " + ", ".join(trigger.cors_allowed_origins))
            if trigger.signature:
                self.stdout.write(f"signed calls only ({trigger.get_signature_display()}); "
                                  "the token header is not taken")
                return
            if trigger.token:
                self.stdout.write(f"token (shown once, keep it): {trigger.token}")
            header = "" if trigger.public else \
                f" -H 'X-KubeFunction-Token: {trigger.token}'"
            self.stdout.write(f"try: curl -X POST {url}{header} -d '{{\"x\": 1}}'")

    def _secret(self, given: str | None, path: str | None) -> str:
        if given is not None and path is not None:
            raise CommandError("give --signature-secret or --signature-secret-file, not both.")
        if path is None:
            return given or ""
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                text = Path(path).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read --signature-secret-file: {exc}") from exc
        return text.removesuffix("\n").removesuffix("\r")
