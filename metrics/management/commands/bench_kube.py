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

    def measure(self, *, samples, warm):
        return run_kube_bench(samples=samples, warm_samples=warm)

    def rows(self, figures):
        n = figures.warm_samples
        return [("floor: docker run --rm (SDK)", figures.floor),
                ("cold: Job (docker kubelet)", figures.cold),
                ("warm: first, from zero (docker kubelet)", figures.warm_first),
                (f"warm p50, pod reused ({n})", figures.warm_p50),
                (f"warm p95, pod reused ({n})", figures.warm_p95),
                (f"docker runtime warm p50 ({n})", figures.docker_warm_p50),
                (f"docker runtime warm p95 ({n})", figures.docker_warm_p95)]

    def notes(self, figures):
        ratio = figures.warm_p50 / figures.docker_warm_p50
        requests, n = figures.warm_api_requests, figures.warm_samples
        yield (f"API requests per warm invocation: {requests / n:.3f} ({requests} in {n}, every "
               "request the fake API server received meanwhile: watches, stamps and all)")
        yield (f"goal: warm p50 ≤ {WARM_GOAL}× the docker runtime's warm p50: "
               f"{verdict(ratio <= WARM_GOAL)} ({ratio:.2f}×)")
        yield (f"image {figures.image}; floor and cold are medians of {figures.samples} "
               "alternating runs; the kubernetes and docker warm invocations alternate in rounds. "
               "Warm: the Deployment's pod is a container of the same image (docker kubelet, no "
               "network), reached on its pod IP through the fake kubelet's loopback tunnel; from "
               "zero includes starting it and its readinessProbe.")
