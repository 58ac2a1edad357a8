"""The README's quick start and "Use it" commands work as written (issue 12).

From a fresh clone, `make up` runs in the background (on Postgres + Redis, then embedded), and
every command of the README's "Use it" section — parsed from its code blocks, so this test
follows the README — runs in its own process whose environment holds only PATH and HOME, in the
order written. Each must reach the running platform: the second terminal finds the database and
broker `make up` chose (a private database, Redis database and queue here, recorded by
`make up`), not an empty SQLite file. The only edits to a command: the port (a free one, not
8000), the admin password and the `<task_id>` placeholder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.conftest import ROOT
from tests.processes import free_port

pytestmark = pytest.mark.worker

README = ROOT / "README.md"
PATH = "/usr/local/bin:/usr/bin:/bin"
DB_NAME = "kf_readme_commands"
REDIS_DB = "7"
QUEUE = "kf-readme-commands"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def commands(title: str) -> list[str]:
    """The commands of a README section's bash blocks, continuation lines joined, comments off."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section(title), re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                found.append(command.strip())
    return found


def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "kubefunction"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    (clone / ".venv").symlink_to((ROOT / ".venv").resolve())
    # The shared virtualenv is installed already: requirements older than its stamp, so
    # `make install` does not reinstall into it.
    for name in ("requirements.txt", "requirements-dev.txt"):
        os.utime(clone / name, (0, 0))
    return clone


def private_state() -> None:
    """An empty private database and queue for the Postgres + Redis run."""
    connection = psycopg2.connect(dbname="postgres", user="postgres", host="127.0.0.1")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    connection.close()
    redis.Redis(host="127.0.0.1", db=int(REDIS_DB)).delete(QUEUE)


def run(clone: Path, home: Path, command: str, *, timeout: float = 180) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=clone, env={"PATH": PATH, "HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


class Platform:
    """`make up` in the background, in its own process group."""

    def __init__(self, clone: Path, home: Path, port: int, extra: dict[str, str]):
        self.clone, self.port = clone, port
        self.log = clone.parent / "make-up.log"
        env = {"PATH": PATH, "HOME": str(home), "KUBEFUNCTION_PORT": str(port), **extra}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(["make", "up"], cwd=clone, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"make up ended:\n{self.log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    pass
                log = self.log.read_text()
                if "celery@" in log and "ready" in log:  # the worker too
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"make up did not come up:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM the group (make and honcho: honcho stops web, worker and beat), then SIGKILL
        whatever of this clone is left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while self._leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _leftovers(self) -> list[int]:
        """Processes still running in this clone (their working directory)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if Path(os.readlink(entry / "cwd")) == self.clone:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids


def follow_the_readme(clone: Path, home: Path, port: int) -> None:
    password = (clone / "var" / "admin-password.txt").read_text().strip()
    prelude: list[str] = []  # the block's shell variables (TOKEN, H), set as the reader would
    task_id = None
    checked = set()

    def edited(command: str) -> str:
        command = command.replace("localhost:8000", f"localhost:{port}")
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        command = command.replace("password=…", f"password={password}")
        if "<task_id>" in command:
            assert task_id, "a command needs a task id no earlier command gave"
            command = command.replace("<task_id>", task_id)
        return command

    for number, command in enumerate(commands("Use it")):
        shell = "\n".join([*prelude, edited(command)])
        if re.match(r"^[A-Z]+=", command):
            prelude.append(edited(command))
            variable = command.split("=", 1)[0]
            value = run(clone, home, f'{shell}\nprintf %s "${variable}"')
            assert value and value != "null", f"{command} gave {value!r}"
            checked.add(number)
            continue
        out = run(clone, home, shell)
        body = None
        if command.startswith("curl"):
            body = json.loads(out)
            assert isinstance(body, dict), out
        if "register_function greet" in command:
            assert "greet v1" in out and ": ready" in out, out
        elif "dispatch greet --payload '" in command:
            assert "succeeded" in out and "Hello, Ada!" in out, out
        elif "--count 200" in command:
            assert "200 dispatched" in out and "200 succeeded" in out, out
        elif "--payload-file" in command:
            assert "queued 2 executions" in out, out
        elif command.startswith("printf"):
            assert (clone / "events.jsonl").read_text().count("\n") == 2
        elif "manage.py doctor" in command:
            assert "worker" in out.lower(), out
        elif "api/functions/?wait" in command:
            assert body["name"] == "greet2" and body["version"]["status"] == "ready", body
        elif command.endswith("/api/triggers/"):
            assert body["name"] == "greet2" and body["function"] == "greet2", body
        elif "executions/" in command:
            assert body["status"] == "succeeded", body
            assert body["output"]["message"] == "Hello, Ada!", body
        elif "dispatch/?wait=10" in command:
            assert body["status"] == "succeeded" and body["output"]["message"] == "Hello, Ada!"
        elif '"payloads"' in command:
            assert body["count"] == 2 and len(body["executions"]) == 2, body
        elif "Idempotency-Key" in command:  # "twice: one run"
            assert body["replayed"] is False, body
            again = json.loads(run(clone, home, shell))
            assert again["replayed"] is True and again["task_id"] == body["task_id"], again
        elif "/dispatch/" in command:
            assert set(body) >= {"task_id", "result_url"}, body
            task_id = body["task_id"]
        elif "/versions/" in command:
            assert body["function"] == "greet2" and body["status"] == "ready", body
        elif "/activate/" in command:
            assert body["active_version"] == 1, body
        elif "AsyncResult" in command:
            assert "Hello, Ada!" in out, out  # the function's output, from a plain Django shell
        else:
            raise AssertionError(f"the README has a command this test does not check: {command}")
        checked.add(number)
    assert len(checked) == len(commands("Use it")) >= 15


def follow_porting(clone: Path, home: Path, port: int) -> None:
    """The "Bring your functions" commands: a Lambda function, unchanged, behind a webhook."""
    found = commands("Bring your functions")
    assert len(found) == 4, found
    for command in found:
        out = run(clone, home, command.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        if "register_function orders" in command:
            assert "orders v1 (lambda handler lambda_orders.lambda_handler): ready" in out, out
        elif "create_trigger" in command:
            assert "orders-http" in out, out
        elif "-X POST" in command:
            body = json.loads(out)
            assert body["method"] == "POST" and body["q"] == "2", body
            assert body["order"] == {"sku": "A-1"} and body["path"] == "/items"
        else:
            body = json.loads(out)
            assert body["method"] == "GET" and body["q"] == "1" and body["order"] is None, body
            assert len(body["request_id"]) == 36, body  # the execution id


@pytest.mark.parametrize("mode", ["postgres-redis", "embedded"])
def test_readme_commands_work_as_written(tmp_path, mode):
    quick_start = commands("Quick start")
    assert quick_start[0].startswith("make up"), quick_start
    clone, home, port = fresh_clone(tmp_path), tmp_path / "home", free_port()
    home.mkdir()
    if mode == "embedded":
        extra = {"KUBEFUNCTION_EMBEDDED": "1"}
    else:
        private_state()
        extra = {"KUBEFUNCTION_DB_NAME": DB_NAME, "KUBEFUNCTION_REDIS_DB": REDIS_DB,
                 "KUBEFUNCTION_QUEUE": QUEUE}
    platform = Platform(clone, home, port, extra)
    try:
        platform.wait_ready()
        log = platform.log.read_text()
        if mode == "embedded":
            assert "embedded SQLite" in log, log[-3000:]
        else:
            assert f"5432/{DB_NAME}" in log and f"6379/{REDIS_DB}" in log, log[-3000:]
        # No debug pages: an unknown URL gets the plain 404, not Django's debug page.
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/no-such-page/", timeout=10)
        assert missing.value.code == 404 and b"URLconf" not in missing.value.read()
        # The admin's static files are served with DEBUG off.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/admin/css/base.css",
                                    timeout=10) as css:
            assert css.status == 200
        follow_the_readme(clone, home, port)
        follow_porting(clone, home, port)
        if mode == "embedded":
            assert (clone / "var" / "db.sqlite3").stat().st_size > 0
        else:
            assert not (clone / "var" / "db.sqlite3").exists()  # nobody fell back to SQLite
    finally:
        platform.stop()
