"""The dispatch benchmark: a bare Celery task (the floor) against a platform invocation.

Both go through the same broker, the same worker (started here as a subprocess) and the same
django-celery-results table, and both are awaited the same way, so the ratio is the cost of the
platform itself: the execution row, the claim, the runner round trip and the stored outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth import get_user_model
from django_celery_results.models import TaskResult

from executions.services import execution_dispatch, execution_dispatch_many
from functions.models import Function
from functions.services import function_register
from kubefunction.celery import app
from kubefunction.stats import percentile
from triggers.models import Trigger
from triggers.services import trigger_create

from .tasks import noop

BENCH_SOURCE = b"def handle(event):\n    return event\n"
POLL_INTERVAL = 0.001


@dataclass
class Figures:
    name: str
    p50: float
    p95: float
    throughput: float
    samples: int
    burst: int


@contextmanager
def worker_process(concurrency: int = 2):
    """A Celery worker subprocess on this settings' queue, stopped on exit."""
    name = f"bench-{os.getpid()}@localhost"
    log = open(Path(settings.VAR_DIR) / "bench-worker.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "kubefunction", "worker", "--pool=prefork",
         f"--concurrency={concurrency}", f"--queues={settings.CELERY_TASK_DEFAULT_QUEUE}",
         "--loglevel=WARNING", f"--hostname={name}", "--without-gossip", "--without-mingle"],
        cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name], timeout=1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bench worker did not start: see var/bench-worker.log")
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def _wait_all(task_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pending = set(task_ids)
    while pending and time.monotonic() < deadline:
        done = TaskResult.objects.filter(task_id__in=list(pending)[:1000],
                                         status__in=["SUCCESS", "FAILURE"])
        pending -= set(done.values_list("task_id", flat=True))
        if pending:
            time.sleep(0.005)
    if pending:
        raise RuntimeError(f"{len(pending)} tasks did not finish within {timeout} s")


class Series:
    """Latency samples and burst throughputs gathered over several rounds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.throughputs: list[float] = []

    def figures(self, burst: int) -> Figures:
        return Figures(name=self.name, p50=percentile(self.latencies, 0.5),
                       p95=percentile(self.latencies, 0.95),
                       throughput=percentile(self.throughputs, 0.5),
                       samples=len(self.latencies), burst=burst)


def measure(series: Series, send_one: Callable[[], str],
             send_burst: Callable[[int], list[str]], samples: int, burst: int) -> None:
    for _ in range(samples):
        started = time.perf_counter()
        AsyncResult(send_one(), app=app).get(timeout=60, interval=POLL_INTERVAL)
        series.latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    _wait_all(send_burst(burst))
    series.throughputs.append(burst / (time.perf_counter() - started))


def floor_senders() -> tuple[Callable[[], str], Callable[[int], list[str]]]:
    """Send a bare no-op Celery task: one, or a burst through one producer."""
    def burst_of(n: int) -> list[str]:
        with app.producer_or_acquire() as producer:
            return [noop.apply_async(args=[i], producer=producer).id for i in range(n)]

    return (lambda: noop.delay(1).id), burst_of


def _bench_trigger(runtime: str) -> Trigger:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    function = Function.objects.filter(name="bench-noop").first()
    if function is None:
        function = function_register(name="bench-noop", owner=user, filename="bench.py",
                                     data=BENCH_SOURCE, runtime=runtime).function
    trigger = Trigger.objects.filter(name="bench-noop").first() or trigger_create(
        name="bench-noop", function=function, user=user)
    return Trigger.objects.select_related("function__active_version").get(pk=trigger.pk)


def platform_senders(runtime: str) -> tuple[Callable[[], str], Callable[[int], list[str]]]:
    """Dispatch a trivial function through the platform: one, or a batch."""
    trigger = _bench_trigger(runtime)

    def one() -> str:
        return execution_dispatch(trigger=trigger, payload=1).task_id

    def burst_of(n: int) -> list[str]:
        return [e.task_id for e in execution_dispatch_many(trigger=trigger,
                                                           payloads=list(range(n)))]

    return one, burst_of


def run_bench(samples: int = 200, burst: int = 500, rounds: int = 3,
              runtime: str = "local") -> tuple[Figures, Figures]:
    """Start a worker and measure floor and platform in alternating rounds (so that drift in the
    machine's load hits both alike); return the pooled figures of each."""
    floor, platform = Series("celery no-op (floor)"), Series(f"platform, warm {runtime} runtime")
    floor_send, platform_send = floor_senders(), platform_senders(runtime)
    with worker_process():
        for _one, send_burst in (floor_send, platform_send):  # warm up both paths
            _wait_all(send_burst(20))
        per_round = max(1, samples // rounds)
        for _ in range(rounds):
            measure(floor, *floor_send, per_round, burst)
            measure(platform, *platform_send, per_round, burst)
    return floor.figures(burst), platform.figures(burst)


def as_dict(figures: Figures) -> dict:
    return asdict(figures)
