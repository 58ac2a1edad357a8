"""manage.py doctor: check the database, the broker, a live worker and the runtime."""

from django.core.management.base import BaseCommand, CommandError

from kubefunction.health import CHECKS


class Command(BaseCommand):
    help = "Check that the database, the broker, a Celery worker and the runtime answer."

    def handle(self, *args, **options):
        failed = []
        for name, check in CHECKS.items():
            ok, detail = check()
            style = self.style.SUCCESS if ok else self.style.ERROR
            self.stdout.write(f"{style('ok  ' if ok else 'FAIL')} {name:9} {detail}")
            if not ok:
                failed.append(name)
        if failed:
            raise CommandError(f"{len(failed)} check(s) failed: {', '.join(failed)}")
