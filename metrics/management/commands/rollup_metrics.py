"""manage.py rollup_metrics: bring the metrics rollup tables up to date now."""

from django.core.management.base import BaseCommand

from metrics.rollup import rollup_advance, rollup_rebuild


class Command(BaseCommand):
    help = ("Roll finished executions up into the per-minute and per-hour metrics tables (what "
            "the beat task metrics.rollup does every minute). --rebuild drops and rebuilds them: "
            "needed after loading executions with past dispatch times.")

    def add_arguments(self, parser):
        parser.add_argument("--rebuild", action="store_true")

    def handle(self, *args, rebuild, **options):
        result = rollup_rebuild() if rebuild else rollup_advance()
        until = f"{result.rolled_until:%Y-%m-%d %H:%M} UTC" if result.rolled_until else "—"
        self.stdout.write(f"rolled up until {until}: {result.minutes} minutes and "
                          f"{result.hours} hours recomputed, {result.reopened} reopened.")
