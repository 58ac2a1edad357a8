"""The webhook benchmark: synchronous `POST /t/<name>` calls of a trivial function through the web
server as `make up` runs it (kubefunction.web_server: the Procfile's command), against two
floors measured in the same run: the same server answering `/healthz` (what serving a request
costs) and the Celery floor of `manage.py bench` (a bare no-op task through the same Redis,
worker and result table: what queueing and running cost).

For each kind of client — one that opens a connection per call, one that keeps it open
(keep-alive) — calls one after another (concurrency 1: p50/p95, and /healthz p50 the same way),
then `concurrency` clients in a closed loop (throughput and p99). Rounds alternate floor and
webhook, so drift in the machine's load weighs on both alike.

Goals (issue 14): at concurrency 1, p50 ≤ 1.2 × (/healthz p50 + floor p50); at concurrency 16,
throughput ≥ 0.8 × the floor's burst throughput and p99 ≤ 5 × p50.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from functions.models import Function
from functions.services import function_register
from kubefunction import web_server
from kubefunction.stats import percentile
from triggers.models import Trigger, TriggerKind
from triggers.services import trigger_create, trigger_token_regenerate

from .bench import BENCH_SOURCE, Series, floor_senders, measure, worker_process

NAME = "bench-webhook"
MODES = ("new connection per call", "keep-alive")


@dataclass
class ModeFigures:
    mode: str
    healthz_p50: float | None = None
    p50: float | None = None  # concurrency 1
    p95: float | None = None
    concurrent_p50: float | None = None
    concurrent_p99: float | None = None
    throughput: float | None = None  # calls/s at `concurrency`
    errors: int = 0


@dataclass
class WebhookFigures:
    floor_p50: float
    floor_burst: float  # tasks/s
    concurrency: int
    modes: list[ModeFigures] = field(default_factory=list)

    def goals(self, figures: ModeFigures) -> dict[str, tuple[float, float, bool]]:
        """{goal: (value, bound, met)} for one kind of client."""
        latency_bound = 1.2 * (figures.healthz_p50 + self.floor_p50)
        return {
            "p50 ≤ 1.2×(/healthz p50 + floor p50)": (
                figures.p50, latency_bound, figures.p50 <= latency_bound),
            f"throughput at {self.concurrency} ≥ 0.8× floor burst": (
                figures.throughput, 0.8 * self.floor_burst,
                figures.throughput >= 0.8 * self.floor_burst),
            f"p99 at {self.concurrency} ≤ 5× p50": (
                figures.concurrent_p99, 5 * figures.concurrent_p50,
                figures.concurrent_p99 <= 5 * figures.concurrent_p50),
        }


class Client:
    """HTTP calls to the server, on a new connection each (`keep_alive=False`) or on one kept
    open; each returns its duration in seconds and raises on an answer other than 200."""

    def __init__(self, port: int, *, keep_alive: bool) -> None:
        self.port, self.keep_alive = port, keep_alive
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            self.connection.request(method, path, body, headers or {})
            response = self.connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if not self.keep_alive or response.will_close:
            self.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status}")
        return time.perf_counter() - started

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _webhook_trigger() -> tuple[Trigger, str]:
    """The bench's HTTP trigger on its echo function, with a fresh token."""
    user, _ = get_user_model().objects.get_or_create(username="bench")
    function = Function.objects.filter(name=NAME).first()
    if function is None:
        function = function_register(name=NAME, owner=user, filename="bench.py",
                                     data=BENCH_SOURCE, runtime="local").function
    trigger = Trigger.objects.filter(name=NAME, kind=TriggerKind.HTTP).first()
    if trigger is None:
        trigger = trigger_create(name=NAME, function=function, user=user, kind="http")
        return trigger, trigger.token
    return trigger, trigger_token_regenerate(trigger=trigger)


def _closed_loop(clients: list[Client], send: Callable[[Client], float],
                 calls: int) -> tuple[list[float], float, int]:
    """`calls` calls shared by the clients, each sending its next when its last is answered:
    (latencies, wall seconds, errors)."""
    left = iter(range(calls))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]

    def run(client: Client) -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            try:
                latencies.append(send(client))
            except (OSError, RuntimeError, http.client.HTTPException):
                errors[0] += 1

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors[0]


@dataclass
class _Samples:
    healthz: list[float] = field(default_factory=list)
    serial: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    errors: int = 0


def run_webhook_bench(*, samples: int = 300, calls: int = 600, concurrency: int = 16,
                      floor_samples: int = 300, burst: int = 500, rounds: int = 3,
                      server_args: tuple[str, ...] = (),
                      log_dir: Path | None = None) -> WebhookFigures:
    """Start a worker and the web server (with `server_args` after the Procfile's, e.g. another
    `--worker-class` to compare), measure in alternating rounds, return the figures (latencies
    pooled over the rounds, throughputs their median)."""
    trigger, token = _webhook_trigger()
    log_dir = log_dir or Path(settings.VAR_DIR)
    env = {**os.environ, "DJANGO_DEBUG": "false", "KUBEFUNCTION_DISPATCH_RATE": "",
           "KUBEFUNCTION_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE}
    headers = {"X-KubeFunction-Token": token, "Content-Type": "application/json"}
    body = json.dumps({"n": 1}).encode()
    path = f"/t/{trigger.name}"

    def webhook(client: Client) -> float:
        return client.call("POST", path, body, headers)

    def healthz(client: Client) -> float:
        return client.call("GET", "/healthz")

    floor = Series("celery no-op (floor)")
    floor_send = floor_senders()
    collected = {mode: _Samples() for mode in MODES}
    with worker_process():
        server, base = web_server.start(env, log_dir / "bench-web.log", *server_args)
        port = int(base.rsplit(":", 1)[1])
        try:
            for mode in MODES:  # warm up: the runtime's warm runners, each thread's connection
                _closed_loop([Client(port, keep_alive=mode == "keep-alive")
                              for _ in range(concurrency)], webhook, 4 * concurrency)
            for _ in range(rounds):
                measure(floor, *floor_send, max(1, floor_samples // rounds), burst)
                for mode in MODES:
                    keep_alive = mode == "keep-alive"
                    got = collected[mode]
                    one = Client(port, keep_alive=keep_alive)
                    per_round = max(1, samples // rounds)
                    got.healthz += [healthz(one) for _ in range(per_round)]
                    got.serial += [webhook(one) for _ in range(per_round)]
                    one.close()
                    clients = [Client(port, keep_alive=keep_alive) for _ in range(concurrency)]
                    latencies, seconds, errors = _closed_loop(
                        clients, webhook, max(concurrency, calls // rounds))
                    for client in clients:
                        client.close()
                    got.concurrent += latencies
                    got.throughputs.append(len(latencies) / seconds)
                    got.errors += errors
        finally:
            web_server.stop(server)
    figures = WebhookFigures(floor_p50=percentile(floor.latencies, 0.5),
                             floor_burst=percentile(floor.throughputs, 0.5),
                             concurrency=concurrency)
    for mode, got in collected.items():
        figures.modes.append(ModeFigures(
            mode=mode, healthz_p50=percentile(got.healthz, 0.5),
            p50=percentile(got.serial, 0.5), p95=percentile(got.serial, 0.95),
            concurrent_p50=percentile(got.concurrent, 0.5),
            concurrent_p99=percentile(got.concurrent, 0.99),
            throughput=percentile(got.throughputs, 0.5), errors=got.errors))
    return figures


def as_dict(figures: WebhookFigures) -> dict:
    return asdict(figures)
