"""manage.py bench_kube: `docker run` of a function's image (the floor) vs the kubernetes
runtime on the fake API server, cold (Job) and warm (Deployment)."""

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from metrics.kube_bench import as_dict, run_kube_bench
from metrics.stats import ms


class Command(BaseCommand):
    help = ("Build a trivial function's image, then time a raw `docker run --rm` of it through the "
            "SDK with the pod's command (the floor), cold invocations of the kubernetes runtime "
            "(one Job each) and warm invocations (a Deployment + Service, scaled from zero, then "
            "reused), all on the fake API server with its docker kubelet: every pod is a "
            "container of that image. Needs the Docker engine, the registry and the test tree "
            "(tests/kube/, the fake API server): run it from a source checkout.")

    def add_arguments(self, parser):
        parser.add_argument("--samples", type=int, default=10,
                            help="Floor and cold runs, alternating (medians are shown).")
        parser.add_argument("--warm", type=int, default=200, help="Warm invocations.")

    def handle(self, *args, samples, warm, **options):
        figures = run_kube_bench(samples=samples, warm_samples=warm)
        floor = figures.floor
        rows = [
            ("floor: docker run --rm (SDK)", ms(floor), "1.00×"),
            ("cold: Job (docker kubelet)", ms(figures.cold), f"{figures.cold / floor:.2f}×"),
            ("warm: first, from zero (docker kubelet)", ms(figures.warm_first),
             f"{figures.warm_first / floor:.2f}×"),
            (f"warm p50, pod reused ({figures.warm_samples})", ms(figures.warm_p50),
             f"{figures.warm_p50 / floor:.3f}×"),
            (f"warm p95, pod reused ({figures.warm_samples})", ms(figures.warm_p95),
             f"{figures.warm_p95 / floor:.3f}×"),
        ]
        self.stdout.write(f"{'':40}{'time':>12}  ratio to floor")
        for name, value, ratio in rows:
            self.stdout.write(f"{name:40}{value:>12}  {ratio}")
        self.stdout.write(
            f"image {figures.image}; floor and cold are medians of {figures.samples} "
            "alternating runs. Warm: the Deployment's pod is a container of the same image "
            "(docker kubelet, no network), reached on its pod IP through the fake kubelet's "
            "loopback tunnel; from zero includes starting it and its readinessProbe.")
        report = Path(settings.VAR_DIR) / f"bench-kube-{int(time.time())}.json"
        report.write_text(json.dumps(as_dict(figures), indent=2))
        self.stdout.write(f"figures saved to {report}")
