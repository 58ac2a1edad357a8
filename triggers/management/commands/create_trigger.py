"""manage.py create_trigger NAME FUNCTION: map a manual trigger to a function."""

import json

from django.core.management.base import BaseCommand, CommandError

from functions.models import Function
from kubefunction.commands import command_user, domain_errors_as_command_errors
from triggers.services import trigger_create


class Command(BaseCommand):
    help = "Create a manual trigger NAME that runs FUNCTION."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("function")
        parser.add_argument("--payload", help="Default payload (JSON).", default="{}")
        parser.add_argument("--owner", help="Username recorded as creator.")

    def handle(self, *args, name, function, payload, owner, **options):
        try:
            target = Function.objects.get(name=function)
        except Function.DoesNotExist:
            raise CommandError(f"no function named '{function}'.") from None
        try:
            default_payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not JSON: {exc}") from exc
        with domain_errors_as_command_errors():
            trigger = trigger_create(name=name, function=target, user=command_user(owner),
                                     default_payload=default_payload)
        self.stdout.write(self.style.SUCCESS(f"trigger '{trigger.name}' → {target.name}"))
