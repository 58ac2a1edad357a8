"""The warm pool every pooled runtime shares: idle runners (local processes, docker containers)
kept for the next call of the same version, and the one invoke loop over them.

Bounded per key and in total (least recently used goes first), idle processes expire, and a
daemon thread sweeps expired ones every few seconds. A process is owned by the pool only while
idle: `acquire` hands it out, `release` takes it back. The pool belongs to the process that made
it; after a fork the child starts empty rather than sharing its parent's children.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

from functions.specs import FunctionSpec

from .base import Runtime
from .wire import Exchange, max_frame_bytes, reusable


class WarmRunner(Protocol):
    """A long-lived runner (a local process, a docker container): one request at a time."""

    def exchange(self, request: bytes, nonce: str, deadline: float, *, max_log_bytes: int,
                 max_frame_bytes: int) -> Exchange: ...

    def alive(self) -> bool: ...

    def kill(self) -> None: ...


@dataclass(frozen=True)
class PoolLimits:
    size: int  # idle processes in all; 0 disables the pool
    per_key: int  # idle processes per key
    idle_seconds: float  # an idle process older than this is terminated


class WarmPool:
    def __init__(self, limits: Callable[[], PoolLimits]) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        # id(process) -> (key, process, idle since), least recently released first
        self._idle: OrderedDict[int, tuple[Hashable, WarmRunner, float]] = OrderedDict()
        self._live: weakref.WeakSet[WarmRunner] = weakref.WeakSet()
        self._owner = os.getpid()
        self._sweeper: threading.Thread | None = None
        self._wake = threading.Event()
        atexit.register(self.close)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _fresh_locks(ref()))

    def track(self, process: WarmRunner) -> None:
        """Remember a newly spawned process so `close` kills it even while it is in use."""
        with self._lock:
            self._adopt()
            self._live.add(process)

    def acquire(self, key: Hashable) -> WarmRunner | None:
        """An idle live process for `key` (the most recently used), or None."""
        while True:
            found = None
            with self._lock:
                self._adopt()
                limits = self._limits()
                if limits.size <= 0 or limits.per_key <= 0:  # disabled since they were pooled
                    victims = [entry[1] for entry in self._idle.values()]
                    self._idle.clear()
                else:
                    victims = self._expired(limits)
                for ident in reversed(self._idle):
                    if self._idle[ident][0] == key:
                        found = self._idle.pop(ident)[1]
                        break
            _kill(victims)
            if found is None or found.alive():
                return found

    def release(self, key: Hashable, process: WarmRunner) -> None:
        """Take back a healthy process after a call; kills whatever the limits do not allow."""
        limits = self._limits()
        if limits.size <= 0 or limits.per_key <= 0:
            process.kill()
            return
        with self._lock:
            self._adopt()
            self._idle[id(process)] = (key, process, time.monotonic())
            victims = self._expired(limits)
            same_key = [ident for ident, entry in self._idle.items() if entry[0] == key]
            for ident in same_key[: max(0, len(same_key) - limits.per_key)]:
                victims.append(self._idle.pop(ident)[1])
            while len(self._idle) > limits.size:
                victims.append(self._idle.popitem(last=False)[1][1])
            self._start_sweeper()
        _kill(victims)

    def drop(self, match: Callable[[Hashable], bool]) -> int:
        """Kill the idle processes whose key matches; returns how many."""
        with self._lock:
            self._adopt()
            gone = [ident for ident, entry in self._idle.items() if match(entry[0])]
            victims = [self._idle.pop(ident)[1] for ident in gone]
        _kill(victims)
        return len(victims)

    def sweep(self) -> int:
        """Kill the idle processes that expired; returns how many."""
        with self._lock:
            self._adopt()
            victims = self._expired(self._limits())
        _kill(victims)
        return len(victims)

    def close(self) -> None:
        """Kill every process this pool knows, idle or in use (at exit, in tests)."""
        with self._lock:
            if self._owner != os.getpid():
                return
            victims = [entry[1] for entry in self._idle.values()] + list(self._live)
            self._idle.clear()
            self._sweeper = None
            self._wake.set()
        _kill(victims)

    def __len__(self) -> int:
        return len(self._idle)

    # --- under the lock ---------------------------------------------------------------------

    def _expired(self, limits: PoolLimits) -> list[WarmRunner]:
        cutoff = time.monotonic() - limits.idle_seconds
        expired = [ident for ident, entry in self._idle.items() if entry[2] <= cutoff]
        return [self._idle.pop(ident)[1] for ident in expired]

    def _adopt(self) -> None:
        """After a fork, forget the parent's processes: they are not ours to use or kill."""
        pid = os.getpid()
        if pid != self._owner:
            self._owner = pid
            self._idle.clear()
            self._live = weakref.WeakSet()
            self._sweeper = None
            self._wake = threading.Event()

    def _start_sweeper(self) -> None:
        if self._sweeper is None or not self._sweeper.is_alive():
            self._wake = threading.Event()
            self._sweeper = threading.Thread(
                target=self._sweep_forever, name="kubefunction-warm-pool", daemon=True
            )
            self._sweeper.start()

    def _sweep_forever(self) -> None:
        me, wake = threading.current_thread(), self._wake
        while self._sweeper is me:
            if wake.wait(min(5.0, max(0.5, self._limits().idle_seconds / 2))):
                return  # closed
            self.sweep()


def _fresh_locks(pool: WarmPool | None) -> None:
    # Another thread may have held these at the fork; the child's copies would never be released.
    if pool is not None:
        pool._lock = threading.Lock()
        pool._wake = threading.Event()


def _kill(processes: list[WarmRunner]) -> None:
    for process in processes:
        process.kill()


class PooledRuntime(Runtime):
    """A runtime that keeps warm runners (processes, containers) per version in a `WarmPool`
    (`self._pool`, made by the subclass)."""

    _pool: WarmPool

    def _exchange_pooled(self, key: Hashable, start: Callable[[], WarmRunner], request: bytes,
                         nonce: str, deadline: float) -> tuple[Exchange, bool]:
        """Send one request to an idle runner for `key`, or to one `start()` makes; returns
        what came back and whether the runner was new (cold). A runner that answered well goes
        back to the pool, any other is killed. One that died idle (the request never reached
        it, before the deadline) is replaced once: the function never saw the call."""

        def fresh() -> WarmRunner:
            runner = start()
            self._pool.track(runner)
            return runner

        runner = self._pool.acquire(key)
        cold = runner is None
        if runner is None:
            runner = fresh()
        limits = {"max_log_bytes": settings.KUBEFUNCTION_MAX_LOG_BYTES,
                  "max_frame_bytes": max_frame_bytes()}
        try:
            exchange = runner.exchange(request, nonce, deadline, **limits)
            if not exchange.sent and not cold and not exchange.timed_out:
                runner = fresh()
                cold = True
                exchange = runner.exchange(request, nonce, deadline, **limits)
        except BaseException:
            runner.kill()
            raise
        if exchange.frame is not None and reusable(exchange.frame) and runner.alive():
            self._pool.release(key, runner)
        else:
            runner.kill()
        return exchange, cold

    def release(self, spec: FunctionSpec) -> None:
        self._pool.drop(lambda key: key[0] == spec.version_id)

    @property
    def warm_count(self) -> int:
        """How many idle runners the warm pool holds now."""
        return len(self._pool)

    def close(self) -> None:
        """Stop every runner this runtime started (idle or busy)."""
        self._pool.close()

