"""What runtimes leave on the worker's host: folders owned by a worker process, and whether a
process of this host is still alive to own them.

A folder a worker process makes for its runners (a local runner's HOME, a container's mounted
folder) is named <host>-<worker pid>-<random>, so that whoever finds it later can tell whether
its worker is gone: a worker that ends without running its exit hooks (a Celery prefork child
ends with os._exit) cannot remove its own, so the next worker on the host does.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


def host_label() -> str:
    """This host's name, made safe for a file name."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in socket.gethostname())


def folder_prefix() -> str:
    """The name prefix of a folder this worker process owns: <host>-<worker pid>-."""
    return f"{host_label()}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(parent: Path) -> int:
    """Remove the folders in `parent` that this host's dead workers left behind; returns how
    many."""
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return 0
    host, removed = host_label(), 0
    for entry in entries:
        parts = entry.name.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        worker = int(parts[1])
        if worker == os.getpid() or pid_alive(worker):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed
