"""One `POST /invoke` to a warm pod, bounded as the invocation is.

The runner in HTTP mode (functions/runner.py) takes one request per connection and answers it
with its frame (HTTP/1.0, Content-Length), then closes the connection. Here the connection is
given KUBEFUNCTION_KUBE_TIMEOUT at most (and no more than the deadline leaves); the whole answer,
headers and body, must come by the execution's deadline — each read waits only for what is left
of it, so a pod that trickles bytes cannot hold the invocation past its timeout, which a
per-read socket timeout (urllib3's) would allow — and may not exceed `limit` bytes of body (the
caller's: twice the largest frame a runner may send). The bytes read are parsed by the standard
library's `http.client`.
"""

from __future__ import annotations

import http.client
import io
import socket
import time

HEAD_LIMIT = 64 * 1024  # the status line and headers of an answer
CHUNK = 256 * 1024


class Unreachable(Exception):
    """The pod did not take the connection (refused, unreachable, or silent past the connect
    timeout) or the request: the function never saw it, another pod may be tried."""


class Late(Exception):
    """The deadline passed before the whole answer came."""


class TooLong(Exception):
    """The answer is larger than any runner's."""


class BadAnswer(Exception):
    """The pod hung up before a whole answer, or sent something that is not HTTP."""


class _Replay:
    """What http.client.HTTPResponse reads from: the bytes already received."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return io.BytesIO(self.data)


def post_invoke(host: str, port: int, body: bytes, *, deadline: float, connect_timeout: float,
                limit: int) -> tuple[int, bytes]:
    """(status, body) of `POST /invoke` with `body` to `host:port`, all of it by `deadline`
    (time.monotonic()). Raises Unreachable, Late, TooLong, BadAnswer."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise Late()
    try:
        conn = socket.create_connection((host, port), timeout=min(connect_timeout, left))
    except TimeoutError as exc:
        if time.monotonic() >= deadline:
            raise Late() from exc
        raise Unreachable(f"no connection within {connect_timeout:g} s") from exc
    except OSError as exc:
        raise Unreachable(str(exc)) from exc
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = f"[{host}]" if ":" in host else host
        head = (f"POST /invoke HTTP/1.1\r\nHost: {name}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode("ascii")
        try:
            _until(conn, deadline)
            conn.sendall(head + body)  # bounded as a whole by the timeout (Python >= 3.5)
        except TimeoutError as exc:
            raise Late() from exc
        except OSError as exc:  # not all of it went: the runner cannot have run it
            raise Unreachable(f"the request could not be sent: {exc}") from exc
        return _answer(conn, deadline, limit)


def _until(conn: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Late()
    conn.settimeout(left)


def _answer(conn: socket.socket, deadline: float, limit: int) -> tuple[int, bytes]:
    data = bytearray()
    body_at = -1
    length: int | None = None
    while True:
        _until(conn, deadline)
        try:
            chunk = conn.recv(CHUNK)
        except TimeoutError as exc:
            raise Late() from exc
        except OSError as exc:
            raise BadAnswer(f"the connection failed: {exc}") from exc
        if not chunk:
            break
        data += chunk
        if body_at < 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > HEAD_LIMIT:
                    raise BadAnswer(f"no end of the headers in {HEAD_LIMIT} bytes")
                continue
            body_at = end + 4
            length = _content_length(bytes(data[:body_at]))
            if length is not None and length > limit:
                raise TooLong(f"an answer of {length} bytes; at most {limit} are read")
        if len(data) - body_at > limit:
            raise TooLong(f"an answer of more than {limit} bytes; at most {limit} are read")
        if length is not None and len(data) - body_at >= length:
            break
    response = http.client.HTTPResponse(_Replay(bytes(data)))  # type: ignore[arg-type]
    try:
        response.begin()
        return response.status, response.read()
    except (http.client.HTTPException, ValueError) as exc:
        raise BadAnswer(f"not an HTTP answer: {exc!r}") from exc


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return None
    return None
