"""The bounded text of a build log: what pip and the Docker engine print while a version builds.

A user influences how much a build prints (many requirements, chatty packages), so the log kept
in memory and in the version row is capped at KUBEFUNCTION_BUILD_LOG_MAX_BYTES: its beginning
(what was built, from what) and its end (what went wrong) survive, with a "[truncated]" marker
where the middle was dropped.
"""

from __future__ import annotations

from collections import deque

from django.conf import settings

TRUNCATED = "[truncated]"


def log_limit() -> int:
    return max(1024, settings.KUBEFUNCTION_BUILD_LOG_MAX_BYTES)


def cap_log(text: str, limit: int | None = None) -> str:
    """`text` within `limit` bytes (UTF-8): head and tail kept, the middle marked as dropped."""
    limit = limit or log_limit()
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    marker = f"\n{TRUNCATED} {len(data) - limit} bytes of the build log omitted\n".encode()
    keep = max(0, limit - len(marker))
    head, tail = data[:keep // 2], data[len(data) - (keep - keep // 2):]
    return (head + marker + tail).decode("utf-8", "ignore")


class BoundedLog:
    """Accumulates build output in bounded memory: the first half of the cap, and a rolling
    tail of the other half."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or log_limit()
        self.head: list[str] = []
        self.head_bytes = 0
        self.tail: deque[str] = deque()
        self.tail_bytes = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        size = len(text.encode("utf-8", "replace"))
        if not self.tail and self.head_bytes + size <= self.limit // 2:
            self.head.append(text)
            self.head_bytes += size
            return
        self.tail.append(text)
        self.tail_bytes += size
        while len(self.tail) > 1 and self.tail_bytes > self.limit // 2:
            gone = self.tail.popleft()
            gone_size = len(gone.encode("utf-8", "replace"))
            self.tail_bytes -= gone_size
            self.dropped += gone_size

    @property
    def text(self) -> str:
        body = "".join(self.head)
        if self.dropped:
            body += f"\n{TRUNCATED} {self.dropped} bytes of the build log omitted\n"
        return cap_log(body + "".join(self.tail), self.limit)
