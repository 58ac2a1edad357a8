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

import selectors
import socket
import sys
import threading

READ_SIZE = 65536


def splice(client, port):
    """Copy both ways between `client` and 127.0.0.1:PORT on one thread, each direction half
    closed when its source ends, until both have ended. (A blocking send holds the other
    direction: fine for HTTP, where one side speaks at a time.)"""
    try:
        target = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:  # nothing listens yet (the runner is importing): the client sees EOF
        client.close()
        return
    target.settimeout(None)
    peers = {client: target, target: client}
    selector = selectors.DefaultSelector()
    try:
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        open_ends = 2
        while open_ends:
            for key, _ in selector.select():
                source = key.fileobj
                try:
                    data = source.recv(READ_SIZE)
                    if data:
                        peers[source].sendall(data)
                        continue
                except OSError:
                    pass
                selector.unregister(source)  # this direction is over
                open_ends -= 1
                try:
                    peers[source].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
    finally:
        selector.close()
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
