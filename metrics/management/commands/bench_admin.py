"""manage.py bench_admin: how fast the admin renders over a big executions table."""

from django.core.management.base import BaseCommand

from metrics.admin_bench import fill, roll, time_pages, top_up
from metrics.rollup import rolled_until


class Command(BaseCommand):
    help = ("Fill the executions table to --rows (default 100,000) and on up to now at one per "
            "second, bring the metrics rollup up to date (rebuilt when rows were added behind "
            "it) and time the admin's pages.")

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=100_000)
        parser.add_argument("--rebuild", action="store_true",
                            help="Rebuild the rollup tables even when no row was added.")

    def handle(self, *args, rows, rebuild, **options):
        self.stdout.write(f"filling to {rows} executions of 'bench-admin'…")
        function, added = fill(rows)
        oldest = top_up(function)
        watermark = rolled_until()
        # Rows behind the rollup's watermark are only counted by a rebuild.
        rebuild = rebuild or added > 0 or (oldest is not None and watermark is not None
                                          and oldest < watermark)
        seconds, result = roll(rebuild=rebuild)
        self.stdout.write(f"rollup {'rebuilt' if rebuild else 'advanced'} in "
                          f"{seconds:.1f} s: {result.minutes} minutes, {result.hours} hours, "
                          f"rolled until {result.rolled_until:%Y-%m-%d %H:%M} UTC")
        for name, seconds in time_pages(function):
            self.stdout.write(f"{name:30} {seconds * 1000:7.1f} ms")
