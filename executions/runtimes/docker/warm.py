"""A warm container of the docker runtime: a long-lived runner serving over a unix socket.

The host listens on a socket in a folder of its own, mounted read-only in the container (the
function can write nothing the host keeps: only its tmpfs /tmp). The runner (`--socket` mode)
connects to it, reads one request line, answers with one frame on the same connection and
connects again; a connection waiting in the backlog means an idle, ready runner. The container
has no network at all. It is owned by the `WarmPool` while idle and by one invocation while busy;
`kill` removes the container, closes the socket and removes the folder.
"""

from __future__ import annotations

import select
import selectors
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import requests

from functions.image_contract import runner_command
from functions.specs import FunctionSpec

from ..wire import Exchange, FrameError, FrameReader, LogBuffer
from .client import engine_errors
from .container import (
    MOUNT_POINT,
    SOCKET_NAME,
    Limits,
    cgroup_figures,
    create_container,
    host_folder,
    listen,
    note_exit,
    read_logs,
    remove_quietly,
    state,
)

READ_SIZE = 64 * 1024
STARTUP_CHECK_SECONDS = 1.0  # until a new runner connects, look at its container this often
EXIT_WAIT_SECONDS = 5.0  # how long a container whose runner hung up may take to stop


class WarmContainer:
    """One long-lived function container. Not thread-safe: one request at a time."""

    def __init__(self, api: Any, container_id: str, folder: Path, listener: socket.socket,
                 created_at: float | None = None):
        self.api = api
        self.id = container_id
        self.folder = folder
        self.listener = listener
        self.started_at = self.last_used = time.monotonic()
        # When creating it began (monotonic); its runner's first connection ends the start.
        self.created_at = self.started_at if created_at is None else created_at
        self.startup_seconds: float | None = None
        self.cpu_reported = 0.0  # CPU seconds already reported in frames
        self.fresh = True  # no request answered yet: its startup is part of the next one
        self._closed = False

    @classmethod
    def start(cls, api: Any, spec: FunctionSpec, *, parent: Path, labels: dict[str, str],
              limits: Limits) -> WarmContainer:
        """Create and start a container serving `spec` (its runner may still be importing)."""
        created_at = time.monotonic()
        folder = host_folder(parent)
        listener = None
        container_id = ""
        try:
            listener = listen(folder)
            command = runner_command(spec, "--socket", f"{MOUNT_POINT}/{SOCKET_NAME}")
            with engine_errors("create the function's container"):
                container_id = create_container(api, spec, command, folder, labels, limits)
            with engine_errors("start the function's container"):
                api.start(container_id)
        except BaseException:
            if container_id:
                remove_quietly(api, container_id)
            if listener is not None:
                listener.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(api, container_id, folder, listener, created_at)

    # --- one request ------------------------------------------------------------------------

    def exchange(self, request: bytes, nonce: str, deadline: float, *, max_log_bytes: int,
                 max_frame_bytes: int) -> Exchange:
        """Send one request line and read its frame by `deadline` (monotonic).

        Without a frame (timeout, the runner gone, a bad frame) the container is removed, after
        noting what the engine knows about its end. `sent` is False when an idle container's
        runner was already gone: the function never saw the request.
        """
        reader = FrameReader(nonce, max_log_bytes, max_frame_bytes)
        conn = self._accept(deadline)
        if conn is None:
            return self._ended(reader, timed_out=time.monotonic() >= deadline, sent=False)
        try:
            try:
                pending = memoryview(request)[conn.send(request):]
            except BlockingIOError:
                pending = memoryview(request)
            except OSError:  # the runner hung up before reading anything
                return self._ended(reader, sent=False)
            return self._read(conn, reader, pending, deadline)
        finally:
            conn.close()

    def _read(self, conn: socket.socket, reader: FrameReader, pending: memoryview,
              deadline: float) -> Exchange:
        with selectors.DefaultSelector() as selector:
            selector.register(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending
                                                             else 0))
            while not reader.done:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return self._ended(reader, timed_out=True)
                for _, events in selector.select(timeout):
                    if events & selectors.EVENT_WRITE:
                        try:
                            pending = pending[conn.send(pending):]
                        except BlockingIOError:
                            pass
                        except OSError:
                            pending = pending[len(pending):]  # it hung up: EOF tells the rest
                        if not pending:
                            selector.modify(conn, selectors.EVENT_READ)
                    if not events & selectors.EVENT_READ:
                        continue
                    try:
                        chunk = conn.recv(READ_SIZE)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:  # the runner is gone without a frame
                        return self._ended(reader)
                    try:
                        reader.feed(chunk)
                    except FrameError as exc:
                        return self._ended(reader, protocol_error=str(exc))
        try:
            frame = reader.result()
        except FrameError as exc:
            return self._ended(reader, protocol_error=str(exc))
        self.last_used = time.monotonic()
        self.fresh = False
        self.cpu_reported += float(frame.get("cpu_seconds") or 0)
        startup, self.startup_seconds = self.startup_seconds, None  # reported once
        return Exchange(frame=frame, stray=reader.stray.text(),
                                 stray_truncated=reader.stray.truncated, startup_seconds=startup)

    def _accept(self, deadline: float) -> socket.socket | None:
        """The runner's waiting connection; None at the deadline or once the container stopped."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.listener], [], [],
                                        min(remaining, STARTUP_CHECK_SECONDS))
            if ready:
                try:
                    conn, _ = self.listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                if self.fresh and self.startup_seconds is None:
                    # The runner connects before importing the function: the container's start.
                    self.startup_seconds = time.monotonic() - self.created_at
                return conn
            with engine_errors("look at the function's container"):
                if not state(self.api, self.id).get("Running"):
                    return None

    def _ended(self, reader: FrameReader, *, timed_out: bool = False, sent: bool = True,
               protocol_error: str = "") -> Exchange:
        """No frame: note how the container ended (or what it used, at a timeout), then kill it."""
        exchange = Exchange(timed_out=timed_out, sent=sent,
                                     protocol_error=protocol_error)
        stray = LogBuffer(reader.stray.limit)
        try:
            with engine_errors("look at the function's container"):
                if timed_out or protocol_error:
                    exchange.killed = True
                    cpu, exchange.peak_memory_bytes = cgroup_figures(self.api, self.id)
                    if cpu is not None:
                        exchange.cpu_seconds = max(0.0, cpu - self.cpu_reported)
                elif sent or self.fresh:
                    note_exit(exchange, self._exit_state())
                    if self.fresh:  # what the runner said before it could connect
                        read_logs(self.api, self.id, stdout=False, into=stray,
                                  max_bytes=4 * stray.limit)
        finally:
            self.kill()
        reader.stray.add(reader.held_back())
        exchange.stray = reader.stray.text() + stray.text()
        exchange.stray_truncated = reader.stray.truncated or stray.truncated
        return exchange

    def _exit_state(self) -> dict[str, Any]:
        found = state(self.api, self.id)
        if found.get("Running"):  # its runner just ended: the container follows in a moment
            try:
                self.api.wait(self.id, timeout=EXIT_WAIT_SECONDS)
            except requests.exceptions.RequestException:
                return found
            found = state(self.api, self.id)
        return found

    # --- life and death ---------------------------------------------------------------------

    def alive(self) -> bool:
        """False once killed. (A container that died idle is found out by the next request.)"""
        return not self._closed

    def kill(self) -> None:
        """Remove the container, close the socket, remove the folder. Idempotent; an engine
        that does not answer leaves the container to `cleanup_orphans`."""
        if self._closed:
            return
        self._closed = True
        self.listener.close()
        remove_quietly(self.api, self.id)
        shutil.rmtree(self.folder, ignore_errors=True)
