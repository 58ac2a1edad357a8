"""The docker kubelet's way into a warm pod: its IP and port on the host, tunnelled into a container
that has no network.

A real cluster routes a pod's IP to the pod's network namespace. Here containers run with network
"none" (and dockerd with --bridge=none), so the kubelet gives a serving pod a loopback address of
its own (127.21.x.y) and a `PodTunnel`: a TCP listener on that address and the container's port,
and a unix socket in a host folder mounted read-only in the container. The agent
(`tunnel_agent.py`, started in the container with `docker exec`) keeps a connection waiting on that
socket; each client the listener accepts is handed over that connection to the agent as a file
descriptor (SCM_RIGHTS), and the agent splices it to 127.0.0.1:PORT inside the container, where
the pod's own command listens. The kubelet's process copies no byte: what a pod's network costs
is the agent's one copy in the container, not a hop through the process that runs the fake (and,
in the benchmark, the runtime under test). The bytes are the client's: HTTP (the readiness probe,
the runtime's POST /invoke) reaches the real runner unchanged. Nothing listens on a non-loopback
address.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

AGENT_SOURCE = (Path(__file__).with_name("tunnel_agent.py")).read_text()
MOUNT_POINT = "/run/kubefunction-tunnel"  # in the container, read-only
SOCKET_NAME = "tunnel.sock"
AGENT_WAIT_SECONDS = 5.0  # how long a client waits for the agent's next connection


def agent_command(port: int) -> list[str]:
    """What `docker exec` runs in the pod's container."""
    return ["python3", "-I", "-S", "-c", AGENT_SOURCE, f"{MOUNT_POINT}/{SOCKET_NAME}", str(port)]


def bind_loopback(port: int, attempts: int = 64) -> tuple[socket.socket, str]:
    """A TCP socket bound to `port` on a free loopback address 127.21.x.y, and that address."""
    for _ in range(attempts):
        address = f"127.21.{secrets.randbelow(250)}.{secrets.randbelow(250) + 2}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            continue
        return sock, address
    raise OSError(f"no free loopback address for port {port}")


class PodTunnel:
    """The host end of one pod's tunnel. `close()` ends every connection and removes the folder."""

    def __init__(self, parent: Path, port: int, uid: int) -> None:
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="pod-", dir=parent))
        self.folder.chmod(0o755)  # mounted read-only: the pod's user only needs to look inside
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.closed = False
        self.wake_read, self.wake_write = os.pipe()  # ends waits for the agent at close()
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.tcp: socket.socket | None = None
        try:
            path = self.folder / SOCKET_NAME
            self.unix.bind(str(path))
            try:  # only the pod's user may connect (we are root), else anyone on the host
                os.chown(path, uid, uid)
                path.chmod(0o600)
            except PermissionError:
                path.chmod(0o666)
            self.unix.listen(16)
            self.unix.setblocking(False)
            self.tcp, self.address = bind_loopback(port)
            self.tcp.listen(64)
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._accept, daemon=True,
                                       name=f"fake-tunnel-{self.address}")
        self.thread.start()

    def _track(self, *sockets: socket.socket) -> bool:
        with self.lock:
            if self.closed:
                return False
            self.connections.update(sockets)
            return True

    def _accept(self) -> None:
        assert self.tcp is not None
        while True:
            try:
                client, _ = self.tcp.accept()
            except OSError:  # closed
                return
            if not self._track(client):
                client.close()
                return
            try:
                self._hand_over(client)
            finally:
                with self.lock:
                    self.connections.discard(client)
                client.close()  # the agent has its own descriptor of it now

    def _hand_over(self, client: socket.socket) -> None:
        """Give the client's socket to the agent's next waiting connection; a client that gets
        no agent in time (the container is gone or not started) is hung up on."""
        while True:
            agent = self._agent_connection()
            if agent is None:
                return
            try:
                agent.setblocking(True)
                socket.send_fds(agent, [b"c"], [client.fileno()])
                return
            except OSError:  # that connection is gone (an agent of a stopped container)
                continue
            finally:
                agent.close()

    def _agent_connection(self) -> socket.socket | None:
        """The agent's next waiting connection, within AGENT_WAIT_SECONDS; None at close()."""
        end = time.monotonic() + AGENT_WAIT_SECONDS
        while not self.closed:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            try:
                ready, _, _ = select.select([self.unix, self.wake_read], [], [], remaining)
            except (OSError, ValueError):  # closed meanwhile
                return None
            if self.wake_read in ready:
                return None
            try:
                return self.unix.accept()[0]
            except BlockingIOError:  # another client's thread took it
                continue
            except OSError:
                return None
        return None

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            os.write(self.wake_write, b"x")
            left = list(self.connections)
            self.connections.clear()
        for sock in (self.tcp, self.unix, *left):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self.wake_read)
        os.close(self.wake_write)


def probe(address: str, port: int, path: str, timeout: float = 1.0) -> bool:
    """An httpGet probe: True on a 2xx or 3xx answer (what the kubelet counts as success)."""
    import http.client

    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return 200 <= connection.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
