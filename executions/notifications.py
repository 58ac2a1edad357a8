"""Finished executions announced to the processes that wait for them.

Publishing: every write that ends an execution (`executions.transitions`: `finish`, `fail`,
`cancel`) announces its task id with `pg_notify(CHANNEL, task_id)` in the same statement or
transaction as the write, after the Celery result row. Postgres delivers a notification only
when that transaction commits, so a waiter never hears of an outcome before it is durable, and
whatever it re-reads (the execution row, its result row) is already there.

Hearing: one `Notifier` per process. On Postgres (`ListeningNotifier`) a daemon thread holds
one dedicated psycopg2 connection (not Django's; `application_name` is
`kubefunction-listener:<pid>`), `LISTEN`s on the channel and fans each notification out to the
subscriptions waiting for that task id: a `threading.Event` for a thread, the event loop's
`call_soon_threadsafe` for a coroutine. It starts on the first subscription; a dropped
connection is re-made with backoff, and every (re)connection wakes every subscription, since
what committed while nobody listened was never heard (the first connection too: a
subscription made before the `LISTEN` took effect is woken once it has). A forked child
(Celery prefork, gunicorn workers) starts its own.

Elsewhere (the embedded SQLite: no LISTEN/NOTIFY) `PollingNotifier` wakes nobody and the
waiters re-read on a short backoff instead. Both are behind `Notifier`, so another transport
(a Redis pub/sub channel, published after commit) needs one more class and nothing else.

A waiter (`executions.waiters`) subscribes *before* it re-reads what it waits for, so a finish
between its read and its wait is either seen by the read or heard. The safety net for a
notification lost to a bug is the notifier's: on Postgres the listening thread itself, a few
times per `KUBEFUNCTION_WAIT_FALLBACK_SECONDS`, reads in one query which of the task ids waited
for longer than that have finished and wakes their waiters as if it had heard them — one query
per process, however many wait (a thousand waiting webhooks re-reading on their own would be
hundreds of queries a second); the embedded SQLite's waiters re-read on their backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import select
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from itertools import repeat

import psycopg2
import psycopg2.extensions
from django.conf import settings
from django.db import connection, connections

from .models import FINISHED_STATUSES, Execution

logger = logging.getLogger(__name__)

CHANNEL = "kubefunction_finished"
# The listener pings its connection when it heard nothing for this long, so a connection that
# died without a word (a dropped network path) is found and re-made.
IDLE_PING_SECONDS = 20.0
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
# Without notifications: re-read after 5 ms, then 1.5 times longer each time, up to 200 ms.
POLL_FIRST_SECONDS, POLL_FACTOR, POLL_MAX_SECONDS = 0.005, 1.5, 0.2


_SWEEP = (f'SELECT task_id FROM "{Execution._meta.db_table}" '
          "WHERE task_id = ANY(%s) AND status = ANY(%s)")


def announces() -> bool:
    """Whether writes on Django's connection announce what they end (Postgres)."""
    return connection.vendor == "postgresql"


def announce(task_id: str) -> None:
    """Announce that the execution `task_id` ended, inside the transaction that ended it
    (heard once it commits). Nothing where the database has no notifications."""
    if announces():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, task_id])


# The listener's sweep for lost notifications runs this many times per fallback period, so a
# waiter whose notification was lost is woken between one and 1.25 fallback periods after it
# subscribed.
SWEEPS_PER_FALLBACK = 4
# The longest the listening thread sleeps in one poll (a changed fallback setting is seen then).
MAX_POLL_SECONDS = 0.5


class Subscription:
    """What one waiter hears: the task ids among `keys` announced since it last looked, or
    that it must re-read everything (the listener reconnected).

    Woken through a `threading.Event`, or, when made with the waiting coroutine's `loop`,
    through that loop (`wait_async`)."""

    def __init__(self, keys: Iterable[str], loop: asyncio.AbstractEventLoop | None = None):
        self.keys = frozenset(keys)
        self.since = time.monotonic()  # when it subscribed: the sweep's age
        self._lock = threading.Lock()
        self._heard: set[str] = set()
        self._everything = False
        self._loop = loop
        self._event = threading.Event()
        self._async_event = asyncio.Event() if loop is not None else None

    def hear(self, key: str | None) -> None:
        """From the listener: `key` was announced (None: anything may have been)."""
        with self._lock:
            if key is None:
                self._everything = True
            else:
                self._heard.add(key)
            self._event.set()
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_event.set)
            except RuntimeError:  # the loop closed: its waiter is gone
                pass

    def take(self) -> tuple[set[str], bool]:
        """(the keys heard, whether to re-read everything) since the last `take`; resets."""
        with self._lock:
            heard, everything = self._heard, self._everything
            self._heard, self._everything = set(), False
            self._event.clear()
            if self._async_event is not None:
                self._async_event.clear()
        return heard, everything

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for something to be heard; True if it was."""
        return self._event.wait(max(0.0, timeout))

    async def wait_async(self, timeout: float) -> bool:
        """`wait` for a coroutine on the subscription's loop: no thread waits."""
        try:
            await asyncio.wait_for(self._async_event.wait(), max(0.0, timeout))
        except TimeoutError:
            return self._event.is_set()
        return True


class Notifier(ABC):
    """Where a process hears of finished executions."""

    @abstractmethod
    def subscribe(self, subscription: Subscription) -> None:
        """Start delivering the announcements of `subscription.keys` to it."""

    @abstractmethod
    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to it."""

    @abstractmethod
    def fallback_delays(self) -> Iterator[float]:
        """Seconds to wait before each re-read when nothing is heard."""


class PollingNotifier(Notifier):
    """No notifications (the embedded SQLite): nobody is woken, waiters poll on a backoff."""

    def subscribe(self, subscription: Subscription) -> None:
        pass

    def unsubscribe(self, subscription: Subscription) -> None:
        pass

    def fallback_delays(self) -> Iterator[float]:
        delay = POLL_FIRST_SECONDS
        while True:
            yield delay
            delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)


def _listener_params(database) -> dict:
    """Connection parameters of Django's default `database`, for psycopg2 itself."""
    params = database.get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    params.update(application_name=f"kubefunction-listener:{os.getpid()}", keepalives=1,
                  keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    params.setdefault("connect_timeout", 5)
    return params


class ListeningNotifier(Notifier):
    """`LISTEN` on one dedicated connection in a daemon thread, fanned out to subscriptions."""

    def __init__(self, params: dict) -> None:
        self._params = params
        self._lock = threading.Lock()
        self._by_key: dict[str, set[Subscription]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wakeup_read, self._wakeup_write = os.pipe()  # ends the select when stopping
        self._connection = None
        self.connected = threading.Event()  # LISTEN is in effect
        self.connections = 0  # how many times it connected (the tests watch it recover)

    def subscribe(self, subscription: Subscription) -> None:
        with self._lock:
            for key in subscription.keys:
                self._by_key.setdefault(key, set()).add(subscription)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="kubefunction-listener")
                self._thread.start()

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            for key in subscription.keys:
                waiting = self._by_key.get(key)
                if waiting is not None:
                    waiting.discard(subscription)
                    if not waiting:
                        del self._by_key[key]

    def fallback_delays(self) -> Iterator[float]:
        return repeat(math.inf)  # the listener's sweep is the fallback (`_sweep`)

    def stop(self) -> None:
        """End the listening thread and close its connection (a process normally keeps it
        until it exits; the tests stop it before they drop their database)."""
        self._stop.set()
        os.write(self._wakeup_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)

    def _deliver(self, key: str | None) -> None:
        with self._lock:
            if key is None:
                waiting = {s for subscriptions in self._by_key.values() for s in subscriptions}
            else:
                waiting = set(self._by_key.get(key, ()))
        for subscription in waiting:
            subscription.hear(key)

    def _run(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while not self._stop.is_set():
            try:
                self._connection = psycopg2.connect(**self._params)
                self._connection.set_isolation_level(
                    psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with self._connection.cursor() as cursor:
                    cursor.execute(f'LISTEN "{CHANNEL}"')
                self.connections += 1
                self.connected.set()
                delay = RECONNECT_FIRST_SECONDS
                self._deliver(None)  # what committed before LISTEN took effect
                self._listen(self._connection)
            except (psycopg2.Error, OSError) as exc:
                if not self._stop.is_set():
                    logger.warning("execution listener: %s; reconnecting in %.1f s",
                                   str(exc).strip(), delay)
            except Exception:  # a bug here must not end the listening for the process
                logger.exception("execution listener failed; reconnecting in %.1f s", delay)
            finally:
                self.connected.clear()
                if self._connection is not None:
                    try:
                        self._connection.close()
                    except psycopg2.Error:
                        pass
                    self._connection = None
            self._deliver(None)  # announcements may be lost until it listens again
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _listen(self, conn) -> None:
        # poll(), not select(): a busy web process may hold descriptors past select's 1024.
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        poller.register(self._wakeup_read, select.POLLIN)
        last_query = last_sweep = time.monotonic()
        while not self._stop.is_set():
            fallback = float(settings.KUBEFUNCTION_WAIT_FALLBACK_SECONDS)
            next_sweep = last_sweep + fallback / SWEEPS_PER_FALLBACK
            now = time.monotonic()
            timeout = min(next_sweep, last_query + IDLE_PING_SECONDS, now + MAX_POLL_SECONDS)
            ready = {fd for fd, _ in poller.poll(max(0.0, timeout - now) * 1000)}
            if conn.fileno() in ready:
                conn.poll()
            while conn.notifies:
                self._deliver(conn.notifies.pop(0).payload)
            now = time.monotonic()
            if now >= next_sweep:
                if self._sweep(conn, older_than=now - fallback):
                    last_query = now
                last_sweep = now
            if not ready and now >= last_query + IDLE_PING_SECONDS:
                with conn.cursor() as cursor:  # heard nothing for a while: still there?
                    cursor.execute("SELECT 1")
                last_query = now

    def _sweep(self, conn, *, older_than: float) -> bool:
        """Wake the waiters of the task ids subscribed since before `older_than` whose
        executions have finished (their notification was lost): one query for all. Whether it
        queried."""
        with self._lock:
            keys = [key for key, subscriptions in self._by_key.items()
                    if any(s.since <= older_than for s in subscriptions)]
        if not keys:
            return False
        with conn.cursor() as cursor:
            cursor.execute(_SWEEP, [keys, [status.value for status in FINISHED_STATUSES]])
            finished = [row[0] for row in cursor.fetchall()]
        for key in finished:  # woken directly: not through the path that lost the notification
            logger.warning("execution listener: %s had finished unheard; its waiters are woken",
                           key)
            with self._lock:
                waiting = set(self._by_key.get(key, ()))
            for subscription in waiting:
                subscription.hear(key)
        return True

    def forget_in_child(self) -> None:
        """In a forked child: point the inherited copy of the parent's connection at /dev/null,
        so that closing or collecting it cannot end the parent's session on their shared
        socket."""
        conn = self._connection
        if conn is None:
            return
        try:
            fd = conn.fileno()
        except psycopg2.Error:
            return
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


_state_lock = threading.Lock()
_notifier: Notifier | None = None


def notifier() -> Notifier:
    """This process's notifier (made on first use; a forked child makes its own)."""
    global _notifier
    with _state_lock:
        if _notifier is None:
            # A wrapper of its own, never Django's per-thread one: this may run on an event
            # loop, whose thread must not own the connection its sync_to_async reads use.
            database = connections.create_connection("default")
            _notifier = ListeningNotifier(_listener_params(database)) \
                if database.vendor == "postgresql" else PollingNotifier()
        return _notifier


def stop_listening() -> None:
    """Stop this process's listener, if it has one (the next wait starts another)."""
    global _notifier
    with _state_lock:
        stopping, _notifier = _notifier, None
    if isinstance(stopping, ListeningNotifier):
        stopping.stop()


def _after_fork_in_child() -> None:
    """A forked child has no listening thread, only copies of its parent's objects: disarm the
    parent's connection and start afresh on first use."""
    global _notifier, _state_lock
    if isinstance(_notifier, ListeningNotifier):
        _notifier.forget_in_child()
    _notifier = None
    _state_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
