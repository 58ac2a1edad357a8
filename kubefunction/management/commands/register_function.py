"""manage.py register_function NAME PATH: upload a function (or a new version of it);
--wait waits for its build and fails (exit 1, with the log's tail) when the build failed."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from functions import selectors, services
from functions.conventions import CONVENTIONS
from functions.models import Function, VersionStatus
from kubefunction import audit
from kubefunction.commands import command_user, domain_errors_as_command_errors
from triggers.models import Trigger
from triggers.services import trigger_create

LOG_TAIL_LINES = 20


VIA = "manage.py register_function"


class Command(BaseCommand):
    help = ("Register a function from a .py/.zip/.tar.gz file; when it exists, upload the file "
            "as its next version (unchanged source reuses the latest version).")

    def add_arguments(self, parser):
        parser.add_argument("name", help="DNS-1123 function name.")
        parser.add_argument("path", type=Path, help="The source file.")
        parser.add_argument("--handler", help="'module.function', or the module in script mode.")
        parser.add_argument("--mode", choices=["handler", "script"])
        parser.add_argument("--convention", choices=["", *sorted(CONVENTIONS)],
                            help="The platform the code is written for (lambda, openfaas, "
                                 "openwhisk, cloudfunctions, ...; docs/porting.md). Default: "
                                 "ours for a new function, the function's own for a version.")
        parser.add_argument("--trigger", help="Also create a manual trigger with this name.")
        parser.add_argument("--timeout", type=int, help="Timeout in seconds.")
        parser.add_argument("--memory", type=int, help="Memory limit in MiB.")
        parser.add_argument("--owner", help="Username of the owner (default: first superuser).")
        parser.add_argument("--payload-retention", choices=["keep", "days", "hash"],
                            help="Keep inputs and outputs (keep), for --retention-days days "
                                 "(days), or store only their SHA-256 hashes (hash).")
        parser.add_argument("--retention-days", type=int,
                            help="With --payload-retention days: days payloads are kept.")
        parser.add_argument("--wait", action="store_true",
                            help="Wait until the version is built (ready or failed) and report "
                                 "the outcome; a failed build exits non-zero with the log's tail.")
        parser.add_argument("--wait-timeout", type=float, default=900,
                            help="Seconds --wait waits at most (default 900).")

    def handle(self, *args, name, path, handler, mode, convention, trigger, timeout, memory, owner,
               payload_retention, retention_days, wait, wait_timeout, **options):
        if not path.is_file():
            raise CommandError(f"{path}: no such file.")
        user = command_user(owner)
        data = path.read_bytes()
        with domain_errors_as_command_errors():
            function = Function.objects.filter(name=name).first()
            if function is None:
                version = services.function_register(
                    name=name, owner=user, filename=path.name, data=data, handler=handler,
                    mode=mode, convention=convention or "", timeout_seconds=timeout,
                    memory_mb=memory,
                    payload_retention=payload_retention or "keep",
                    payload_retention_days=retention_days)
                function = version.function
                audit.added(user=user, obj=function, via=VIA,
                            detail=f"version {version.number} ({version.handler})")
            else:
                changes = {k: v for k, v in (("timeout_seconds", timeout), ("memory_mb", memory),
                                             ("payload_retention", payload_retention),
                                             ("payload_retention_days", retention_days))
                           if v is not None}
                before = audit.snapshot(function, changes)
                if changes:
                    services.function_update(function=function, **changes)
                version = services.version_create(function=function, filename=path.name,
                                                  data=data, user=user, handler=handler, mode=mode,
                                                  convention=convention)
                audit.changed(user=user, obj=function, via=VIA, before=before,
                              detail=f"Uploaded version {version.number} ({version.handler})")
            if trigger and not Trigger.objects.filter(name=trigger).exists():
                made = trigger_create(name=trigger, function=function, user=user)
                audit.added(user=user, obj=made, via=VIA, detail=f"manual trigger of {name}")
        version.refresh_from_db()
        if wait:
            version = selectors.version_wait(version=version, timeout=wait_timeout)
        style = f"{version.convention} " if version.convention else ""
        line = (f"{function.name} v{version.number} ({style}{version.mode} {version.handler}): "
                f"{version.status}" + (f" {version.image}" if version.image else "")
                + (f"; trigger '{trigger}'" if trigger else ""))
        if not wait:
            self.stdout.write(self.style.SUCCESS(line))
        elif version.status == VersionStatus.FAILED:
            tail = "\n".join(version.build_log.rstrip().splitlines()[-LOG_TAIL_LINES:])
            raise CommandError(f"{line}: the build failed.\n{tail}")
        elif not selectors.version_is_built(version):
            raise CommandError(f"{line}: the build did not end within {wait_timeout:g} s; it goes "
                               f"on in the worker (manage.py build_function {name} --wait).")
        else:
            self.stdout.write(self.style.SUCCESS(line))
