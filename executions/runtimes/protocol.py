"""What every runtime says to the runner, and what it makes of the runner's answer."""

from __future__ import annotations

import json
import secrets
import signal
from typing import Any

from django.conf import settings

from .base import FunctionSpec, InvocationContext, Outcome, RuntimeFailure
from .framing import join_logs

# After these the runner is not trusted with another call: it is stopped rather than pooled.
# (An import failure would only repeat, and a runner that hit its memory limit exits anyway.)
RETIRING_ERRORS = frozenset({"SystemExit", "MemoryError", "ImportError", "HandlerNotFound"})


def runner_request(spec: FunctionSpec, payload: Any,
                   context: InvocationContext) -> tuple[bytes, str]:
    """The request line for the runner, and the fresh nonce its answer must carry."""
    nonce = secrets.token_hex(16)
    request = {
        "nonce": nonce,
        "event": payload,
        "context": {
            "execution_id": context.execution_id, "task_id": context.task_id,
            "function_name": spec.function_name, "function_version": spec.version_number,
            "deadline": context.deadline, "attempt": context.attempt,
        },
        "max_output_bytes": settings.KUBEFUNCTION_MAX_OUTPUT_BYTES,
        "max_log_bytes": settings.KUBEFUNCTION_MAX_LOG_BYTES,
    }
    try:
        line = json.dumps(request, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise RuntimeFailure(f"the payload cannot be sent as JSON: {exc}") from exc
    return line + b"\n", nonce


def reusable(frame: dict) -> bool:
    """Whether the runner that answered with `frame` may serve another call."""
    return frame.get("error_type") not in RETIRING_ERRORS and not frame.get("retire")


def cold_start_seconds(frame: dict, *, cold: bool, startup_seconds: float | None = None,
                       measured: float | None = None) -> float | None:
    """A cold invocation's cold-start time. `measured`: the runtime saw the whole of it (from
    starting the process until the runner took the request, which it does once the handler is
    imported). Otherwise `startup_seconds` (what the runtime saw of the start, when it knows)
    plus the runner's own `init_seconds` (importing the handler). None when warm."""
    if not cold:
        return None
    if measured is not None:
        return round(max(0.0, measured), 6)
    try:
        imported = max(0.0, float(frame.get("init_seconds") or 0.0))
    except (TypeError, ValueError):
        imported = 0.0
    return round(imported + max(0.0, startup_seconds or 0.0), 6)


def frame_outcome(frame: dict, stray: str, stray_truncated: bool, *, cold: bool,
                  startup_seconds: float | None = None,
                  measured_cold_start: float | None = None) -> Outcome:
    """The outcome a runner's frame reports; `stray` is output that came outside the frame.
    `startup_seconds`, `measured_cold_start`: see `cold_start_seconds`."""
    # Stray output first: it includes what the runner saved just before a near-miss deadline.
    logs, truncated = join_logs(
        [(stray, stray_truncated),
         (str(frame.get("logs") or ""), bool(frame.get("logs_truncated")))],
        settings.KUBEFUNCTION_MAX_LOG_BYTES)
    ok = bool(frame.get("ok"))
    return Outcome(
        status="succeeded" if ok else "failed",
        output=frame.get("output"),
        output_truncated=bool(frame.get("output_truncated")),
        error_type=str(frame.get("error_type") or ""),
        error=str(frame.get("error") or ""),
        logs=logs, logs_truncated=truncated,
        exit_code=int(frame.get("exit_code", 0 if ok else 1)),
        cold=cold,
        cpu_seconds=float(frame.get("cpu_seconds") or 0.0),
        peak_memory_bytes=int(frame.get("max_rss_bytes") or 0) or None,
        init_seconds=cold_start_seconds(frame, cold=cold, startup_seconds=startup_seconds,
                                        measured=measured_cold_start),
    )


def signal_name(number: int) -> str:
    """SIGKILL for 9; "signal N" for numbers that name no signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def timed_out_outcome(budget: float, **common: Any) -> Outcome:
    """The runner was stopped at the deadline without answering."""
    return Outcome(status="timed_out", error_type="Timeout", exit_code=None,
                   error=f"function did not finish within {round(budget, 1):g} s", **common)


def unreadable_outcome(problem: str, **common: Any) -> Outcome:
    """The runner answered with something that is not a frame."""
    return Outcome(status="failed", error_type="ProtocolError", exit_code=None,
                   error=f"the runner's answer could not be read: {problem}", **common)
