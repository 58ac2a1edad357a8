"""manage.py bench_kube: `docker run` of a function's image (the floor) vs the kubernetes
runtime on the fake API server, cold (Job) and warm (Deployment)."""


from django.core.management.base import BaseCommand

from kubefunction.stats import floor_table, save_report
from metrics.kube_bench import as_dict, run_kube_bench


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
        for line in floor_table([
            ("floor: docker run --rm (SDK)", floor),
            ("cold: Job (docker kubelet)", figures.cold),
            ("warm: first, from zero (docker kubelet)", figures.warm_first),
            (f"warm p50, pod reused ({figures.warm_samples})", figures.warm_p50),
            (f"warm p95, pod reused ({figures.warm_samples})", figures.warm_p95),
        ], floor):
            self.stdout.write(line)
        self.stdout.write(
            f"image {figures.image}; floor and cold are medians of {figures.samples} "
            "alternating runs. Warm: the Deployment's pod is a container of the same image "
            "(docker kubelet, no network), reached on its pod IP through the fake kubelet's "
            "loopback tunnel; from zero includes starting it and its readinessProbe.")
        self.stdout.write(f"figures saved to {save_report('bench-kube', as_dict(figures))}")
