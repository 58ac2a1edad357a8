"""The load test: retrieval time and CPU utilisation as concurrent requests grow.

After a warm-up reported apart, for each concurrency level that many threads each dispatch
through the platform's dispatch service and wait for the stored result (closed loop: a thread
sends its next request when the previous one finished, until the level's request count is
reached: by default enough for percentiles), then the same for a bare Celery no-op task (the
floor) at the same concurrency. Retrieval time is what a
caller sees: from the dispatch call to the moment the finished execution is read back. CPU
utilisation is the machine's (all processes: web, broker, worker, functions), sampled by psutil
over the level's run. Works with every runtime: it only uses the dispatch path.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from celery.result import AsyncResult
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from executions.models import Execution, ExecutionStatus
from executions.services import USE_DEFAULT, execution_dispatch
from executions.waiters import execution_wait
from kubefunction.celery import app
from kubefunction.stats import percentile
from triggers.models import Trigger

from .charts import COLOURS, HEIGHT, WIDTH, Series, chart
from .models import LoadTestRun
from .tasks import noop

# How often the floor's client reads its result row: a bare Celery client on the database result
# backend can only poll (the platform's waiters wake on the finish's notification); 1 ms, as in
# `make bench`, is the best it can do.
FLOOR_POLL_SECONDS = 0.001
# Requests per level when not given: enough for a p95 of its own at every level.
MIN_REQUESTS_PER_LEVEL = 50
REQUESTS_PER_CLIENT = 10


def default_requests(concurrency: int) -> int:
    """Requests of a level when `--requests` is not given: at least 50, ten per client."""
    return max(MIN_REQUESTS_PER_LEVEL, REQUESTS_PER_CLIENT * concurrency)


@dataclass
class Level:
    concurrency: int
    requests: int
    errors: int
    p50: float | None
    p95: float | None
    max: float | None
    cpu_percent: float
    seconds: float
    throughput: float
    # The Celery floor at the same concurrency and count: a bare no-op task through the same
    # broker, worker and result table (None when not measured).
    floor_p50: float | None = None
    floor_p95: float | None = None
    floor_throughput: float | None = None


@dataclass
class _Loop:
    times: list[float]
    errors: int
    seconds: float
    cpu_percent: float


def _wait_finished(execution: Execution, deadline: float) -> str | None:
    """The execution's final status, read back when its finish is announced; None at the
    deadline."""
    while not execution.is_finished and time.monotonic() < deadline:
        execution = execution_wait(execution=execution, timeout=deadline - time.monotonic())
    return execution.status if execution.is_finished else None


def _closed_loop(call: Callable[[], bool], *, concurrency: int, requests: int,
                 on_done: Callable[[], None] | None = None) -> _Loop:
    """`concurrency` threads call `call` (True: it succeeded) until `requests` calls were made,
    each sending its next one when its previous one finished."""
    times: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [requests]

    def worker() -> None:
        nonlocal errors
        try:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                ok = call()
                elapsed = time.perf_counter() - started
                with lock:
                    times.append(elapsed)
                    errors += not ok
                if on_done:
                    on_done()
        finally:
            connection.close()  # each thread has its own connection

    psutil.cpu_percent(interval=None)  # start the measurement window
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return _Loop(times=times, errors=errors, seconds=time.perf_counter() - started,
                 cpu_percent=psutil.cpu_percent(interval=None))


def _floor_call(timeout: float) -> Callable[[], bool]:
    def call() -> bool:
        try:
            AsyncResult(noop.delay(1).id, app=app).get(timeout=timeout,
                                                       interval=FLOOR_POLL_SECONDS)
        except Exception:  # noqa: BLE001 - a floor task that failed or timed out is an error
            return False
        return True

    return call


def run_level(*, trigger: Trigger, concurrency: int, requests: int, payload: Any,
              timeout: float, on_done: Callable[[], None] | None = None,
              floor: bool = False) -> Level:
    def invoke() -> bool:
        execution = execution_dispatch(trigger=trigger, payload=payload)
        return _wait_finished(execution, time.monotonic() + timeout) == \
            ExecutionStatus.SUCCEEDED.value

    run = _closed_loop(invoke, concurrency=concurrency, requests=requests, on_done=on_done)
    level = Level(concurrency=concurrency, requests=requests, errors=run.errors,
                  p50=percentile(run.times, 0.5), p95=percentile(run.times, 0.95),
                  max=max(run.times) if run.times else None, cpu_percent=run.cpu_percent,
                  seconds=run.seconds,
                  throughput=requests / run.seconds if run.seconds else 0.0)
    if floor:
        base = _closed_loop(_floor_call(timeout), concurrency=concurrency, requests=requests)
        level.floor_p50 = percentile(base.times, 0.5)
        level.floor_p95 = percentile(base.times, 0.95)
        level.floor_throughput = requests / base.seconds if base.seconds else 0.0
    return level


def loadtest_chart(levels: Sequence[dict]) -> SafeString:
    """Retrieval time (top) and CPU utilisation (bottom) against concurrency, in one SVG."""
    xs = [level["concurrency"] for level in levels]
    latency = chart(title="Retrieval time against concurrency", xs=xs, unit="seconds",
                    x_title="concurrent requests", chart_id="loadtest-latency", series=[
                        Series("p50", [lv["p50"] for lv in levels], COLOURS["p50"]),
                        Series("p95", [lv["p95"] for lv in levels], COLOURS["p95"]),
                        Series("max", [lv["max"] for lv in levels], COLOURS["p99"])])
    cpu = chart(title="Machine CPU utilisation against concurrency", xs=xs, unit="CPU %",
                x_title="concurrent requests", chart_id="loadtest-cpu", series=[
                    Series("CPU utilisation", [lv["cpu_percent"] for lv in levels],
                           COLOURS["cpu"], "bar")])
    return mark_safe(  # noqa: S308 - both charts escape their text
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kf-chart-pair" '
        f'viewBox="0 0 {WIDTH} {2 * HEIGHT}" width="{WIDTH}" height="{2 * HEIGHT}">'
        f'<svg y="0">{latency}</svg><svg y="{HEIGHT}">{cpu}</svg></svg>')


def run_loadtest(*, trigger: Trigger, levels: Sequence[int], requests: int | None = None,
                 payload: Any = USE_DEFAULT, timeout: float = 120, out_dir: Path | None = None,
                 warmup: int | None = None, floor: bool = True,
                 on_done: Callable[[], None] | None = None,
                 on_level: Callable[[Level], None] | None = None) -> LoadTestRun:
    """A warm-up (`warmup` requests at the highest level's concurrency, by default one per
    client: every warm runner started, the cold starts out of the figures), then every level in
    turn, each beside the Celery floor at the same concurrency; write the CSV and SVG files and
    store the run. The warm-up is stored apart (`LoadTestRun.warmup`)."""
    top = max(levels)
    warmup = top if warmup is None else warmup
    warm = None
    if warmup:
        close_old_connections()
        warm = asdict(run_level(trigger=trigger, concurrency=min(top, warmup), requests=warmup,
                                payload=payload, timeout=timeout, on_done=on_done))
    results = []
    for concurrency in levels:
        close_old_connections()
        level = run_level(trigger=trigger, concurrency=concurrency,
                          requests=requests or default_requests(concurrency), payload=payload,
                          timeout=timeout, on_done=on_done, floor=floor)
        results.append(asdict(level))
        if on_level:
            on_level(level)
    out_dir = Path(out_dir or Path(settings.VAR_DIR) / "loadtests")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{timezone.now():%Y%m%d-%H%M%S}-{trigger.name}"
    csv_path = stem.with_suffix(".csv")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    svg = loadtest_chart(results)
    stem.with_suffix(".svg").write_text(str(svg))
    return LoadTestRun.objects.create(
        trigger_name=trigger.name, function_name=trigger.function.name,
        runtime=trigger.function.effective_runtime,
        requests=requests, payload=None if payload is USE_DEFAULT else payload, levels=results,
        warmup=warm,
        cpu_count=os.cpu_count() or 1, csv_path=str(csv_path), chart_svg=str(svg))
