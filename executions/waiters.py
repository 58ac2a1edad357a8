"""Waiting for an execution to finish from async code (the web server's waiting requests).

TEMPORARY (branch h4): a stand-in with the name and signature of helper 3's
`execution_wait_async` (Postgres LISTEN/NOTIFY, no database connection held while waiting), to be
replaced by theirs when it lands. It polls, but never holds a thread for the wait: each read runs
through `sync_to_async` (the request's own sync thread, kubefunction.asgi) and the pauses between
reads are `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.conf import settings

from .models import Execution

FIRST_DELAY = 0.005
MAX_DELAY = 0.5


async def execution_wait_async(*, execution: Execution, timeout: float) -> Execution:
    """The execution once it finished, or as it is after `timeout` seconds (bounded by
    KUBEFUNCTION_MAX_WAIT)."""
    deadline = time.monotonic() + min(timeout, settings.KUBEFUNCTION_MAX_WAIT)
    delay = FIRST_DELAY
    while not execution.is_finished and time.monotonic() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, MAX_DELAY)
        await sync_to_async(execution.refresh_from_db)()
    return execution
