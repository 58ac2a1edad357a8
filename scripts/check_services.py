"""Fail with a clear message when the services the tests need do not answer on 127.0.0.1."""

import socket
import sys

NEEDED = {"PostgreSQL": 5432, "Redis": 6379}
missing = []
for name, port in NEEDED.items():
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        missing.append(f"{name} (127.0.0.1:{port})")
if missing:
    sys.exit("make test needs " + " and ".join(missing) + ": start them and run it again.")
