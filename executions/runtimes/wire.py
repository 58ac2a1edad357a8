"""The host side of the wire protocol `functions.runner` speaks: one module for every runtime.

A request is one JSON line (`runner_request`); the answer is one frame carrying our nonce,
found in a byte stream that may carry other bytes too (a container's merged output, a function
writing to the descriptor on purpose): everything that is not the frame is "stray" output, kept
as extra logs up to a cap (`FrameReader`). What came back for one request is an `Exchange`;
`exchange_outcome` turns it into the `Outcome` stored on the execution. The frame format itself
(`FRAME_MARKER`, the header) is defined once, in `functions.runner`.
"""

from __future__ import annotations

import json
import math
import secrets
import signal
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from functions.runner import FRAME_MARKER, Capture, utf8_prefix
from functions.specs import FunctionSpec

from .base import InvocationContext, Outcome, RuntimeFailure

MIB = 1024 * 1024

# --- the answer's frame -------------------------------------------------------------------------

_MAX_LENGTH_DIGITS = 20
# The figures a frame reports, and what each must be. The function runs in the runner's process
# and can write a frame of its own, so these are claims: a value of the wrong type, not finite
# or out of range is dropped here (its default used) rather than failing the run on the host.
_FIGURES: dict[str, type] = {"exit_code": int, "cpu_seconds": float, "max_rss_bytes": int,
                             "init_seconds": float}


class FrameError(Exception):
    """The stream carries a frame with our nonce that cannot be read."""


class LogBuffer(Capture):
    """Keeps the first `limit` bytes fed to it and counts the rest (the runner's own capture)."""

    def add(self, data: bytes) -> None:
        self.write_bytes(data)

    def text(self) -> str:
        return self.getvalue()


class FrameReader:
    """Incremental parser for one result frame, fed chunks split at any byte.

    `feed(chunk)` until `done`; then `result()` is the frame's JSON. Bytes before and after the
    frame (and any frame with another nonce) go to `stray`, capped at `max_log_bytes`.
    """

    def __init__(self, nonce: str, max_log_bytes: int, max_frame_bytes: int = 64 * 1024 * 1024):
        self._prefix = b"\n" + FRAME_MARKER + nonce.encode("ascii") + b" "
        self._max_frame = max_frame_bytes
        self._buf = bytearray()
        self._length: int | None = None  # known once the header line is complete
        self._payload: bytes | None = None
        self.stray = LogBuffer(max_log_bytes)

    @property
    def done(self) -> bool:
        return self._payload is not None

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the stream; raises `FrameError` on a malformed frame."""
        if self._payload is not None:
            self.stray.add(chunk)
            return
        self._buf += chunk
        if self._length is None and not self._find_header():
            return
        assert self._length is not None
        if len(self._buf) < self._length + 1:  # the payload and its closing newline
            return
        self._payload = bytes(self._buf[: self._length])
        rest = self._buf[self._length + 1 :]
        self._buf = bytearray()
        if rest:
            self.stray.add(bytes(rest))

    def _find_header(self) -> bool:
        buf = self._buf
        start = buf.find(self._prefix)
        if start < 0:
            # Keep a tail that may be the start of a header split across chunks. The prefix holds
            # exactly one newline, its first byte, so such a tail starts at the last newline.
            keep_from = len(buf)
            newline = buf.rfind(b"\n", max(0, len(buf) - len(self._prefix) + 1))
            if newline >= 0 and self._prefix.startswith(bytes(buf[newline:])):
                keep_from = newline
            if keep_from:
                self.stray.add(bytes(buf[:keep_from]))
                del buf[:keep_from]
            return False
        end = buf.find(b"\n", start + len(self._prefix))
        if end < 0:
            if len(buf) - start - len(self._prefix) > _MAX_LENGTH_DIGITS:
                raise FrameError("the result frame's header has no valid length")
            if start:
                self.stray.add(bytes(buf[:start]))
                del buf[:start]
            return False
        digits = bytes(buf[start + len(self._prefix) : end])
        if not digits.isdigit() or len(digits) > _MAX_LENGTH_DIGITS:
            raise FrameError(f"the result frame's header has a bad length {digits[:40]!r}")
        length = int(digits)
        if length > self._max_frame:
            raise FrameError(
                f"the result frame is {length} bytes; at most {self._max_frame} are accepted"
            )
        if start:
            self.stray.add(bytes(buf[:start]))
        del buf[: end + 1]
        self._length = length
        return True

    def held_back(self) -> bytes:
        """Stray bytes held back because they might begin a frame header (a final newline,
        typically); once no frame can come, they are plain output."""
        if self.done or self._length is not None:  # a frame's header was read: not stray
            return b""
        return bytes(self._buf)

    def result(self) -> dict[str, Any]:
        """The frame's JSON object; raises `FrameError` if it is not one."""
        if self._payload is None:
            raise FrameError("no result frame was read")
        try:
            value = json.loads(self._payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FrameError(f"the result frame is not UTF-8 JSON: {exc}") from exc
        if not isinstance(value, dict) or "ok" not in value:
            raise FrameError("the result frame is not a result object")
        for key, kind in _FIGURES.items():
            if key in value and not _sane(value[key], kind):
                del value[key]
        return value


def max_frame_bytes() -> int:
    """The largest frame a runner may answer with: JSON escaping can grow text up to 6x;
    anything beyond is not a runner's frame."""
    return 8 * (settings.KUBEFUNCTION_MAX_OUTPUT_BYTES
                + 2 * settings.KUBEFUNCTION_MAX_LOG_BYTES) + MIB


def _sane(value: Any, kind: type) -> bool:
    """Whether `value` is a figure of `kind` that the host can store (storage clamps it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind is int:
        return isinstance(value, int)
    return math.isfinite(value) and value >= 0


def join_logs(parts: list[tuple[str, bool]], limit: int) -> tuple[str, bool]:
    """Concatenate (text, truncated) log parts, keeping the first `limit` bytes in all."""
    text = "".join(part for part, _ in parts)
    truncated = any(flag for _, flag in parts)
    data = text.encode("utf-8", "replace")
    if len(data) > limit:
        text = utf8_prefix(data, limit).decode("utf-8", "replace")
        truncated = True
    return text, truncated


# --- the request --------------------------------------------------------------------------------

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
            "memory_mb": spec.memory_mb, "timeout_seconds": spec.timeout_seconds,
        },
        "max_output_bytes": settings.KUBEFUNCTION_MAX_OUTPUT_BYTES,
        "max_log_bytes": settings.KUBEFUNCTION_MAX_LOG_BYTES,
    }
    if context.http:
        request["http"] = True
    try:
        line = json.dumps(request, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise RuntimeFailure(f"the payload cannot be sent as JSON: {exc}") from exc
    return line + b"\n", nonce


@dataclass
class Exchange:
    """What came back for one request, from a process or a container."""

    frame: dict[str, Any] | None = None
    stray: str = ""
    stray_truncated: bool = False
    timed_out: bool = False
    protocol_error: str = ""
    sent: bool = True  # False: the runner was gone before it could read the request
    returncode: int | None = None  # its exit code, once it ended
    signal: int | None = None  # the signal that ended it, when one did
    killed: bool = False  # we killed it (timeout, protocol error) rather than it ending itself
    cpu_seconds: float | None = None  # measured on the host, for a runner that gave no frame
    # What only a container engine knows: the kernel's OOM kill, and the cgroup's peak.
    oom_killed: bool = False
    peak_memory_bytes: int | None = None
    # A new runner's start as the host saw it: creating and starting a container, or until its
    # runner connected (the runner's import time comes in its frame); or, `cold_start_seconds`,
    # the whole of it, from spawning a process to its taking the request.
    startup_seconds: float | None = None
    cold_start_seconds: float | None = None


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


# --- the outcome --------------------------------------------------------------------------------


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


def unreadable_outcome(problem: str, exit_code: int | None = None, **common: Any) -> Outcome:
    """The runner answered with something that is not a frame."""
    return Outcome(status="failed", error_type="ProtocolError", exit_code=exit_code,
                   error=f"the runner's answer could not be read: {problem}", **common)


def late_outcome() -> Outcome:
    """The deadline passed before the function could start."""
    return Outcome(status="timed_out", error_type="Timeout",
                   error="the deadline passed before the function started")


def memory_outcome(memory_mb: int, **common: Any) -> Outcome:
    """The container engine or the cluster says the function hit its memory limit."""
    return Outcome(status="failed", error_type="MemoryError",
                   error=f"the function's container was killed because it exceeded its "
                         f"memory limit of {memory_mb} MiB",
                   peak_memory_bytes=memory_mb * MIB, **common)


def exited_outcome(code: int | None, **common: Any) -> Outcome:
    """The runner exited on its own without answering."""
    return Outcome(status="failed", error_type="ProcessExited", exit_code=code,
                   error=f"the function's process exited with code {code} without a result",
                   **common)


def exchange_outcome(exchange: Exchange, spec: FunctionSpec, *, cold: bool, budget: float,
                     unit: str, guess_memory: bool = False) -> Outcome:
    """The outcome of one exchange with a warm or one-shot runner (`unit`: "process" or
    "container", for the messages). `guess_memory`: the runtime hears nothing from the kernel
    about memory, so a SIGKILL or SIGSEGV it did not send is taken for the memory limit."""
    frame = exchange.frame
    stray = (exchange.stray, exchange.stray_truncated)
    if frame is not None:
        return frame_outcome(frame, *stray, cold=cold, startup_seconds=exchange.startup_seconds,
                             measured_cold_start=exchange.cold_start_seconds)
    logs, truncated = join_logs([stray], settings.KUBEFUNCTION_MAX_LOG_BYTES)
    common: dict[str, Any] = {"logs": logs, "logs_truncated": truncated, "cold": cold,
                              "cpu_seconds": exchange.cpu_seconds}
    if exchange.oom_killed:
        return memory_outcome(spec.memory_mb, exit_code=exchange.returncode, **common)
    common["peak_memory_bytes"] = exchange.peak_memory_bytes
    if exchange.timed_out:
        return timed_out_outcome(budget, **common)
    if exchange.protocol_error:
        return unreadable_outcome(exchange.protocol_error, **common)
    number = exchange.signal
    if number is None:
        if exchange.returncode is None:
            return Outcome(status="failed", error_type="ProcessExited", exit_code=None,
                           error=f"the function's {unit} ended without a result", **common)
        return exited_outcome(exchange.returncode, **common)
    name = signal_name(number)
    if guess_memory and not exchange.killed and number in (signal.SIGKILL, signal.SIGSEGV):
        return Outcome(status="failed", error_type="MemoryError", exit_code=128 + number,
                       error=f"the function's process was killed by {name}, most likely because "
                             f"it exceeded its memory limit of {spec.memory_mb} MiB", **common)
    return Outcome(status="failed", error_type="ProcessExited", exit_code=128 + number,
                   error=f"the function's process was killed by {name} without a result",
                   **common)
