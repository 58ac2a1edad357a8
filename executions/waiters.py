"""Waiting for executions to finish: woken by their announcement, not by polling.

Every waiter in the platform — the API's `?wait=`, a synchronous webhook, `dispatch --wait`,
`generate_executions`, the load test — comes here:

- `execution_wait` (a thread) and `execution_wait_async` (a coroutine, for an ASGI view: the
  database reads go through `sync_to_async`, the wait itself is on the event loop) wait for one
  execution, at most `timeout` seconds (capped by `KUBEFUNCTION_MAX_WAIT`);
- `wait_many` waits for many (a batch), calling back as they finish.

Each one subscribes to the task ids first (`executions.notifications`), then re-reads, then
waits: a finish before the re-read is seen by it, one after is heard, so no wake-up is lost.
A notification makes it re-read what was announced, once; on Postgres a lost notification is
made good by the listener's sweep (`executions.notifications`: one query per process, which
wakes the waiter as a notification would), on the embedded SQLite, which has no notifications,
it re-reads on a short backoff; and it re-reads once more when the time is up.

While it waits it holds no database connection: after `HOLD_SECONDS` it closes its thread's
Django connection (unless the caller is inside a transaction, which must keep it) and opens one
only to re-read. The hold spares a fast function's caller a new connection for its re-read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from .models import Execution
from .notifications import Subscription, notifier
from .selectors import finished_among

# Seconds a waiter keeps its database connection before it closes it for the rest of the wait.
HOLD_SECONDS = 0.05

# The waiting policy, as steps for a driver (a thread or a coroutine) to carry out:
READ = "read"  # re-read the announced keys (None: all); the driver answers whether it is done
RELEASE = "release"  # close this thread's database connection
WAIT = "wait"  # wait so many seconds for an announcement; the driver answers whether one came


def release_connection() -> None:
    """Close this thread's Django connection, unless a transaction is using it (the next query
    opens a new one)."""
    if not connection.in_atomic_block:
        connection.close()


def _plan(subscription: Subscription, deadline: float, delays) -> Generator[tuple, Any, None]:
    """Read, then until done or `deadline`: wait for an announcement (or the next fallback
    delay), re-read what it names; release the connection once `HOLD_SECONDS` have passed."""
    hold_until = time.monotonic() + HOLD_SECONDS
    holding = True
    done = yield READ, None
    next_read = time.monotonic() + next(delays)
    while not done:
        now = time.monotonic()
        if now >= deadline:
            yield READ, None  # the freshest answer the caller can have
            return
        if holding and now >= hold_until:
            yield RELEASE, None
            holding = False
        until = min(deadline, next_read, hold_until if holding else deadline)
        if (yield WAIT, until - now):
            heard, everything = subscription.take()
            if everything:
                done = yield READ, None
                next_read = time.monotonic() + next(delays)
            elif heard:
                done = yield READ, heard
        elif time.monotonic() >= next_read:  # nothing heard: the fallback
            done = yield READ, None
            next_read = time.monotonic() + next(delays)
        if not done and not holding:
            yield RELEASE, None


def _drive(keys, deadline: float, read: Callable[[frozenset | None], bool]) -> None:
    """Carry out the waiting policy in this thread."""
    subscription = Subscription(keys)
    source = notifier()
    source.subscribe(subscription)
    try:
        plan = _plan(subscription, deadline, source.fallback_delays())
        answer = None
        while True:
            step, argument = plan.send(answer)
            if step == READ:
                answer = read(argument)
            elif step == RELEASE:
                release_connection()
                answer = None
            else:
                answer = subscription.wait(argument)
    except StopIteration:
        pass
    finally:
        source.unsubscribe(subscription)


def _deadline(timeout: float) -> float:
    return time.monotonic() + min(timeout, settings.KUBEFUNCTION_MAX_WAIT)


def _reread(execution: Execution) -> bool:
    execution.refresh_from_db()
    return execution.is_finished


def execution_wait(*, execution: Execution, timeout: float) -> Execution:
    """The execution, re-read once it finished, or as it is after `timeout` seconds (at most
    `KUBEFUNCTION_MAX_WAIT`)."""
    if execution.is_finished or timeout <= 0:
        return execution
    _drive([execution.task_id], _deadline(timeout), lambda keys: _reread(execution))
    return execution


async def execution_wait_async(*, execution: Execution, timeout: float,
                               release: bool = True) -> Execution:
    """`execution_wait` for a coroutine: no thread waits, only the short re-reads (and the
    connection's release) run in a thread, through `sync_to_async`.

    `release=False` keeps the connection of the thread the re-reads run in: for the web
    server's threads (kubefunction/asgi.py), a fixed few per process whose connections serve
    every request, not this wait; closing one would only make the next request, or the next
    waiter's re-read, open a new one (a thousand waiters: a reconnection per fallback read)."""
    if execution.is_finished or timeout <= 0:
        return execution
    subscription = Subscription([execution.task_id], loop=asyncio.get_running_loop())
    source = notifier()
    source.subscribe(subscription)
    read, release_thread_connection = sync_to_async(_reread), sync_to_async(release_connection)
    try:
        plan = _plan(subscription, _deadline(timeout), source.fallback_delays())
        answer = None
        while True:
            step, argument = plan.send(answer)
            if step == READ:
                answer = await read(execution)
            elif step == RELEASE:
                answer = await release_thread_connection() if release else None
            else:
                answer = await subscription.wait_async(argument)
    except StopIteration:
        pass
    finally:
        source.unsubscribe(subscription)
    return execution


def wait_many(*, ids: Sequence, timeout: float,
              on_progress: Callable[[int], object] | None = None) -> dict[Any, tuple]:
    """Wait until the executions `ids` finish or `timeout` seconds pass (no upper bound: for
    commands). Returns {id: (id, status, dispatched_at, finished_at)} of those that finished;
    `on_progress(n)` whenever n more did. Each announcement re-reads only the executions it
    names."""
    deadline = time.monotonic() + timeout
    task_ids = {}
    for start in range(0, len(ids), 1000):
        task_ids.update(Execution.objects.filter(pk__in=ids[start:start + 1000])
                        .values_list("task_id", "pk"))
    pending = set(task_ids.values())
    done: dict[Any, tuple] = {}

    def read(keys: frozenset | None) -> bool:
        among = pending if keys is None else pending & {task_ids[key] for key in keys}
        newly = {row[0]: row for row in finished_among(list(among))}
        if newly:
            done.update(newly)
            pending.difference_update(newly)
            if on_progress is not None:
                on_progress(len(newly))
        return not pending

    if pending:
        _drive(task_ids, deadline, read)
    return done
