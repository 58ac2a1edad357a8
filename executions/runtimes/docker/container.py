"""Containers of the docker runtime: the hardening every container gets (its spec), the host
folder mounted into it, and what the engine tells about it (state, cgroup figures, logs).

Everything goes through the Docker SDK's low-level `APIClient` (one call per step, no hidden
inspects); nothing shells out to the `docker` CLI. The image's layout and user are
`functions.image_contract`; the runtime always passes the whole command (`runner_command`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from docker.errors import APIError, DockerException, NotFound
from docker.types import LogConfig, Mount, Ulimit

from functions.image_contract import FUNCTION_UID, FUNCTION_USER, SOURCE_DIR
from functions.specs import FunctionSpec

from ..base import RuntimeFailure
from ..host import folder_prefix
from ..wire import Exchange, FrameReader, LogBuffer

LABEL = "io.kubefunction"
MANAGED_LABEL = f"{LABEL}.managed"
OWNER_LABEL = f"{LABEL}.owner"
MOUNT_POINT = "/run/kubefunction"  # the host folder, always mounted read-only
REQUEST_NAME = "request.json"
SOCKET_NAME = "runner.sock"
TMPFS = {"/tmp": "rw,noexec,nosuid,size=64m"}
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes

logger = logging.getLogger(__name__)


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


def host_folder(parent: Path) -> Path:
    """A new folder to mount at MOUNT_POINT, named for this worker process so that
    `host.remove_stale_folders` can remove it once its worker is gone."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=folder_prefix(), dir=parent))
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
        spec.image, command=command, user=FUNCTION_USER, working_dir=SOURCE_DIR,
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


def state(api: Any, container_id: str) -> dict[str, Any]:
    """The container's State ({} when it is gone)."""
    try:
        return api.inspect_container(container_id).get("State") or {}
    except NotFound:
        return {}


def note_exit(exchange: Exchange, found: dict[str, Any], default: int | None = None) -> None:
    """Note on `exchange` how the container ended, from its State: killed for its memory, its
    exit code (`default` when the State has none), and the signal that code stands for (the
    engine's and the init's way of saying "killed by signal n" is 128 + n)."""
    exchange.oom_killed = bool(found.get("OOMKilled"))
    code = exchange.returncode = found.get("ExitCode", default)
    if code is not None and code > 128:
        exchange.signal = code - 128


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
