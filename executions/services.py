"""Dispatching and running executions.

`execution_dispatch_many` writes the rows first and sends the Celery tasks after commit, so a
worker never sees an execution that is not stored. `execution_run` claims the row with a
conditional update, so a duplicate message never runs a function twice; a redelivered one whose
claimer died runs it again as the next attempt (docs/reliability.md). The status changes
themselves are `executions.transitions`'; the messages go out through `executions.workers`.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.utils import timezone

from functions.models import FunctionVersion, VersionStatus
from functions.selectors import builds_image
from functions.specs import FunctionSpec, version_spec
from kubefunction.access import runtime_allowed, runtime_refusal
from kubefunction.errors import Conflict, InvalidInput, PayloadTooLarge, ServiceUnavailable
from kubefunction.throttles import dispatch_reserve, user_ident

from . import (
    concurrency,
    db_retry,
    hooks,
    idempotency,
    quotas,
    retention,
    retries,
    transitions,
    workers,
)
from .models import Batch, Execution, ExecutionStatus
from .results import result_row
from .runtimes import get_runtime
from .runtimes.base import InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable

if TYPE_CHECKING:  # a trigger's row, read not imported: triggers/ sits above executions/
    from triggers.models import Trigger

logger = logging.getLogger(__name__)

USE_DEFAULT = object()


# A webhook's request description (`http_request`) holds a body already checked against the
# limit, perhaps base64 (4/3 of it), and the request's headers.
HTTP_DESCRIPTION_HEADROOM = 64 * 1024


def payload_check(payload: Any, *, field: str = "payload", http_request: bool = False) -> Any:
    """Refuse a payload that is not JSON, holds NUL characters or is over the size limit (for a
    request description: room for the body as base64 and the headers)."""
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"the payload is not JSON: {exc}", field=field) from exc
    if "\\u0000" in text:
        raise InvalidInput("the payload holds a NUL character (\\u0000), which cannot be stored.",
                           field=field)
    size = len(text.encode())
    limit = settings.KUBEFUNCTION_MAX_PAYLOAD_BYTES
    if http_request:
        limit = limit * 4 // 3 + HTTP_DESCRIPTION_HEADROOM
    if size > limit:
        raise PayloadTooLarge(f"the payload is {size} bytes; the limit is {limit}.", field=field)
    return payload


def _send(executions: Sequence[Execution]) -> None:
    """Send the run tasks of new executions. Raises `ServiceUnavailable` when the broker is
    unreachable (they stay queued: the reaper sends them)."""
    try:
        workers.send_run((execution.pk, execution.task_id) for execution in executions)
    except workers.BrokerUnreachable as exc:
        logger.error("broker unreachable: %d execution(s) stored but not sent", len(executions))
        raise ServiceUnavailable(
            f"the broker is unreachable ({exc}): {len(executions)} execution(s) are stored as "
            f"queued but were not sent; the first is {executions[0].task_id}.") from exc


def owner_may_run(*, runtime: str, owner_id: int) -> bool:
    """Whether a function of `owner_id` on `runtime` may run (KUBEFUNCTION_ALLOWED_RUNTIMES);
    the owner is read only when the runtime is not on the list."""
    return runtime_allowed(runtime=runtime, owner_is_superuser=False) or runtime_allowed(
        runtime=runtime, owner_is_superuser=get_user_model().objects.filter(
            pk=owner_id, is_superuser=True).exists())


def image_check(function, version: FunctionVersion, *, field: str) -> None:
    """Refuse (409) a function whose runtime the operator does not allow (naming `runtime`), or
    a version whose function's runtime runs images when its image is not built yet (naming
    `field`)."""
    if not owner_may_run(runtime=function.runtime, owner_id=function.owner_id):
        raise Conflict(f"function '{function.name}' cannot run: "
                       f"{runtime_refusal(function.runtime)}", field="runtime")
    if builds_image(function) and not version.image:
        raise Conflict(f"version {version.number} of '{function.name}' has no image for the "
                       f"{function.effective_runtime} runtime yet: build it "
                       f"(POST /api/functions/{function.name}/build/).", field=field)


def execution_dispatch_many(*, trigger: Trigger, payloads: Sequence[Any], user=None,
                            source: str = "", callback_url: str = "",
                            synchronous: bool = False,
                            batch: Batch | None = None,
                            http_request: bool = False,
                            idempotency_keys: Sequence[str | None] | None = None,
                            request_hashes: Sequence[str] | None = None,
                            idempotency_scope: str = "",
                            ) -> list[Execution]:
    """Queue one execution per payload (`USE_DEFAULT` takes the trigger's default payload).

    More than one payload is recorded as a `Batch` (`source`: api, admin, command).
    `callback_url` overrides the trigger's default callback; a `synchronous` execution (a
    caller waits for it) is never retried. `http_request`: each payload is a webhook's HTTP
    request description, which the function's convention makes its event from. A saved `batch`
    (one batch over several calls, e.g. `manage.py dispatch` in chunks) takes these executions
    instead. `idempotency_keys`, one per payload (None: no key), give back the execution an
    earlier dispatch with the same key made (executions/idempotency.py; it has `replayed`
    True); `request_hashes` say what each key stands for when it is not the payload (a
    webhook's call), `idempotency_scope` whose keys they are ("": the owner's own). Returns at
    once; the tasks are sent after the surrounding transaction commits.
    """
    if not payloads:
        raise InvalidInput("give at least one payload.", field="payloads")
    if len(payloads) > settings.KUBEFUNCTION_MAX_BATCH:
        raise PayloadTooLarge(
            f"{len(payloads)} payloads; at most {settings.KUBEFUNCTION_MAX_BATCH} per dispatch.",
            field="payloads")
    if not trigger.enabled:
        raise Conflict(f"trigger '{trigger.name}' is disabled.", field="trigger")
    function = trigger.function
    version = function.active_version
    if version is None or version.status != VersionStatus.READY:
        latest = function.versions.order_by("-number").first()
        state = f"its latest version {latest.number} is {latest.status}" if latest else \
            "it has no version"
        raise Conflict(f"function '{function.name}' has no ready version: {state}.",
                       field="trigger")
    image_check(function, version, field="trigger")
    payloads = [payload_check(trigger.default_payload if p is USE_DEFAULT else p,
                              http_request=http_request) for p in payloads]
    keys = None
    if idempotency_keys is not None and any(k is not None for k in idempotency_keys):
        if len(idempotency_keys) != len(payloads):
            raise InvalidInput(f"give one idempotency key per payload ({len(payloads)}).",
                               field="idempotency_keys")
        hashes = request_hashes or [idempotency.request_sha256(trigger.pk, payload)
                                    for payload in payloads]
        keys = [None if key is None else (idempotency.key_check(key), digest)
                for key, digest in zip(idempotency_keys, hashes, strict=True)]
    else:
        quotas.check_dispatch(function, len(payloads))  # keyed: once the replays are known
    now = timezone.now()
    user = user if user and user.is_authenticated else None
    if batch is None and len(payloads) > 1:
        batch = Batch(trigger=trigger, created_by=user, size=len(payloads), source=source,
                      created_at=now)
    return execution_enqueue(
        function=function, version=version, trigger=trigger, inputs=payloads, user=user,
        batch=batch, now=now, keys=keys, key_scope=idempotency_scope,
        synchronous=synchronous, http_request=http_request,
        max_retries=0 if synchronous else trigger.max_retries,
        retry_backoff_seconds=trigger.retry_backoff_seconds,
        callback_url=callback_url or trigger.callback_url)


def execution_enqueue(*, function, version: FunctionVersion, trigger: Trigger | None,
                      inputs: Sequence[Any], user=None, batch: Batch | None = None, now=None,
                      keys: Sequence[tuple[str, str] | None] | None = None,
                      key_scope: str = "", **fields: Any) -> list[Execution]:
    """Store one queued execution of `version` per input and send their run tasks after the
    surrounding transaction commits: what a dispatch and a re-run do once they checked that it
    may run. `batch`: the batch they belong to, stored with them when it is new; `keys`: each
    input's (idempotency key, request hash) or None (executions/idempotency.py: a key seen
    before gives back its execution instead), in `key_scope`; `fields`: the rest of each
    execution (retries, callback URL, `synchronous`, `rerun_of`)."""
    now = now or timezone.now()
    user = user if user and user.is_authenticated else None
    executions = [
        Execution(task_id=str(uuid.uuid4()), function=function, version=version,
                  trigger=trigger, dispatched_by=user, input=payload,
                  runtime=function.effective_runtime, dispatched_at=now, due_at=now,
                  batch=batch, **fields)
        for payload in inputs
    ]
    new_batch = batch is not None and batch._state.adding
    if keys is not None:
        with transaction.atomic():
            if new_batch:
                batch.save(force_insert=True)
            fresh, answered = idempotency.claim(executions, keys, owner_id=function.owner_id,
                                                now=now, scope=key_scope)
            if fresh and trigger is not None:  # a replay is not charged to the daily quota
                quotas.check_dispatch(function, len(fresh), now=now)
            if new_batch and not fresh:
                batch.delete()  # every payload was dispatched before: no new batch
            elif batch is not None and len(fresh) < len(executions):
                batch.size -= len(executions) - len(fresh)  # what is really in it
                batch.save(update_fields=["size"])
            Execution.objects.bulk_create(fresh, batch_size=1000)
            transaction.on_commit(lambda: _send(fresh))
        return answered
    if len(executions) == 1 and not new_batch:
        # One INSERT commits on its own (or joins the caller's transaction): no extra round trip.
        executions[0].save(force_insert=True)
        transaction.on_commit(lambda: _send(executions))
        return executions
    with transaction.atomic():
        if new_batch:
            batch.save(force_insert=True)
        Execution.objects.bulk_create(executions, batch_size=1000)
        transaction.on_commit(lambda: _send(executions))
    return executions


def batch_dispatch(*, trigger: Trigger, payloads: Sequence[Any], user=None,
                   source: str = "command", chunk: int = 500,
                   progress: Callable[[int], object] | None = None,
                   ) -> tuple[list, Batch | None]:
    """Dispatch `payloads` in chunks of `chunk` (one transaction each), all in one batch when
    there is more than one; `progress(n)` after each chunk of n. Returns (execution ids, the
    batch). A refused first chunk leaves no empty batch; when a later one fails, the batch's
    size becomes what was stored, so it can still finish."""
    ids: list = []
    batch = None
    try:
        for start in range(0, len(payloads), chunk):
            with transaction.atomic():
                if batch is None and len(payloads) > 1:
                    batch = Batch.objects.create(trigger=trigger, created_by=user,
                                                 size=len(payloads), source=source)
                executions = execution_dispatch_many(
                    trigger=trigger, payloads=payloads[start:start + chunk], user=user,
                    source=source, batch=batch)
            ids.extend(e.pk for e in executions)
            if progress is not None:
                progress(len(executions))
    except BaseException:
        if batch is not None and Batch.objects.filter(pk=batch.pk).exists():
            # Record what was really stored, so the batch can still finish.
            Batch.objects.filter(pk=batch.pk).update(
                size=Execution.objects.filter(batch=batch).count())
        raise
    return ids, batch


def execution_dispatch(*, trigger: Trigger, payload: Any = USE_DEFAULT, user=None,
                       idempotency_key: str | None = None, request_hash: str | None = None,
                       **options: Any) -> Execution:
    """Queue one execution of the trigger's function with `payload` (options as for
    `execution_dispatch_many`; `idempotency_key` and `request_hash` for that one payload,
    `idempotency_scope` among the options)."""
    return execution_dispatch_many(
        trigger=trigger, payloads=[payload], user=user,
        idempotency_keys=None if idempotency_key is None else [idempotency_key],
        request_hashes=None if request_hash is None else [request_hash], **options)[0]


@lru_cache(maxsize=256)
def _cached_spec(version_id: int, function_updated_at,
                 owner_trusted: bool) -> FunctionSpec:
    """A version's spec, cached per worker process until its function's settings change or its
    owner gains or loses superuser status (whether it may run unsandboxed)."""
    return version_spec(FunctionVersion.objects.select_related("function__owner").get(
        pk=version_id))


def _spec(claimed: transitions.Claimed) -> FunctionSpec:
    return _cached_spec(claimed.version_id, claimed.function_updated_at, claimed.owner_trusted)


def _finish(execution_id: str, claimed: transitions.Claimed, outcome: Outcome, worker: str, *,
            dead_letter: bool = False) -> bool:
    """Store the outcome and the Celery result together; then the after-finish hooks."""
    output = outcome.output
    text = json.dumps(output)
    if "\\u0000" in text:  # Postgres jsonb cannot hold NUL characters
        output = json.loads(text.replace("\\u0000", "\\ufffd"))
    fields = {
        "status": outcome.status, "output": output,
        "output_truncated": outcome.output_truncated, "error_type": outcome.error_type[:200],
        "error": outcome.error.replace("\x00", "\ufffd"),
        "logs": outcome.logs.replace("\x00", "\ufffd"), "logs_truncated": outcome.logs_truncated,
        "exit_code": outcome.exit_code, "cold": outcome.cold, "cpu_seconds": outcome.cpu_seconds,
        "peak_memory_bytes": outcome.peak_memory_bytes, "finished_at": timezone.now(),
        "init_seconds": outcome.init_seconds,
    }
    if dead_letter:
        fields["dead_letter"] = True
    # A `hash` function's payload is replaced by its hashes in this same write.
    fields = retention.finish_fields(
        _spec(claimed).payload_retention,
        claimed.payload, fields, earlier_attempts=claimed.attempt > 1)
    fields = transitions.bounded_figures(fields)
    try:
        stored = db_retry.retrying(transitions.finish, execution_id, claimed.task_id, fields,
                                   worker=worker, what=f"store the outcome of {execution_id}")
    except DatabaseError as exc:
        stored = _finish_unstorable(execution_id, claimed, exc, worker, fields=fields)
    if not stored:
        return False
    batch_id = claimed.batch_id
    if isinstance(stored, transitions.Finished) and not stored.batch_may_close:
        batch_id = None  # some of its batch are still queued: a later one closes it
    _finished_hooks(execution_id, callback_url=claimed.callback_url, batch_id=batch_id)
    return True


def _finish_unstorable(execution_id: str, claimed: transitions.Claimed, exc: DatabaseError,
                       worker: str, *, fields: dict[str, Any],
                       ) -> transitions.Finished | bool | None:
    """The database refused the outcome itself (a value it cannot hold): store one failed
    outcome that says so, without what it refused. Leaving the execution `running` would make
    the reaper run the function again as a lost worker's; it ran once and must stay run once."""
    logger.error("the outcome of execution %s could not be stored (%s): storing it as failed",
                 execution_id, exc.__class__.__name__, exc_info=True)
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    reason = (f"the function ran (attempt {claimed.attempt}), but its outcome could not be "
              f"stored: {exc.__class__.__name__}: {first_line}. Its output and logs are lost; "
              "it was not run again.")
    minimal = {"status": ExecutionStatus.FAILED, "error_type": "OutcomeNotStored",
               "error": reason, "output": None, "finished_at": timezone.now(),
               "dead_letter": not claimed.synchronous, "cold": fields.get("cold")}
    try:
        return db_retry.retrying(transitions.finish, execution_id, claimed.task_id, minimal,
                                 worker=worker, what=f"store the failure of {execution_id}")
    except DatabaseError:
        logger.exception("execution %s: even its failure could not be stored", execution_id)
        return execution_fail(execution_id=execution_id, reason=reason,
                              error_type="OutcomeNotStored",
                              expect={"status": ExecutionStatus.RUNNING, "worker": worker},
                              hooks=False)


def _finished_hooks(execution_id: str, *, callback_url: str, batch_id) -> None:
    """`hooks.execution_finished` after a terminal record; its failure never undoes the record."""
    try:
        hooks.execution_finished(str(execution_id), callback_url=callback_url or "",
                                 batch_id=None if batch_id is None else str(batch_id))
    except Exception:
        logger.exception("the after-finish hooks failed for execution %s", execution_id)


def _platform_error(exc: BaseException) -> Outcome:
    return Outcome(status=ExecutionStatus.FAILED, error_type="PlatformError",
                   error="".join(traceback.format_exception(exc)), cold=None)


def _resend(execution_id: str, task_id: str, *, countdown: float, waits: int = 0) -> None:
    """Send the run task of a queued execution again, under the same task id, to run after
    `countdown` seconds. Raises `ServiceUnavailable` when the broker is unreachable (the
    message being handled must then be requeued, not acknowledged)."""
    try:
        workers.send_run([(execution_id, task_id)], countdown=countdown, waits=waits)
    except workers.BrokerUnreachable as exc:
        logger.error("broker unreachable: execution %s is queued but was not sent again",
                     execution_id)
        raise ServiceUnavailable(f"the broker is unreachable ({exc}): execution {task_id} is "
                                 "queued but was not sent again.") from exc


def _redelivered(execution_id: str, worker: str) -> transitions.Claimed | None:
    """A redelivered message for an execution that is not queued (docs/reliability.md).

    With acks_late and reject_on_worker_lost a message comes back only when the process that
    held it died (or after the visibility timeout, which is longer than any run). So when the
    execution is still `running` and the process that claimed it is gone, a resumable runtime
    takes the attempt over, and any other records it as lost (`WorkerLost`, a platform
    failure) and claims it again as the next attempt. A live claimer keeps its run: None.
    May raise `transitions.AtConcurrencyLimit` for the new attempt's claim.
    """
    row = Execution.objects.filter(pk=execution_id).values_list(
        "status", "runtime", "worker", "task_id").first()
    if row is None or row[0] != ExecutionStatus.RUNNING:
        return None
    _, runtime, holder, task_id = row
    try:
        alive = workers.holder_alive(holder, task_id=task_id,
                                     current_node=workers.worker_node(worker))
    except Exception:  # cannot tell (broker trouble): leave it to the reaper
        logger.warning("could not tell whether %s still runs execution %s", holder,
                       execution_id, exc_info=True)
        return None
    if alive:
        logger.info("execution %s is still run by %s: duplicate message ignored", execution_id,
                    holder)
        return None
    if get_runtime(runtime or settings.KUBEFUNCTION_RUNTIME).resumable:
        logger.warning("execution %s was left running by a lost worker (%s): resuming it",
                       execution_id, holder)
        return transitions.claim(execution_id, worker, from_status=ExecutionStatus.RUNNING)
    if execution_lost(execution_id=execution_id, holder=holder) != "requeued":
        return None
    return transitions.claim(execution_id, worker)


def _remove_orphans(runtime_name: str) -> None:
    """Before a lost attempt runs again: stop what the dead worker process left running on
    this host (`Runtime.remove_orphans`). Local runner processes die with their worker process
    (PR_SET_PDEATHSIG); Docker containers are labelled with their owner's pid."""
    try:
        removed = get_runtime(runtime_name).remove_orphans()
        if removed:
            logger.info("removed %d containers of worker processes that are gone", removed)
    except Exception:  # the engine may be away: the next worker process tries again
        logger.warning("could not remove the containers of lost workers", exc_info=True)


def execution_lost(*, execution_id: str, holder: str, reason: str = "") -> str:
    """A `running` execution whose claiming worker process (`holder`, its `worker` field) is
    gone: record the lost attempt and put it back in the queue ("requeued", the caller sends
    or claims it), or fail it when no platform retry is left ("failed"). "" when it is no
    longer running under `holder` (it finished, or was recovered already): nothing written."""
    row = Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, worker=holder,
    ).values_list("attempt", "started_at", "attempts", "runtime").first()
    if row is None:
        return ""
    attempt, started_at, earlier, runtime = row
    reason = reason or f"the worker process running attempt {attempt} ({holder or '?'}) was lost"
    _remove_orphans(runtime or settings.KUBEFUNCTION_RUNTIME)
    if retries.platform_retry_left(earlier or []):
        if transitions.requeue_lost(execution_id, attempt=attempt, worker=holder,
                                started_at=started_at, earlier=earlier or [], reason=reason):
            logger.warning("execution %s: %s; running it again as attempt %d", execution_id,
                           reason, attempt + 1)
            return "requeued"
        return ""
    failed = execution_fail(
        execution_id=execution_id, error_type="WorkerLost",
        reason=f"{reason}, and its {settings.KUBEFUNCTION_PLATFORM_RETRIES} platform retries "
               "are used up.",
        expect={"status": ExecutionStatus.RUNNING, "attempt": attempt, "worker": holder})
    return "failed" if failed else ""


def _invoke(execution_id: str, claimed: transitions.Claimed) -> tuple[Outcome, retries.Cause]:
    """Run the function once: its outcome, and who is to blame if it failed."""
    if not runtime_allowed(runtime=claimed.runtime, owner_is_superuser=False):
        # Queued before the operator took the runtime off the list: fail it, never run it.
        owner_id = FunctionVersion.objects.filter(pk=claimed.version_id).values_list(
            "function__owner_id", flat=True).first()
        if not owner_may_run(runtime=claimed.runtime, owner_id=owner_id):
            return Outcome(status=ExecutionStatus.FAILED, error_type="RuntimeNotAllowed",
                           error=runtime_refusal(claimed.runtime), cold=None), \
                retries.Cause.PERMANENT
    spec = _spec(claimed)
    runtime = get_runtime(claimed.runtime or settings.KUBEFUNCTION_RUNTIME)
    context = InvocationContext(execution_id=str(execution_id), task_id=claimed.task_id,
                                deadline=time.time() + spec.timeout_seconds,
                                attempt=claimed.attempt, http=claimed.http_request)
    try:
        return runtime.invoke(spec, claimed.payload, context), retries.Cause.FUNCTION
    except RuntimeUnavailable as exc:
        logger.warning("runtime unavailable for execution %s: %s", execution_id, exc)
        return Outcome(status=ExecutionStatus.FAILED, error_type="PlatformError",
                       error=f"runtime unavailable: {exc}", cold=None), retries.Cause.PLATFORM
    except RuntimeFailure as exc:
        return _platform_error(exc), retries.Cause.PERMANENT
    except SoftTimeLimitExceeded as exc:  # a cancel's kill (or the task's soft time limit)
        if Execution.objects.filter(pk=execution_id, status=ExecutionStatus.CANCELLED).exists():
            logger.info("execution %s was cancelled: its run was stopped", execution_id)
            return Outcome(status=ExecutionStatus.CANCELLED, error_type="Cancelled",
                           cold=None), retries.Cause.PERMANENT
        logger.exception("runtime hung on execution %s", execution_id)
        return _platform_error(exc), retries.Cause.PLATFORM
    except Exception as exc:  # a run must end with a status, whatever broke
        logger.exception("runtime failed on execution %s", execution_id)
        return _platform_error(exc), retries.Cause.PLATFORM


def execution_run(*, execution_id: str, worker: str = "", redelivered: bool = False,
                  waits: int = 0) -> Outcome | None:
    """Run a queued execution and store its outcome; returns the attempt's outcome.

    None when nothing ran: the execution is not queued (a duplicate message), or its function
    is at its concurrency limit — then the task is sent again to check later (`waits` counts
    those checks). `redelivered`: the message came back because the process that held it died
    (or the reaper sent it to recover a lost run): a `running` execution whose claimer is gone
    is taken over or run again (`_redelivered`). A failed attempt with a retry left is
    recorded and sent again with its backoff instead of being finished; the last one ends the
    execution, as a dead letter when it was asynchronous. Raises `ServiceUnavailable` when a
    message could not be sent again.
    """
    try:
        claimed = db_retry.retrying(transitions.claim, execution_id, worker,
                                    what=f"claim {execution_id}")
        if claimed is None and redelivered:
            claimed = _redelivered(execution_id, worker)
    except transitions.AtConcurrencyLimit as full:
        logger.info("execution %s waits: %s (limit %d)", execution_id, full, full.limit)
        countdown = concurrency.recheck_delay(waits)
        transitions.postpone(execution_id, countdown)
        _resend(execution_id, full.task_id, countdown=countdown, waits=waits + 1)
        return None
    if claimed is None:
        return None
    outcome, cause = _invoke(execution_id, claimed)
    if outcome.status == ExecutionStatus.CANCELLED:
        return outcome  # the cancel stored its record
    if outcome.status == ExecutionStatus.SUCCEEDED:
        _finish(execution_id, claimed, outcome, worker)
        return outcome
    retry = retries.retry_delay(execution_id, claimed, outcome, cause=cause)
    if retry is not None:
        countdown, earlier = retry
        if cause is retries.Cause.FUNCTION:  # the platform's own failures are not charged
            # Capped like the backoff: a countdown past the broker's visibility timeout would
            # be delivered twice (the reservation has charged the rate either way).
            countdown = max(countdown, min(_retry_charge(execution_id),
                                           float(settings.KUBEFUNCTION_RETRY_MAX_BACKOFF)))
        if transitions.requeue(execution_id, claimed, outcome, worker=worker, cause=cause,
                           earlier=earlier, countdown=countdown):
            logger.info("execution %s attempt %d %s: retrying in %.1f s", execution_id,
                        claimed.attempt, outcome.status, countdown)
            _resend(execution_id, claimed.task_id, countdown=countdown)
        return outcome
    _finish(execution_id, claimed, outcome, worker, dead_letter=not claimed.synchronous)
    return outcome


def execution_cancel(*, execution: Execution, user=None) -> Execution:
    """Cancel a queued (or retrying) execution, or kill a running one; returns it re-read.

    One conditional UPDATE to `cancelled` with its REVOKED Celery result: a queued one's
    message then finds nothing to claim, a running one's outcome nothing to finish (both are
    conditional on the status). A running one's pool process is then signalled
    (`workers.kill`, after the commit), which makes it raise `SoftTimeLimitExceeded` (SIGUSR1)
    inside the runtime's call, and the runtime kills the runner process or container on the way
    out. Conflict (409, naming `status`) when it already ended.
    """
    who = getattr(user, "get_username", lambda: "")() if user is not None else ""
    reason = f"cancelled by {who}" if who else "cancelled"
    status, ended = transitions.cancel(execution.pk, reason=reason)
    if ended is None:
        raise Conflict(f"execution {execution.task_id} is {status}: only a queued, "
                       "retrying or running execution can be cancelled.", field="status")
    if status == ExecutionStatus.RUNNING:
        # The execution is already `cancelled`, so a kill that never arrives only lets the run
        # end unrecorded.
        transaction.on_commit(lambda: workers.kill(ended.task_id))
    logger.info("execution %s %s while %s", execution.pk, reason, status)
    _finished_hooks(str(execution.pk), callback_url=ended.callback_url, batch_id=ended.batch_id)
    execution.refresh_from_db()
    return execution


def _retry_charge(execution_id: str) -> float:
    """Charge a retry to the dispatch rate of its function's owner: the seconds until it fits
    in the rate (0 now). A retry over the rate is delayed by that much, never dropped."""
    owner = get_user_model().objects.filter(functions__executions__pk=execution_id).only(
        "pk", "date_joined").first()
    ident = user_ident(owner)
    return dispatch_reserve(ident) if ident else 0.0


def execution_skip(*, trigger: Trigger, error_type: str, reason: str,
                   source: str = "schedule") -> Execution:
    """Record a dispatch that was refused before it ran (a schedule fire over its owner's rate):
    a failed execution that never ran, with its reason and Celery FAILURE row, so the skip
    shows wherever executions do and its callback says so."""
    function = trigger.function
    now = timezone.now()
    with transaction.atomic():
        execution = Execution.objects.create(
            task_id=str(uuid.uuid4()), function=function, version=function.active_version,
            trigger=trigger, input=trigger.default_payload, runtime=function.effective_runtime,
            dispatched_at=now, due_at=None, status=ExecutionStatus.FAILED,
            error_type=error_type, error=reason, finished_at=now,
            callback_url=trigger.callback_url)
        result_row(task_id=execution.task_id, succeeded=False, error_type=error_type,
                   error=reason).save()
    logger.warning("%s trigger %s: %s", source, trigger.name, reason)
    _finished_hooks(str(execution.pk), callback_url=execution.callback_url, batch_id=None)
    return execution


def execution_fail(*, execution_id: str, reason: str, error_type: str = "PlatformError",
                   expect: dict[str, Any] | None = None, hooks: bool = True) -> bool:
    """End a queued or running execution as failed with `reason`, keeping its earlier attempts
    (an asynchronous one becomes a dead letter), and run the after-finish hooks. `expect`:
    more field values the row must still have (e.g. the attempt and worker that were judged
    lost), so a run or a recovery that moved it on meanwhile wins. True when it failed it."""
    ended = transitions.fail(execution_id, reason=reason, error_type=error_type, expect=expect)
    if ended is None:
        return False
    if hooks:
        _finished_hooks(execution_id, callback_url=ended.callback_url, batch_id=ended.batch_id)
    return True
