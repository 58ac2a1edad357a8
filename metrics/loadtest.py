"""The load test: retrieval time and CPU utilisation as concurrent requests grow.

For each concurrency level, that many threads each dispatch through the platform's dispatch
service and wait for the stored result (closed loop: a thread sends its next request when the
previous one finished, until the level's request count is reached). Retrieval time is what a
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
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from executions.models import Execution, ExecutionStatus
from executions.services import USE_DEFAULT, execution_dispatch
from executions.waiters import execution_wait
from kubefunction.stats import percentile
from triggers.models import Trigger

from .charts import COLOURS, HEIGHT, WIDTH, Series, chart
from .models import LoadTestRun


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


def _wait_finished(execution: Execution, deadline: float) -> str | None:
    """The execution's final status, read back when its finish is announced; None at the
    deadline."""
    while not execution.is_finished and time.monotonic() < deadline:
        execution = execution_wait(execution=execution, timeout=deadline - time.monotonic())
    return execution.status if execution.is_finished else None


def run_level(*, trigger: Trigger, concurrency: int, requests: int, payload: Any,
              timeout: float, on_done: Callable[[], None] | None = None) -> Level:
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
                execution = execution_dispatch(trigger=trigger, payload=payload)
                status = _wait_finished(execution, time.monotonic() + timeout)
                elapsed = time.perf_counter() - started
                with lock:
                    times.append(elapsed)
                    errors += status != ExecutionStatus.SUCCEEDED.value
                if on_done:
                    on_done()
        finally:
            connection.close()  # each thread has its own connection

    psutil.cpu_percent(interval=None)  # start the measurement window
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    seconds = time.perf_counter() - started
    cpu = psutil.cpu_percent(interval=None)
    return Level(concurrency=concurrency, requests=requests, errors=errors,
                 p50=percentile(times, 0.5), p95=percentile(times, 0.95),
                 max=max(times) if times else None, cpu_percent=cpu, seconds=seconds,
                 throughput=requests / seconds if seconds else 0.0)


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
                 on_done: Callable[[], None] | None = None,
                 on_level: Callable[[Level], None] | None = None) -> LoadTestRun:
    """Run every level in turn, write the CSV and SVG files, and store the run."""
    results = []
    for concurrency in levels:
        close_old_connections()
        level = run_level(trigger=trigger, concurrency=concurrency,
                          requests=requests or concurrency, payload=payload, timeout=timeout,
                          on_done=on_done)
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
        cpu_count=os.cpu_count() or 1, csv_path=str(csv_path), chart_svg=str(svg))
