"""manage.py bench_admin: how fast the admin renders over a big executions table."""

from django.core.management.base import BaseCommand

from metrics.admin_bench import fill, time_pages


class Command(BaseCommand):
    help = "Fill the executions table to --rows (default 100,000) and time the admin's pages."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=100_000)

    def handle(self, *args, rows, **options):
        self.stdout.write(f"filling to {rows} executions of 'bench-admin'…")
        function = fill(rows)
        for name, seconds in time_pages(function):
            self.stdout.write(f"{name:30} {seconds * 1000:7.1f} ms")
