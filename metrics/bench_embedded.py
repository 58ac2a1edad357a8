"""The embedded mode against Postgres + Redis on the same machine (issue 14: ≥ 0.5×).

Settings decide the mode at import, so each mode runs in a process of its own, a *side*
(`manage.py bench_embedded --side`): it migrates its database, starts its worker as `bench` does
(prefork, 2 processes) and warms the trivial function up on the warm local runtime, then runs a
round — sequential round trips, then a burst — each time the parent asks, answering with its
figures as a JSON line. The parent starts both sides, then asks them in turn, round after round,
so that drift in the machine's load hits both alike; the side not measuring waits, its worker
blocked on Redis at no cost.

The embedded side runs as `make up` runs it: SQLite under its own var dir (`var/bench-embedded/`,
kept between runs) and the bundled Redis on its socket there, started and stopped by this
process through `EmbeddedRedis`, the class `make up` uses. The other side is this checkout's own
Postgres + Redis, the database and queue `bench` uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.core.management import call_command

from kubefunction.state_backends import EmbeddedRedis

from .bench import Figures, Series, _wait_all, measure, platform_senders, worker_process

FLOOR = 0.5  # the embedded mode's burst throughput, as a share of Postgres + Redis's
POSTGRES_REDIS = "Postgres + Redis"
EMBEDDED = "embedded (SQLite + bundled Redis)"


def run_side(stdin: IO[str], stdout: IO[str], *, samples: int, burst: int) -> None:
    """One side: set up, say `ready`, then one round per line read, until stdin closes."""
    call_command("migrate", interactive=False, verbosity=0)
    send_one, send_burst = platform_senders("local")
    with worker_process():
        _wait_all(send_burst(20))  # the warm runners, the connections
        print("ready", file=stdout, flush=True)
        for _line in stdin:
            series = Series("")
            measure(series, send_one, send_burst, samples, burst)
            print(json.dumps({"latencies": series.latencies,
                              "throughput": series.throughputs[0]}), file=stdout, flush=True)


@dataclass
class Side:
    name: str
    process: subprocess.Popen
    series: Series

    def ready(self) -> None:
        line = self.process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{self.name}: the bench side did not start ({line or 'no answer'}"
                               f"; see its var dir's bench-worker.log)")

    def round(self) -> None:
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"{self.name}: the bench side ended mid-run")
        figures = json.loads(answer)
        self.series.latencies += figures["latencies"]
        self.series.throughputs.append(figures["throughput"])


def side_environments() -> dict[str, dict[str, str]]:
    """The environment of each side's process (the embedded one's var dir in `var/`)."""
    embedded = {key: value for key, value in os.environ.items()
                if key not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    embedded.update(KUBEFUNCTION_EMBEDDED="true",
                    KUBEFUNCTION_VAR_DIR=str(settings.VAR_DIR / "bench-embedded"))
    return {POSTGRES_REDIS: dict(os.environ), EMBEDDED: embedded}


@contextmanager
def started(name: str, env: Mapping[str, str], *, samples: int, burst: int) -> Iterator[Side]:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "bench_embedded", "--side", f"--samples={samples}",
         f"--burst={burst}"], cwd=settings.BASE_DIR, env=dict(env), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield Side(name, process, Series(name))
    finally:
        process.stdin.close()  # the side's loop ends, its worker stops
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_bench_embedded(samples: int = 50, burst: int = 300,
                       rounds: int = 3) -> tuple[Figures, Figures]:
    """Postgres + Redis's figures and the embedded mode's, measured in alternating rounds."""
    if settings.EMBEDDED_DATABASE or settings.EMBEDDED_BROKER:
        raise RuntimeError("this checkout runs embedded: the comparison needs it on Postgres + "
                           "Redis (set KUBEFUNCTION_EMBEDDED=false, or DATABASE_URL and "
                           "CELERY_BROKER_URL)")
    environments = side_environments()
    with ExitStack() as stack:
        stack.enter_context(EmbeddedRedis(settings.VAR_DIR / "bench-embedded"))
        sides = [stack.enter_context(started(name, env, samples=samples, burst=burst))
                 for name, env in environments.items()]
        for each in sides:  # both started at once; each warms up while the other does
            each.ready()
        for _ in range(rounds):
            for each in sides:
                each.round()
    return tuple(each.series.figures(burst) for each in sides)
