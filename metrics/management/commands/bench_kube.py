"""manage.py bench_kube: `docker run` of a function's image (the floor) vs the kubernetes
runtime on the fake API server, cold (Job) and warm (Deployment), with the docker runtime's warm
invocations of the same image beside the warm ones."""

from metrics.bench_command import RuntimeBenchCommand, verdict
from metrics.kube_bench import WARM_GOAL, run_kube_bench


class Command(RuntimeBenchCommand):
    help = ("Build a trivial function's image, then time a raw `docker run --rm` of it through the "
            "SDK with the pod's command (the floor), cold invocations of the kubernetes runtime "
            "(one Job each) and warm invocations (a Deployment + Service, scaled from zero, then "
            "reused), all on the fake API server with its docker kubelet: every pod is a "
            "container of that image; and, alternating with the warm ones, warm invocations of "
            "the same image on the docker runtime. Prints the API requests per warm invocation. "
            "Needs the Docker engine, the registry and the test tree (tests/kube/, the fake API "
            "server): run it from a source checkout.")
    report = "bench-kube"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--platform", type=int, default=200,
                            help="Warm invocations of each runtime through the platform (a "
                                 "worker subprocess, dispatched -> finished); 0 skips them.")

    def handle(self, *args, platform, **options):
        self.platform = platform
        super().handle(*args, **options)

    def measure(self, *, samples, warm):
        return run_kube_bench(samples=samples, warm_samples=warm, platform=self.platform)

    def rows(self, figures):
        n = figures.warm_samples
        return [("floor: docker run --rm (SDK)", figures.floor),
                ("cold: Job (docker kubelet)", figures.cold),
                ("warm: first, from zero (docker kubelet)", figures.warm_first),
                (f"warm p50, pod reused ({n})", figures.warm_p50),
                (f"warm p95, pod reused ({n})", figures.warm_p95),
                (f"docker runtime warm p50 ({n})", figures.docker_warm_p50),
                (f"docker runtime warm p95 ({n})", figures.docker_warm_p95),
                *([] if not figures.platform_samples else [
                    (f"platform, warm kubernetes p50 ({figures.platform_samples})",
                     figures.platform_kube_p50),
                    (f"platform, warm kubernetes p95 ({figures.platform_samples})",
                     figures.platform_kube_p95),
                    (f"platform, warm docker p50 ({figures.platform_samples})",
                     figures.platform_docker_p50),
                    (f"platform, warm docker p95 ({figures.platform_samples})",
                     figures.platform_docker_p95)])]

    def notes(self, figures):
        requests, n = figures.warm_api_requests, figures.warm_samples
        yield (f"API requests per warm invocation: {requests / n:.3f} ({requests} in {n}, every "
               "request the fake API server received meanwhile: watches, stamps and all)")
        ratio = figures.warm_p50 / figures.docker_warm_p50
        yield (f"runtime alone: warm kubernetes p50 / warm docker p50 = {ratio:.2f}× "
               "(the pod's call goes through the fake kubelet's tunnel, see docs/kubernetes.md)")
        if figures.platform_samples:
            through = figures.platform_kube_p50 / figures.platform_docker_p50
            requests, n = figures.platform_kube_api_requests, figures.platform_samples
            yield (f"through the platform: API requests per warm kubernetes invocation "
                   f"{requests / n:.3f} ({requests} in {n})")
            yield (f"goal: warm kubernetes p50 ≤ {WARM_GOAL}× warm docker p50 through the "
                   f"platform: {verdict(through <= WARM_GOAL)} ({through:.2f}×)")
        yield (f"image {figures.image}; floor and cold are medians of {figures.samples} "
               "alternating runs; the kubernetes and docker warm invocations alternate in rounds. "
               "Warm: the Deployment's pod is a container of the same image (docker kubelet, no "
               "network), reached on its pod IP through the fake kubelet's loopback tunnel; from "
               "zero includes starting it and its readinessProbe.")
