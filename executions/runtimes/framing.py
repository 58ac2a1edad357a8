"""Host side of the runner's result frames: find the one frame with our nonce in a byte stream.

The stream a runner's result travels on may carry other bytes too (a container's merged output,
a function writing to the descriptor on purpose): everything that is not the frame is "stray"
output, kept as extra logs up to a cap. The frame format is defined by `functions.runner`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from functions.runner import FRAME_MARKER, Capture, utf8_prefix

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
