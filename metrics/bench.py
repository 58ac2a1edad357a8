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
from triggers.models import Trigger
from triggers.services import trigger_create

from .stats import percentile
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


def _measure(name: str, send_one: Callable[[], str], send_burst: Callable[[int], list[str]],
             samples: int, burst: int) -> Figures:
    latencies = []
    for _ in range(samples):
        started = time.perf_counter()
        AsyncResult(send_one(), app=app).get(timeout=60, interval=POLL_INTERVAL)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    _wait_all(send_burst(burst))
    elapsed = time.perf_counter() - started
    return Figures(name=name, p50=percentile(latencies, 0.5), p95=percentile(latencies, 0.95),
                   throughput=burst / elapsed, samples=samples, burst=burst)


def measure_floor(samples: int, burst: int) -> Figures:
    """A bare no-op Celery task through the same broker and result store."""
    def burst_of(n: int) -> list[str]:
        with app.producer_or_acquire() as producer:
            return [noop.apply_async(args=[i], producer=producer).id for i in range(n)]

    return _measure("celery no-op (floor)", lambda: noop.delay(1).id, burst_of, samples, burst)


def _bench_trigger(runtime: str) -> Trigger:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    function = Function.objects.filter(name="bench-noop").first()
    if function is None:
        function = function_register(name="bench-noop", owner=user, filename="bench.py",
                                     data=BENCH_SOURCE, runtime=runtime).function
    trigger = Trigger.objects.filter(name="bench-noop").first() or trigger_create(
        name="bench-noop", function=function, user=user)
    return Trigger.objects.select_related("function__active_version").get(pk=trigger.pk)


def measure_platform(samples: int, burst: int, runtime: str = "local") -> Figures:
    """A trivial function dispatched through the platform, on a warm runtime."""
    trigger = _bench_trigger(runtime)
    warmup = [e.task_id for e in execution_dispatch_many(trigger=trigger, payloads=[0] * 20)]
    _wait_all(warmup)

    def one() -> str:
        return execution_dispatch(trigger=trigger, payload=1).task_id

    def burst_of(n: int) -> list[str]:
        return [e.task_id for e in execution_dispatch_many(trigger=trigger,
                                                           payloads=list(range(n)))]

    return _measure(f"platform, warm {runtime} runtime", one, burst_of, samples, burst)


def run_bench(samples: int = 200, burst: int = 500) -> tuple[Figures, Figures]:
    """Start a worker, measure the floor then the platform; return both."""
    with worker_process():
        measure_floor(10, 20)  # warm the broker connection and the worker
        floor = measure_floor(samples, burst)
        platform = measure_platform(samples, burst)
    return floor, platform


def as_dict(figures: Figures) -> dict:
    return asdict(figures)
