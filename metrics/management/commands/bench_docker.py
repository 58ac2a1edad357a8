"""manage.py bench_docker: a raw container run (the floor) vs the docker runtime, cold and warm."""


from django.conf import settings
from django.core.management.base import BaseCommand

from kubefunction.stats import floor_table, save_report
from metrics.docker_bench import as_dict, run_docker_bench

COLD_GOAL = 1.3  # cold invocation within 1.3x the floor
WARM_GOAL = 0.015  # warm p50 under 15 ms


class Command(BaseCommand):
    help = ("Time a raw `docker run --rm` of the base image through the SDK (the floor), a cold "
            "invocation of a trivial function on the docker runtime and warm invocations; print "
            "the figures and their ratios to the floor.")

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=20,
                            help="Floor and cold runs, alternating (medians are shown).")
        parser.add_argument("--warm", type=int, default=200, help="Warm invocations.")

    def handle(self, *args, samples, warm, **options):
        figures = run_docker_bench(samples=samples, warm_samples=warm)
        floor = figures.floor
        for line in floor_table([
            ("floor: docker run --rm (SDK)", floor),
            ("cold: one-shot container", figures.cold),
            ("cold: new warm container", figures.cold_warm_pool),
            (f"warm p50 ({figures.warm_samples} calls)", figures.warm_p50),
            (f"warm p95 ({figures.warm_samples} calls)", figures.warm_p95),
        ], floor):
            self.stdout.write(line)

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        self.stdout.write(
            f"goal: cold ≤ {COLD_GOAL}× floor: one-shot "
            f"{verdict(figures.cold <= COLD_GOAL * floor)}, new warm container "
            f"{verdict(figures.cold_warm_pool <= COLD_GOAL * floor)}; warm p50 < "
            f"{WARM_GOAL * 1000:.0f} ms: {verdict(figures.warm_p50 < WARM_GOAL)} "
            f"(medians of {figures.samples} alternating runs of each)")
        if not figures.stdlib_bytecode:
            self.stdout.write(
                f"note: {settings.KUBEFUNCTION_BASE_IMAGE} has no compiled standard library, so "
                "every cold start compiles json, re, enum, threading…; keep the __pycache__ "
                "folders in the base image (scripts/services.sh precompiles them).")
        self.stdout.write(f"figures saved to {save_report('bench-docker', as_dict(figures))}")
