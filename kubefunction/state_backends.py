"""Which database and broker this checkout uses: one answer for every process.

`kubefunction.settings` asks `choose` at import, so a web process, a worker, beat, a plain
`manage.py` command in a second terminal, a Django shell and the tests all decide the same way:

1. `DATABASE_URL` / `CELERY_BROKER_URL` (environment, then `.env`), when either is set;
2. otherwise `KUBEFUNCTION_EMBEDDED`: true is SQLite + Kombu's file-system broker under
   `var/`, false is Postgres + Redis on 127.0.0.1 (database `KUBEFUNCTION_DB_NAME`, Redis
   database `KUBEFUNCTION_REDIS_DB`);
3. unset: Postgres + Redis when both answer on 127.0.0.1, else embedded.

`make up` runs this file as a script (`record`): it decides afresh (ignoring an older record),
writes the knobs it decided with — never URLs — to `var/platform.env`, and prints them as shell
exports for its own processes. Settings read that record below the environment and `.env`, so a
command typed later in another terminal finds the running platform's choice (the embedded mode
included, or a private database name), while a variable set in the environment — the tests' own
database name, Redis database and queue — always wins over it.

Plain Python, no Django import: the Makefile and `scripts/env.sh` run it before Django exists.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
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
    broker_url: str | None  # None: the embedded file-system broker
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
        return f"embedded SQLite + file-system broker under {where} ({choice.reason})"
    return (f"database {choice.database_url or 'embedded SQLite'}, "
            f"broker {choice.broker_url or 'filesystem://'} ({choice.reason})")


def load_dotenv() -> None:
    """Fill the environment from `.env` where it is silent, as settings do."""
    import environ  # django-environ: the same parser as settings

    environ.Env.read_env(DOTENV, overwrite=False)


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
    `shell`: decide afresh without recording, print exports (scripts/env.sh, the tests)."""
    command = argv[1] if len(argv) > 1 else ""
    if command not in ("record", "shell"):
        print("usage: state_backends.py record|shell", file=sys.stderr)
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
