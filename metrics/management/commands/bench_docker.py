"""manage.py bench_docker: a raw container run (the floor) vs the docker runtime, cold and warm."""

from django.conf import settings

from metrics.bench_command import RuntimeBenchCommand, verdict
from metrics.docker_bench import run_docker_bench

COLD_GOAL = 1.3  # cold invocation within 1.3x the floor
WARM_GOAL = 0.015  # warm p50 under 15 ms


class Command(RuntimeBenchCommand):
    help = ("Time a raw `docker run --rm` of the base image through the SDK (the floor), a cold "
            "invocation of a trivial function on the docker runtime and warm invocations; print "
            "the figures and their ratios to the floor.")
    report = "bench-docker"
    samples = 20

    def measure(self, *, samples, warm):
        return run_docker_bench(samples=samples, warm_samples=warm)

    def rows(self, figures):
        return [("floor: docker run --rm (SDK)", figures.floor),
                ("cold: one-shot container", figures.cold),
                ("cold: new warm container", figures.cold_warm_pool),
                (f"warm p50 ({figures.warm_samples} calls)", figures.warm_p50),
                (f"warm p95 ({figures.warm_samples} calls)", figures.warm_p95)]

    def notes(self, figures):
        floor = figures.floor
        yield (f"goal: cold ≤ {COLD_GOAL}× floor: one-shot "
               f"{verdict(figures.cold <= COLD_GOAL * floor)}, new warm container "
               f"{verdict(figures.cold_warm_pool <= COLD_GOAL * floor)}; warm p50 < "
               f"{WARM_GOAL * 1000:.0f} ms: {verdict(figures.warm_p50 < WARM_GOAL)} "
               f"(medians of {figures.samples} alternating runs of each)")
        if not figures.stdlib_bytecode:
            yield (f"note: {settings.KUBEFUNCTION_BASE_IMAGE} has no compiled standard library, "
                   "so every cold start compiles json, re, enum, threading…; keep the "
                   "__pycache__ folders in the base image (scripts/services.sh precompiles them).")
