"""What happens after an execution reaches its terminal record (callbacks, batch progress).

Called by the run path after every terminal write; must be cheap when there is nothing to do.
"""

from __future__ import annotations


def execution_finished(execution_id: str, *, callback_url: str = "",
                       batch_id: str | None = None) -> None:
    """React to a finished execution: deliver its callback, close its batch when it was the last.

    Filled in by the callbacks/batches work (issue 6); a no-op until then.
    """
