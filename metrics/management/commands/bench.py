"""manage.py bench: the Celery floor vs the platform on the warm local runtime."""


from django.core.management.base import BaseCommand

from kubefunction.stats import ms, save_report
from metrics.bench import as_dict, run_bench

THROUGHPUT_GOAL, P50_GOAL = 0.9, 1.0


class Command(BaseCommand):
    help = ("Measure a bare Celery no-op round trip and burst (the floor) and the same for a "
            "trivial function through the platform; print both and the ratios.")

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=600, help="Sequential round trips.")
        parser.add_argument("--burst", type=int, default=500, help="Tasks sent at once.")
        parser.add_argument("--rounds", type=int, default=3,
                            help="Alternating floor/platform rounds (figures are pooled).")

    def handle(self, *args, samples, burst, rounds, **options):
        floor, platform = run_bench(samples=samples, burst=burst, rounds=rounds)
        rows = [("", "p50 latency", "p95 latency",
                 f"throughput ({burst} burst, median of {rounds})")]
        for f in (floor, platform):
            rows.append((f.name, ms(f.p50), ms(f.p95), f"{f.throughput:.0f}/s"))
        rows.append(("ratio platform/floor", f"{platform.p50 / floor.p50:.2f}×",
                     f"{platform.p95 / floor.p95:.2f}×",
                     f"{platform.throughput / floor.throughput:.2f}×"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        # Issue 14's goals (the README says where the time goes while they are not met).
        throughput_ok = platform.throughput >= THROUGHPUT_GOAL * floor.throughput
        latency_ok = platform.p50 <= P50_GOAL * floor.p50
        self.stdout.write(
            f"goal: throughput ≥ {THROUGHPUT_GOAL}× floor: "
            f"{'met' if throughput_ok else 'NOT met'}; "
            f"p50 ≤ {P50_GOAL}× floor: {'met' if latency_ok else 'NOT met'}")
        report = save_report("bench", {"floor": as_dict(floor), "platform": as_dict(platform)})
        self.stdout.write(f"figures saved to {report}")
