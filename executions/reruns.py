"""Re-running a finished execution (docs/executions.md).

A re-run is a new execution with the same input and trigger, pointing to the one it re-runs
(`rerun_of`), against the same version or the function's current one. It is asynchronous and
takes the trigger's current retry settings (the original's when the trigger is gone) and the
original's callback URL. A trigger that was disabled since does not stop a re-run: it is an
operator's decision about one execution, not the trigger firing.
"""

from __future__ import annotations

from enum import StrEnum

from functions.models import FunctionVersion, VersionStatus
from kubefunction.errors import Conflict, InvalidInput

from .models import Execution
from .services import execution_enqueue, image_check


class RerunVersion(StrEnum):
    SAME = "same"  # the version the execution ran
    CURRENT = "current"  # the function's active version now


def _target_version(execution: Execution, version: str) -> FunctionVersion:
    try:
        choice = RerunVersion(version)
    except ValueError:
        raise InvalidInput(f"version must be 'same' or 'current', not {version!r}.",
                           field="version") from None
    function = execution.function
    target = execution.version if choice is RerunVersion.SAME else function.active_version
    if target is None or target.status != VersionStatus.READY:
        what = f"version {target.number} is {target.status}" if target else "it has no version"
        raise Conflict(f"function '{function.name}' cannot run it: {what}.", field="version")
    image_check(function, target, field="version")
    return target


def execution_rerun(*, execution: Execution, version: str = RerunVersion.SAME,
                    user=None) -> Execution:
    """Queue a new execution of `execution`'s input and trigger on the `same` version or the
    `current` one; only a finished execution can be re-run. The task is sent after commit."""
    if not execution.is_finished:
        raise Conflict(f"execution {execution.task_id} is {execution.status}: only a finished "
                       "execution can be re-run.", field="execution")
    if execution.payload_purged_at is not None or execution.input_sha256:
        raise Conflict(f"execution {execution.task_id} kept only a hash of its input (payload "
                       "retention): there is nothing to re-run it with.", field="execution")
    target = _target_version(execution, version)
    trigger = execution.trigger
    settings_from = trigger or execution
    [rerun] = execution_enqueue(
        function=execution.function, version=target, trigger=trigger,
        inputs=[execution.input], user=user, max_retries=settings_from.max_retries,
        retry_backoff_seconds=settings_from.retry_backoff_seconds,
        callback_url=execution.callback_url, rerun_of=execution,
        http_request=execution.http_request)
    return rerun
