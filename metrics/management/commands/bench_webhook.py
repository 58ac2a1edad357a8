"""manage.py bench_webhook: synchronous webhook calls through the web server as `make up` runs it,
beside /healthz on the same server and the Celery floor (metrics/webhook_bench.py)."""

from django.core.management.base import BaseCommand

from kubefunction.stats import ms, save_report
from metrics.webhook_bench import as_dict, run_webhook_bench


class Command(BaseCommand):
    help = ("Time synchronous POST /t/<name> calls of a trivial function on the Procfile's web "
            "server, for clients that open a connection per call and clients that keep it "
            "open: p50/p95 one call at a time, throughput and p99 at --concurrency; beside "
            "/healthz on the same server and the Celery floor, with the goals.")

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=300,
                            help="Calls one after another, per kind of client.")
        parser.add_argument("--calls", type=int, default=600,
                            help="Calls at --concurrency, per kind of client.")
        parser.add_argument("--concurrency", type=int, default=16)
        parser.add_argument("--floor-samples", type=int, default=300,
                            help="Celery floor round trips.")
        parser.add_argument("--burst", type=int, default=500, help="Celery floor burst.")
        parser.add_argument("--rounds", type=int, default=3,
                            help="Alternating floor/webhook rounds (figures are pooled).")
        parser.add_argument("--worker-class", default="",
                            help="Another gunicorn worker class than the Procfile's, to compare "
                                 "(e.g. asgi, gunicorn's own).")

    def handle(self, *args, samples, calls, concurrency, floor_samples, burst, rounds,
               worker_class, **options):
        figures = run_webhook_bench(
            samples=samples, calls=calls, concurrency=concurrency, floor_samples=floor_samples,
            burst=burst, rounds=rounds,
            server_args=("--worker-class", worker_class) if worker_class else ())
        c = figures.concurrency
        rows = [("client", "/healthz p50", "webhook p50", "p95", f"at {c}: calls/s",
                 "p50", "p99", "errors")]
        for f in figures.modes:
            rows.append((f.mode, ms(f.healthz_p50), ms(f.p50), ms(f.p95),
                         f"{f.throughput:.0f}/s", ms(f.concurrent_p50), ms(f.concurrent_p99),
                         str(f.errors)))
        rows.append(("celery no-op (floor)", "", ms(figures.floor_p50), "",
                     f"{figures.floor_burst:.0f}/s ({burst} burst)", "", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths,
                                                                         strict=True)))
        for f in figures.modes:
            for goal, (value, bound, met) in figures.goals(f).items():
                shown = (f"{value:.0f}/s vs {bound:.0f}/s" if "throughput" in goal
                         else f"{ms(value)} vs {ms(bound)}")
                self.stdout.write(f"goal ({f.mode}): {goal}: {shown} "
                                  f"({value / bound:.2f}×): {'met' if met else 'NOT met'}")
        report = save_report("bench_webhook", as_dict(figures))
        self.stdout.write(f"figures saved to {report}")
