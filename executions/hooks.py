"""What happens after an execution reaches its terminal record (callbacks, batch progress).

Called by the run path after every terminal write; cheap when there is nothing to do: no query
at all for an execution with neither a callback URL nor a batch.
"""

from __future__ import annotations

from django.db import transaction

from .batches import batch_close_if_done
from .callbacks import callback_schedule


def execution_finished(execution_id: str, *, callback_url: str = "",
                       batch_id: str | None = None) -> None:
    """React to a finished execution: schedule its callback, close its batch when it was the
    last. Runs after the surrounding transaction commits, so the batch check sees this
    execution's terminal record."""
    if not callback_url and batch_id is None:
        return

    def react() -> None:
        if callback_url:
            callback_schedule(execution_id=execution_id)
        if batch_id is not None:
            batch_close_if_done(batch_id=batch_id)

    transaction.on_commit(react)
