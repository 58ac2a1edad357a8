"""What a Job and its pod say about an invocation: one pure mapping from their JSON.

`classify(job, pod)` reads the Job and pod as the API server returns them (plain JSON, camelCase)
and says whether the invocation is still going, ended with a result in the pod's log, or ended
without one (and why). `outcome(verdict, log, nonce, ...)` turns a verdict and the pod's log into
the `Outcome` stored on the execution. Neither touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from ..base import Outcome
from ..wire import (
    MIB,
    FrameError,
    FrameReader,
    exited_outcome,
    frame_outcome,
    join_logs,
    memory_outcome,
    unreadable_outcome,
)

PENDING = "pending"  # still starting or running: keep watching
RAN = "ran"  # the container ended on its own: its log holds the frame (or the reason there is none)
FAILED = "failed"  # ended without a result, for good
TIMED_OUT = "timed_out"
UNAVAILABLE = "unavailable"  # the platform lost it (evicted, gone): the task retries

# The image can never be pulled as things stand: fail now rather than wait for the deadline.
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull", "ErrImageInspect", "RegistryUnavailable"})
CONTAINER_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                                     "RunContainerError", "PreCreateHookError",
                                     "PostStartHookError"})
# Pod-level reasons for a pod the node (not the function) ended.
LOST_POD_REASONS = frozenset({"Evicted", "Preempting", "Shutdown", "NodeShutdown", "NodeLost",
                              "Terminated", "UnexpectedAdmissionError", "OutOfcpu",
                              "OutOfmemory", "NodeAffinity"})


@dataclass(frozen=True)
class Verdict:
    state: str
    error_type: str = ""
    error: str = ""
    exit_code: int | None = None
    read_log: bool = False  # the pod's log is worth reading (frame or stray output)


def _conditions(obj: dict | None) -> dict[str, dict]:
    found = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c.get("type", ""): c for c in found if c.get("status") == "True"}


def _container_status(pod: dict) -> dict:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def _described(reason: str, message: str) -> str:
    return f"{reason}: {message}" if message else reason


def job_settled(job: dict | None) -> bool:
    """The Job has said how it ends: Complete, Failed, or FailureTarget (Kubernetes 1.31+ sets
    it at once, and Failed only after the pods have terminated)."""
    return bool({"Complete", "Failed", "FailureTarget"} & set(_conditions(job)))


def classify(job: dict | None, pod: dict | None) -> Verdict:
    """The state of an invocation from its Job and (newest) pod; either may be None (gone).
    The Job's deadline (Failed or FailureTarget with reason DeadlineExceeded) wins over
    whatever the pod says: a pod killed at the deadline exits 137 or 143 without a result."""
    job_conditions = _conditions(job)
    failed = job_conditions.get("Failed") or job_conditions.get("FailureTarget")
    if failed and failed.get("reason") == "DeadlineExceeded":
        deadline = ((job or {}).get("spec") or {}).get("activeDeadlineSeconds")
        return Verdict(TIMED_OUT, "Timeout",
                       f"function did not finish within {deadline} s" if deadline else
                       "the Job ran longer than its deadline", read_log=pod is not None)
    if pod is None:
        if failed:
            return Verdict(FAILED, "JobFailed", "the Job failed without a pod to tell why: " +
                           _described(failed.get("reason", ""), failed.get("message", "")))
        if "Complete" in job_conditions:
            return Verdict(UNAVAILABLE, error="the Job completed but its pod is gone, and the "
                                              "output with it")
        if job is None:
            return Verdict(UNAVAILABLE, error="the Job is gone (deleted before it finished)")
        return Verdict(PENDING)

    status = pod.get("status") or {}
    phase = status.get("phase", "")
    pod_reason, pod_message = status.get("reason") or "", status.get("message") or ""
    disrupted = _conditions(pod).get("DisruptionTarget")
    if pod_reason in LOST_POD_REASONS or (disrupted and phase == "Failed"):
        reason = pod_reason or disrupted.get("reason", "Disrupted")  # type: ignore[union-attr]
        message = pod_message or (disrupted or {}).get("message", "")
        return Verdict(UNAVAILABLE, "PodEvicted", "the function's pod was ended by the "
                       f"cluster ({_described(reason, message)})")

    container = _container_status(pod)
    state = container.get("state") or {}
    waiting = state.get("waiting")
    if waiting:
        reason, message = waiting.get("reason") or "", waiting.get("message") or ""
        image = container.get("image", "")
        if reason in IMAGE_PULL_REASONS:
            return Verdict(FAILED, "ImagePullError",
                           f"the image {image} cannot be pulled: {_described(reason, message)}")
        if reason in CONTAINER_ERROR_REASONS:
            return Verdict(FAILED, "ContainerError",
                           f"the function's container cannot start: "
                           f"{_described(reason, message)}")
        if reason == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            return Verdict(FAILED, "CrashLoopBackOff",
                           "the function's container keeps crashing: "
                           f"{_described(reason, message)}", exit_code=last.get("exitCode"),
                           read_log=True)
    terminated = state.get("terminated")
    if terminated:
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            return Verdict(FAILED, "MemoryError", "", exit_code=code, read_log=True)
        return Verdict(RAN, exit_code=code, read_log=True)
    if phase in ("Succeeded", "Failed"):
        return Verdict(FAILED, "PodFailed", "the function's pod ended without its container "
                       f"reporting: {_described(pod_reason or phase, pod_message)}")
    if failed:  # e.g. BackoffLimitExceeded while the pod still looks alive
        return Verdict(FAILED, "JobFailed",
                       _described(failed.get("reason", ""), failed.get("message", "")))
    return Verdict(PENDING)


def outcome(verdict: Verdict, log: bytes | None, nonce: str, *, memory_mb: int,
            max_frame_bytes: int = 64 * MIB) -> Outcome:
    """The execution's outcome from a final (not pending, not unavailable) verdict and the pod's
    log (None when it could not be read)."""
    max_log = settings.KUBEFUNCTION_MAX_LOG_BYTES
    reader = FrameReader(nonce, max_log, max_frame_bytes)
    protocol_error = ""
    try:
        reader.feed(log or b"")
        frame: dict[str, Any] | None = reader.result() if reader.done else None
    except FrameError as exc:
        frame, protocol_error = None, str(exc)
    if frame is not None and verdict.state == RAN:
        return frame_outcome(frame, reader.stray.text(), reader.stray.truncated, cold=True)
    if frame is None:
        reader.stray.add(reader.held_back())  # e.g. a trailing newline, held as a possible header
    logs, truncated = join_logs([(reader.stray.text(), reader.stray.truncated)], max_log)
    common: dict[str, Any] = {"logs": logs, "logs_truncated": truncated, "cold": True}
    if verdict.state == TIMED_OUT:
        return Outcome(status="timed_out", error_type=verdict.error_type or "Timeout",
                       error=verdict.error, exit_code=verdict.exit_code, **common)
    if verdict.error_type == "MemoryError":
        return memory_outcome(memory_mb, exit_code=verdict.exit_code, **common)
    if verdict.state == FAILED:
        return Outcome(status="failed", error_type=verdict.error_type, error=verdict.error,
                       exit_code=verdict.exit_code, **common)
    if protocol_error:
        return unreadable_outcome(protocol_error, exit_code=verdict.exit_code, **common)
    return exited_outcome(verdict.exit_code, **common)
