"""The web server as `make up` starts it — the Procfile's `web` command — for the programs that
start one of their own: the webhook benchmark (metrics/webhook_bench.py) and the tests
(tests/processes.py). One command line, in the Procfile, for all of them."""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings


def procfile_command(process: str) -> str:
    """The Procfile's command line for `process` (web, worker, beat)."""
    lines = (Path(settings.BASE_DIR) / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())[process]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    """Whether /healthz answers 200 on 127.0.0.1:`port`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start(env: dict[str, str], log_path: Path, *extra_args: str,
          timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """The Procfile's `web` command, through a shell as honcho runs it, with this interpreter's
    tools first on PATH, on a free loopback port and `extra_args` appended (gunicorn takes the
    last of a repeated option), in a process group of its own; returned with its base URL once
    /healthz answers. RuntimeError, with the end of its log, when it does not start."""
    port = free_port()
    env = {**env, "KUBEFUNCTION_PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    command = " ".join([procfile_command("web"), *map(shlex.quote, extra_args)])
    with log_path.open("ab") as log:
        process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=settings.BASE_DIR,
                                   env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    process.log_path = log_path
    deadline = time.monotonic() + timeout
    while not answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError("the web server did not start:\n"
                               + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen, *, timeout: float = 30) -> None:
    """SIGTERM the process group (gunicorn's graceful stop, a Celery worker's warm shutdown),
    SIGKILL it if it is still there after `timeout` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()
