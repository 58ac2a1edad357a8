"""manage.py bench_embedded: the embedded mode against Postgres + Redis on this machine."""

import sys

from django.core.management.base import BaseCommand, CommandError

from kubefunction.stats import ms, save_report
from metrics.bench import as_dict
from metrics.bench_embedded import FLOOR, run_bench_embedded, run_side


class Command(BaseCommand):
    requires_system_checks = []  # each side is a manage.py process of its own: quiet
    help = ("Measure a trivial function through the platform (warm local runtime, a real worker) "
            "on this checkout's Postgres + Redis and on the embedded mode (SQLite + the bundled "
            "Redis), in alternating rounds; print both and the ratio beside its floor.")

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=50,
                            help="Sequential round trips per round and mode.")
        parser.add_argument("--burst", type=int, default=300, help="Invocations sent at once.")
        parser.add_argument("--rounds", type=int, default=3,
                            help="Alternating rounds (figures are pooled, throughput median).")
        parser.add_argument("--side", action="store_true",
                            help="Internal: be one mode's side, driven over stdin/stdout.")

    def handle(self, *args, samples, burst, rounds, side: bool, **options):
        if side:
            return run_side(sys.stdin, sys.stdout, samples=samples, burst=burst)
        try:
            production, embedded = run_bench_embedded(samples=samples, burst=burst,
                                                      rounds=rounds)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from None
        ratio = embedded.throughput / production.throughput
        rows = [("", "p50 latency", "p95 latency",
                 f"throughput ({burst} burst, median of {rounds})", "floor")]
        for f in (production, embedded):
            rows.append((f.name, ms(f.p50), ms(f.p95), f"{f.throughput:.0f}/s", ""))
        rows.append(("ratio embedded / Postgres + Redis", f"{embedded.p50 / production.p50:.2f}×",
                     f"{embedded.p95 / production.p95:.2f}×", f"{ratio:.2f}×",
                     f"≥ {FLOOR}×: {'met' if ratio >= FLOOR else 'NOT met'}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        report = save_report("bench_embedded", {"postgres_redis": as_dict(production),
                                                "embedded": as_dict(embedded), "ratio": ratio})
        self.stdout.write(f"figures saved to {report}")
