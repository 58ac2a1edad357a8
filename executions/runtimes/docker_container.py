"""Containers of the docker runtime: the hardening every container gets, a one-shot run, and a
long-lived warm container that serves requests over a unix socket.

Everything goes through the Docker SDK's low-level `APIClient` (one call per step, no hidden
inspects); nothing shells out to the `docker` CLI. Image layout (see `functions.images`): the
runner at /opt/kubefunction/runner.py, the source in /opt/kubefunction/src, requirements in
/opt/kubefunction/deps. The runtime always passes the whole command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from docker.errors import APIError, DockerException, NotFound
from docker.types import LogConfig, Mount, Ulimit

from .base import FunctionSpec, RuntimeFailure, RuntimeUnavailable
from .framing import FrameError, FrameReader, LogBuffer
from .local_process import Exchange, _host_label

LABEL = "io.kubefunction"
MANAGED_LABEL = f"{LABEL}.managed"
OWNER_LABEL = f"{LABEL}.owner"
FUNCTION_USER = "10001:10001"
FUNCTION_UID = 10001
MOUNT_POINT = "/run/kubefunction"  # the host folder, always mounted read-only
REQUEST_NAME = "request.json"
SOCKET_NAME = "runner.sock"
TMPFS = {"/tmp": "rw,noexec,nosuid,size=64m"}
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes

logger = logging.getLogger(__name__)


def runner_command(spec: FunctionSpec, *mode: str) -> list[str]:
    return ["python3", "-I", "-S", "/opt/kubefunction/runner.py", "--root", "/opt/kubefunction/src",
            "--path", "/opt/kubefunction/deps", "--handler", spec.handler, "--mode", spec.mode,
            *mode]


def owner_id() -> str:
    """Who started a container: host name and process id, so a later worker can tell if its
    owner is gone. Computed per call: a forked worker child is its own owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Limits:
    """What every container gets besides the function's own memory limit."""

    cpus: float
    pids: int
    log_max_bytes: int  # per json-file log file; two files are kept
    network: str  # the network of a function that asks for one


@dataclass
class ContainerExchange(Exchange):
    """`Exchange` plus what only the engine knows."""

    oom_killed: bool = False
    peak_memory_bytes: int | None = None
    # A new container's start as the host saw it: creating and starting it (one-shot), or until
    # its runner connected (warm pool). The runner's import time comes in its frame.
    startup_seconds: float | None = None


# --- engine errors -------------------------------------------------------------------------------


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Turn SDK errors into the runtime's: the engine being down or failing (5xx) may pass, so
    `RuntimeUnavailable`; a request the engine refuses (4xx) will not, so `RuntimeFailure`."""
    try:
        yield
    except APIError as exc:
        detail = exc.explanation or str(exc)
        if exc.status_code is None or exc.status_code >= 500:
            raise RuntimeUnavailable(f"the Docker engine failed to {action}: {detail}") from exc
        raise RuntimeFailure(f"the Docker engine refused to {action}: {detail}") from exc
    except (requests.exceptions.RequestException, DockerException, OSError) as exc:
        raise RuntimeUnavailable(f"the Docker engine did not answer ({action}): {exc}") from exc


# --- host folders --------------------------------------------------------------------------------


def host_folder(parent: Path) -> Path:
    """A new folder to mount at MOUNT_POINT, named <host>-<worker pid>-<random> so that
    `local_process.remove_stale_homes` can remove it once its worker is gone."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{_host_label()}-{os.getpid()}-", dir=parent))
    folder.chmod(0o755)  # read-only mount: the function's user only needs to look inside
    return folder


def _socket_path(folder: Path, name: str) -> tuple[str, int | None]:
    """A path to bind or connect (a /proc/self/fd path for a folder whose path is too long)."""
    path = str(folder / name)
    if len(path) <= MAX_SOCKET_PATH:
        return path, None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{name}", fd


def listen(folder: Path) -> socket.socket:
    """The host's listening socket in `folder`, which only the function's user may connect to."""
    path, fd = _socket_path(folder, SOCKET_NAME)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        target = folder / SOCKET_NAME
        try:
            os.chown(target, FUNCTION_UID, FUNCTION_UID)
            target.chmod(0o600)
        except PermissionError:  # not root: the folder's 0700 parent keeps other users out
            target.chmod(0o666)
        listener.listen(8)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return listener


# --- creating containers -------------------------------------------------------------------------


def create_container(api: Any, spec: FunctionSpec, command: list[str], folder: Path,
                     labels: dict[str, str], limits: Limits) -> str:
    """Create (not start) a hardened container for the function; returns its id.

    No network unless the function asked for one; read-only root with a small noexec /tmp;
    the unprivileged user; no capabilities; no privilege gain; memory (no swap), CPU, pids and
    open-file limits; no core dumps; bounded logs; and an environment of only the function's
    variables (never the worker's, which holds the platform's secrets).
    """
    if spec.network and (limits.network == "host" or limits.network.startswith("container:")):
        raise RuntimeFailure(f"KUBEFUNCTION_DOCKER_NETWORK={limits.network!r} would share the "
                             "worker's network; use a bridge network")
    memory = f"{max(6, int(spec.memory_mb))}m"  # the engine refuses less than 6 MiB
    host_config = api.create_host_config(
        network_mode=limits.network if spec.network else "none",
        read_only=True,
        tmpfs=dict(TMPFS),
        mounts=[Mount(target=MOUNT_POINT, source=str(folder), type="bind", read_only=True)],
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit=memory,
        memswap_limit=memory,
        nano_cpus=int(limits.cpus * 1e9) if limits.cpus > 0 else None,
        pids_limit=limits.pids if limits.pids > 0 else None,
        ulimits=[Ulimit(name="core", soft=0, hard=0),
                 Ulimit(name="nofile", soft=1024, hard=1024)],
        log_config=LogConfig(type="json-file", config={
            "max-size": str(limits.log_max_bytes), "max-file": "2"}),
        init=True,  # reaps what the function leaves behind; the runner is not an init
        ipc_mode="private",
    )
    environment = {str(key): str(value) for key, value in spec.env.items()}
    environment["LANG"] = "C.UTF-8"
    created = api.create_container(
        spec.image, command=command, user=FUNCTION_USER, working_dir="/opt/kubefunction/src",
        environment=environment, labels={MANAGED_LABEL: "true", OWNER_LABEL: owner_id(),
                                         **labels},
        host_config=host_config, detach=True, stdin_open=False, tty=False,
        hostname="kubefunction",
    )
    return created["Id"]


def remove(api: Any, container_id: str) -> None:
    """Kill and remove the container; a container already gone is fine."""
    with contextlib.suppress(NotFound):
        api.remove_container(container_id, force=True)


def remove_quietly(api: Any, container_id: str) -> None:
    """`remove`, logging rather than raising when the engine fails: the invocation's outcome
    stands, and `cleanup_orphans` removes the container once its worker is gone."""
    try:
        remove(api, container_id)
    except (APIError, DockerException, requests.exceptions.RequestException) as exc:
        logger.warning("could not remove container %s: %s", container_id[:12], exc)


def held_back(reader: FrameReader) -> bytes:
    """Stray bytes a frame reader holds back because they might begin a frame header (a final
    newline, typically); once no frame can come, they are plain output."""
    if reader.done or reader._length is not None:  # a frame's header was read: not stray
        return b""
    return bytes(reader._buf)


def state(api: Any, container_id: str) -> dict[str, Any]:
    """The container's State ({} when it is gone)."""
    try:
        return api.inspect_container(container_id).get("State") or {}
    except NotFound:
        return {}


def cgroup_figures(api: Any, container_id: str) -> tuple[float | None, int | None]:
    """(CPU seconds, peak memory bytes) of a running container from its cgroup, or Nones.

    Only a running container has a cgroup to read (an exited one reports zeros). cgroup v1
    reports a peak (`max_usage`); v2 only current usage, which is then the best lower bound.
    """
    try:
        stats = api.stats(container_id, stream=False, one_shot=True)
    except (APIError, requests.exceptions.RequestException, DockerException):
        return None, None
    usage = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    memory = stats.get("memory_stats") or {}
    total = usage.get("total_usage")
    cpu = total / 1e9 if total else None
    peak = memory.get("max_usage") or memory.get("usage") or None
    return cpu, peak


def read_logs(api: Any, container_id: str, *, stdout: bool, into: FrameReader | LogBuffer,
              max_bytes: int) -> None:
    """Feed a stopped container's stdout or stderr to a frame reader (until its frame) or a log
    buffer (until it is full), reading at most `max_bytes`."""
    stream = api.logs(container_id, stdout=stdout, stderr=not stdout, stream=True, follow=False)
    read = 0
    try:
        for chunk in stream:
            read += len(chunk)
            if isinstance(into, FrameReader):
                into.feed(chunk)
                if into.done:
                    return
            else:
                into.add(chunk)
                if into.truncated:
                    return
            if read >= max_bytes:
                return
    finally:
        with contextlib.suppress(Exception):
            stream.close()


# --- a one-shot container ------------------------------------------------------------------------


def run_once(api: Any, spec: FunctionSpec, request: bytes, nonce: str, deadline: float, *,
             parent: Path, labels: dict[str, str], limits: Limits, max_log_bytes: int,
             max_frame_bytes: int) -> ContainerExchange:
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
                max_frame_bytes: int) -> ContainerExchange:
    exchange = ContainerExchange()
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
            reader.stray.add(held_back(reader))
        stray = LogBuffer(max_log_bytes)
        read_logs(api, container_id, stdout=False, into=stray, max_bytes=4 * max_log_bytes)
        exchange.stray = reader.stray.text() + stray.text()
        exchange.stray_truncated = reader.stray.truncated or stray.truncated
        if exchange.frame is None:
            found = state(api, container_id)
            exchange.oom_killed = bool(found.get("OOMKilled"))
            exchange.returncode = found.get("ExitCode", status and status.get("StatusCode"))
    return exchange

