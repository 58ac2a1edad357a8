"""`?wait=` in the API without a thread held for the wait.

DRF views are sync. A view that would wait returns a `WaitingResponse` instead, at once: its
authentication, permissions, throttles, input checks and error answers have all run as they
always do. The viewset's URLs are async views (`WaitsWithoutThread.as_view`) that run the DRF view
in the request's sync thread, await the execution on the event loop (executions.waiters), then
fill the response in, in the sync thread again (serializers read related rows); DRF renders it as
it renders any other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from rest_framework.response import Response

from .models import Execution
from .waiters import execution_wait_async

# (execution once waited for) -> (data, status) of the answer
Answer = Callable[[Execution], tuple[Any, int]]


class WaitingResponse(Response):
    """The answer of a `?wait=` request, given once `execution` finished or `timeout` s passed."""

    def __init__(self, *, execution: Execution, timeout: float, answer: Answer) -> None:
        super().__init__()
        self.execution, self.timeout, self.answer = execution, timeout, answer

    def fill(self, execution: Execution) -> None:
        self.data, self.status_code = self.answer(execution)


def waiting_view(view: Callable) -> Callable:
    """`view` (a DRF view function) as an async view that awaits the `WaitingResponse`s it
    returns; every other response passes as it is."""
    @functools.wraps(view)
    async def waits(request, *args, **kwargs):
        response = await sync_to_async(view)(request, *args, **kwargs)
        if isinstance(response, WaitingResponse):
            execution = await execution_wait_async(execution=response.execution,
                                                   timeout=response.timeout, release=False)
            await sync_to_async(response.fill)(execution)
        return response
    return waits


class WaitsWithoutThread:
    """Viewset mixin: its URLs are `waiting_view`s, so its actions may answer `?wait=` with a
    `WaitingResponse`."""

    @classmethod
    def as_view(cls, actions=None, **initkwargs):
        return waiting_view(super().as_view(actions, **initkwargs))
