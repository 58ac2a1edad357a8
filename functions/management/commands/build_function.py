"""manage.py build_function NAME: build a version (the image, for container runtimes)."""

import time

from django.core.management.base import BaseCommand, CommandError

from functions import builds, selectors
from functions.models import Function, VersionStatus
from kubefunction.commands import domain_errors_as_command_errors


class Command(BaseCommand):
    help = ("Build the latest (or --number N) version of a function for its runtime, or retry "
            "its failed build; --wait follows the build log until it ends.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--number", type=int, help="Version number (default: the latest).")
        parser.add_argument("--wait", action="store_true", help="Wait for the build to end.")
        parser.add_argument("--timeout", type=float, default=900)

    def handle(self, *args, name, number, wait, timeout, **options):
        function = Function.objects.filter(name=name).first()
        if function is None:
            raise CommandError(f"no function named '{name}'.")
        versions = function.versions.select_related("function")
        target = versions.filter(number=number).first() if number else versions.first()
        if target is None:
            raise CommandError(f"'{name}' has no version {number or ''}".strip() + ".")
        with domain_errors_as_command_errors():
            builds.version_request_build(version=target)
        self.stdout.write(f"build of {name} v{target.number} queued")
        if wait:
            self._follow(target, time.monotonic() + timeout)

    def _follow(self, version, deadline) -> None:
        shown = 0
        while time.monotonic() < deadline:
            version.refresh_from_db()
            self.stdout.write(version.build_log[shown:], ending="")
            shown = len(version.build_log)
            if selectors.version_is_built(version):
                break
            time.sleep(0.5)
        else:
            raise CommandError("the build did not end in time; it goes on in the worker.")
        if version.status == VersionStatus.FAILED:
            raise CommandError(f"the build of v{version.number} failed.")
        self.stdout.write(self.style.SUCCESS(
            f"\nv{version.number} is ready" + (f": {version.image}" if version.image else "")))
