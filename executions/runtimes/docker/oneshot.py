"""The docker runtime's one-shot mode (its warm pool off): a new container per invocation, which
reads its request from a read-only mounted file, writes its frame to stdout and is removed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import requests

from functions.image_contract import runner_command
from functions.specs import FunctionSpec

from ..base import RuntimeUnavailable
from ..wire import Exchange, FrameError, FrameReader, LogBuffer
from .client import engine_errors
from .container import (
    MOUNT_POINT,
    REQUEST_NAME,
    Limits,
    cgroup_figures,
    create_container,
    host_folder,
    note_exit,
    read_logs,
    remove_quietly,
    state,
)


def run_once(api: Any, spec: FunctionSpec, request: bytes, nonce: str, deadline: float, *,
             parent: Path, labels: dict[str, str], limits: Limits, max_log_bytes: int,
             max_frame_bytes: int) -> Exchange:
    """Run the function once in a new container that reads `request` from a read-only mounted
    file and writes its frame to stdout; remove it whatever happens. `deadline` is monotonic."""
    folder = host_folder(parent)
    container_id = ""
    try:
        request_file = folder / REQUEST_NAME
        request_file.write_bytes(request)
        request_file.chmod(0o644)
        command = runner_command(spec, "--request-file", f"{MOUNT_POINT}/{REQUEST_NAME}")
        started = time.monotonic()
        with engine_errors("create the function's container"):
            container_id = create_container(api, spec, command, folder, labels, limits)
        with engine_errors("start the function's container"):
            api.start(container_id)
        startup = time.monotonic() - started
        exchange = _await_once(api, container_id, nonce, deadline, max_log_bytes,
                               max_frame_bytes)
        exchange.startup_seconds = startup
        return exchange
    finally:
        if container_id:
            remove_quietly(api, container_id)
        shutil.rmtree(folder, ignore_errors=True)


def _await_once(api: Any, container_id: str, nonce: str, deadline: float, max_log_bytes: int,
                max_frame_bytes: int) -> Exchange:
    exchange = Exchange()
    status: dict[str, Any] | None = None
    remaining = deadline - time.monotonic()
    if remaining > 0:
        try:
            status = api.wait(container_id, timeout=remaining)
        except requests.exceptions.RequestException as exc:
            if time.monotonic() < deadline - 0.05:  # not our timeout: the engine went away
                raise RuntimeUnavailable(f"the Docker engine did not answer (wait): {exc}") \
                    from exc
    with engine_errors("read the function's output"):
        if status is None:  # the deadline: what it used and printed so far; `run_once` kills it
            exchange.timed_out = exchange.killed = True
            exchange.cpu_seconds, exchange.peak_memory_bytes = cgroup_figures(api, container_id)
        reader = FrameReader(nonce, max_log_bytes, max_frame_bytes)
        if not exchange.timed_out:
            try:
                read_logs(api, container_id, stdout=True, into=reader,
                          max_bytes=2 * max_frame_bytes)
                if reader.done:
                    exchange.frame = reader.result()
            except FrameError as exc:
                exchange.protocol_error = str(exc)
        if exchange.frame is None:
            reader.stray.add(reader.held_back())
        stray = LogBuffer(max_log_bytes)
        read_logs(api, container_id, stdout=False, into=stray, max_bytes=4 * max_log_bytes)
        exchange.stray = reader.stray.text() + stray.text()
        exchange.stray_truncated = reader.stray.truncated or stray.truncated
        if exchange.frame is None:
            note_exit(exchange, state(api, container_id), status and status.get("StatusCode"))
    return exchange

