"""The container end of the docker kubelet's tunnel to a warm pod's port (see `tests.kube.tunnel`).

The docker kubelet runs this file's text in the pod's container (`docker exec`, as the pod's user,
`python3 -I -S -c <this> SOCKET PORT`). The container has no network but its own loopback, where
the pod's command (the runner's HTTP mode) listens on PORT. The agent connects to the kubelet's
unix SOCKET (a host folder mounted read-only in the container) and waits there; when the kubelet
hands that connection a client (the client's own socket, as a file descriptor), the agent opens
the next waiting connection, connects to 127.0.0.1:PORT inside the container and splices the two.
Standard library only (Python 3.9+: socket.recv_fds): it runs on the function image's
interpreter. It ends once the kubelet stops listening.
"""

import socket
import sys
import threading

READ_SIZE = 65536


def pipe(source, target):
    """Copy until `source` ends, then end `target`'s direction (a half close)."""
    try:
        while True:
            data = source.recv(READ_SIZE)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def splice(client, port):
    try:
        target = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:  # nothing listens yet (the runner is importing): the client sees EOF
        client.close()
        return
    target.settimeout(None)
    try:
        back = threading.Thread(target=pipe, args=(target, client), daemon=True)
        back.start()
        pipe(client, target)
        back.join()
    except OSError:
        pass
    finally:
        target.close()
        client.close()


def main(path, port):
    while True:
        tunnel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            tunnel.connect(path)
        except OSError:
            return 0  # the kubelet no longer listens: the pod is gone
        try:  # waits until the kubelet hands it a client's socket
            _, fds, _, _ = socket.recv_fds(tunnel, 1, 1)
        except OSError:
            fds = []
        tunnel.close()
        if fds:
            client = socket.socket(fileno=fds[0])
            threading.Thread(target=splice, args=(client, port), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
