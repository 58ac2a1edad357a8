"""manage.py create_trigger NAME FUNCTION: map a manual, http or schedule trigger to a function."""

import json

from django.core.management.base import BaseCommand, CommandError

from functions.models import Function
from kubefunction.commands import command_user, domain_errors_as_command_errors
from triggers.models import TriggerKind
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
        parser.add_argument("--disabled", action="store_true", help="Create it disabled.")
        parser.add_argument("--owner", help="Username recorded as creator.")

    def handle(self, *args, name, function, kind, payload, schedule, timezone, public,
               max_retries, retry_backoff, callback_url, disabled, owner, **options):
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
        with domain_errors_as_command_errors():
            trigger = trigger_create(
                name=name, function=target, user=command_user(owner), kind=kind,
                default_payload=default_payload, schedule=schedule or "", timezone=timezone,
                public=public, max_retries=max_retries, retry_backoff_seconds=retry_backoff,
                callback_url=callback_url, enabled=not disabled)
        self.stdout.write(self.style.SUCCESS(
            f"trigger '{trigger.name}' → {target.name} ({trigger.kind})"))
        if trigger.kind == TriggerKind.SCHEDULE:
            self.stdout.write(f"schedule: {trigger.schedule} ({trigger.timezone})"
                              + ("" if trigger.enabled else " — paused"))
        if trigger.kind == TriggerKind.HTTP:
            url = webhook_url(trigger)
            self.stdout.write(f"webhook: POST {url}")
            if trigger.token:
                self.stdout.write(f"token (shown once, keep it): {trigger.token}")
            header = "" if trigger.public else \
                f" -H 'X-KubeFunction-Token: {trigger.token}'"
            self.stdout.write(f"try: curl -X POST {url}{header} -d '{{\"x\": 1}}'")
