"""Infrastructure restarts (issue 7): Redis, Postgres and the Docker engine go away and come back
under real worker, beat and gunicorn processes; every accepted execution still ends in exactly one
terminal record.

Nothing shared is touched: each test runs its own `redis-server`, Postgres cluster or `dockerd`
on a free loopback port / private socket, started and killed by the fixtures below. The lost
messages of a Redis restart come back through the reaper (`executions.reap`, run by beat), which
re-sends executions still queued past KUBEFUNCTION_REAPER_QUEUED_GRACE seconds.

Run them alone with `make test PYTEST_ARGS="-m faults"`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from executions import services
from executions.models import Execution
from kubefunction.celery import app as celery_app
from tests.processes import (
    ROOT,
    free_port,
    start_beat,
    start_web,
    start_worker,
    stop,
    worker_database_url,
)
from triggers.models import Trigger

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

TERMINAL = ("succeeded", "failed", "timed_out")


def wait_for(check, *, timeout: float, what: str, every: float = 0.5):
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group (SIGKILL after `grace` seconds) and reap it."""
    stop(process, timeout=grace)


# --- a private Redis ---------------------------------------------------------------------------

class PrivateRedis:
    """A `redis-server` on a free loopback port without persistence: `restart()` kills it with
    SIGKILL and starts it again empty on the same port (every queued message is lost)."""

    def __init__(self, folder: Path, *, appendonly: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: self._pings(client), timeout=20, what="redis-server", every=0.1)

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return client.ping()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def queue_length(self, queue: str) -> int:
        return redis.Redis(port=self.port, socket_connect_timeout=1).llen(queue)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def broker_at(monkeypatch):
    """Point this process's Celery app at another broker URL: `broker_at(url)`."""
    saved = (celery_app.conf.broker_url, celery_app.conf.task_publish_retry,
             celery_app.conf.broker_connection_timeout)

    def point(url: str) -> None:
        monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads it before its configuration
        celery_app.conf.broker_url = url
        celery_app.conf.task_publish_retry = False
        celery_app.conf.broker_connection_timeout = 2
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    yield point
    (celery_app.conf.broker_url, celery_app.conf.task_publish_retry,
     celery_app.conf.broker_connection_timeout) = saved
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


# --- worker, beat and gunicorn subprocesses ----------------------------------------------------

QUEUE = settings.CELERY_TASK_DEFAULT_QUEUE  # on private brokers: no one else reads it
REAPER_ENV = {"KUBEFUNCTION_REAPER_INTERVAL": "1", "KUBEFUNCTION_REAPER_QUEUED_GRACE": "3",
              "KUBEFUNCTION_REAPER_RUNNING_MARGIN": "2"}


def platform_env(*, broker: str, database: str, marks: Path | None = None,
                 **extra: str) -> dict[str, str]:
    """The platform's environment on private services; `marks` is bound read-write into the
    local runtime's boxes (KUBEFUNCTION_SANDBOX_WRITABLE_DIRS) for `once_only_source`."""
    shared = {"KUBEFUNCTION_SANDBOX_WRITABLE_DIRS": str(marks)} if marks else {}
    return {**os.environ, "DATABASE_URL": database, "CELERY_BROKER_URL": broker,
            "KUBEFUNCTION_QUEUE": QUEUE, "KUBEFUNCTION_DISPATCH_RATE": "",
            "DATABASE_CONNECT_TIMEOUT": "2", **REAPER_ENV, **shared, **extra}


def start_celery(kind: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A `celery worker` (2 prefork children) or `celery beat` subprocess; not waited for (it
    may be on a private broker this process does not talk to)."""
    if kind == "worker":
        return start_worker(f"faults-{os.getpid()}-{time.monotonic_ns()}@localhost", log_path,
                            env, queue=QUEUE, wait=False)
    return start_beat(log_path, env)


@pytest.fixture
def processes(tmp_path) -> Iterator[list[subprocess.Popen]]:
    """Subprocesses a test starts; all stopped (SIGTERM, then SIGKILL) at its end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop_group(process)


def start_gunicorn(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """The web server as `make up` runs it, DEBUG off, on these private services."""
    try:
        return start_web({**env, "DJANGO_DEBUG": "false"}, log_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def log_tail(process: subprocess.Popen, size: int = 4000) -> str:
    return Path(process.log_path).read_text(errors="replace")[-size:]


# --- functions ---------------------------------------------------------------------------------

def marks_folder(tmp_path: Path) -> Path:
    """A folder the sandbox uid (65534) can write: `once_only_source`'s markers go there."""
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    return marks


def once_only_source(marks: Path, sleep: float = 0.0) -> bytes:
    """A handler that creates one marker file per event and fails if it already exists: a
    second run of the same execution cannot succeed, so 'succeeded' also means 'ran once'."""
    return (f"import time\n\ndef handle(event):\n    time.sleep({sleep})\n"
            f"    open('{marks}/' + str(event), 'x').close()\n    return event\n").encode()


def make_trigger(api, name: str, source: bytes, **fields) -> Trigger:
    created = api.post("/api/functions/", {"name": name, "source": SimpleUploadedFile(
        f"{name.replace('-', '_')}.py", source), **fields}, format="multipart")
    assert created.status_code == 201, created.content
    assert api.post("/api/triggers/", {"name": name, "function": name},
                    format="json").status_code == 201
    return Trigger.objects.get(name=name)


def assert_all_succeeded_once(task_ids: list[str], marks: Path) -> None:
    executions = Execution.objects.filter(task_id__in=task_ids)
    statuses = dict(executions.values_list("task_id", "status"))
    assert len(statuses) == len(task_ids)
    bad = {t: s for t, s in statuses.items() if s != "succeeded"}
    assert not bad, f"{len(bad)} not succeeded: " + str(list(executions.filter(
        task_id__in=list(bad)).values("status", "error_type", "error"))[:3])
    results = TaskResult.objects.filter(task_id__in=task_ids)
    assert results.filter(status="SUCCESS").count() == len(task_ids), list(results.exclude(
        status="SUCCESS").values("status", "result", "traceback", "worker"))
    assert len(list(marks.iterdir())) == len(task_ids)  # each function ran exactly once


# --- 1. Redis restarted ------------------------------------------------------------------------

@pytest.mark.parametrize("appendonly", [False, True], ids=["no-persistence", "appendonly"])
def test_redis_restarted_with_100_queued_then_worker_and_reaper(
        api, private_redis, broker_at, processes, tmp_path, appendonly):
    """Without persistence the 100 messages are lost and the reaper sends them again from
    Postgres; with an append-only file Redis keeps them and the worker takes them as they are."""
    if appendonly:
        private_redis.kill()
        private_redis.appendonly = True
        private_redis.start()
    broker_at(private_redis.url)
    marks = marks_folder(tmp_path)
    trigger = make_trigger(api, "queued-100", once_only_source(marks))

    with celery_app.connection_for_write() as connection:  # the queue exists before the restart
        connection.default_channel.queue_declare(QUEUE, durable=True, auto_delete=False)
    executions = services.execution_dispatch_many(trigger=trigger, payloads=list(range(100)))
    task_ids = [e.task_id for e in executions]
    wait_for(lambda: private_redis.queue_length(QUEUE) == 100, timeout=10,
             what="100 messages in the private Redis")

    if appendonly:
        time.sleep(1.5)  # appendfsync everysec: on disk within a second
    private_redis.restart()  # SIGKILL: without persistence the 100 messages are gone
    assert private_redis.queue_length(QUEUE) == (100 if appendonly else 0)
    assert Execution.objects.filter(task_id__in=task_ids, status="queued").count() == 100

    env = platform_env(broker=private_redis.url, database=worker_database_url(), marks=marks)
    processes.append(start_celery("worker", env, tmp_path / "worker.log"))
    processes.append(start_celery("beat", env, tmp_path / "beat.log"))
    try:
        wait_for(lambda: Execution.objects.filter(task_id__in=task_ids,
                                                  status__in=TERMINAL).count() == 100,
                 timeout=100, what="100 terminal executions")
    except pytest.fail.Exception:
        print(log_tail(processes[0]), log_tail(processes[1]))
        raise
    assert_all_succeeded_once(task_ids, marks)


def test_a_consumers_connection_lost_to_redis_mid_read_closes_without_killing_the_worker(
        private_redis):
    """What a worker's consumer holds when Redis dies under it, and what Celery does next
    (`Consumer.on_connection_error_after_connected`: collect, then close): a BRPOP in flight,
    a message delivered and not acknowledged, a fanout queue bound. With plain kombu the close
    raises AttributeError (the channel's first close failed part-way, the transport is gone),
    which is not a connection error, and the worker dies instead of reconnecting."""
    import kombu
    from celery.worker.consumer.consumer import COLLECT_SOCKET_TIMEOUT
    from kombu.common import ignore_errors

    connection = celery_app.connection_for_read(private_redis.url)
    work = kombu.Queue("faults-work")
    broadcast = kombu.Queue("faults-broadcast", kombu.Exchange("faults-fanout", type="fanout"),
                            auto_delete=True)
    with connection.Producer() as producer:
        for n in range(3):
            producer.publish({"n": n}, routing_key=work.name, declare=[work])
    delivered = []
    consumer = connection.Consumer([work, broadcast], prefetch_count=10,
                                   callbacks=[lambda body, message: delivered.append(message)])
    consumer.consume()
    connection.drain_events(timeout=2)
    assert delivered, "a message delivered and not acknowledged"
    channel = connection.default_channel
    channel._brpop_start()  # what the worker's event loop keeps in flight
    assert channel._in_poll
    private_redis.kill()

    try:
        connection.collect(socket_timeout=COLLECT_SOCKET_TIMEOUT)
    except Exception:  # Celery ignores whatever collect raises
        pass
    ignore_errors(connection, connection.close)  # raises only what is not a connection error
    channel.qos._on_collect.cancel()  # not again at this process's exit: the server is gone


def test_redis_restarted_under_a_consuming_worker(api, private_redis, broker_at, processes,
                                                  tmp_path):
    broker_at(private_redis.url)
    marks = marks_folder(tmp_path)
    trigger = make_trigger(api, "consumed-100", once_only_source(marks, sleep=0.1),
                           timeout_seconds=5)
    env = platform_env(broker=private_redis.url, database=worker_database_url(), marks=marks)
    worker = start_celery("worker", env, tmp_path / "worker.log")
    processes.append(worker)
    processes.append(start_celery("beat", env, tmp_path / "beat.log"))

    executions = services.execution_dispatch_many(trigger=trigger, payloads=list(range(100)))
    task_ids = [e.task_id for e in executions]
    wait_for(lambda: Execution.objects.filter(task_id__in=task_ids, status="succeeded").count()
             >= 5, timeout=60, what="the worker consuming")
    private_redis.kill()
    time.sleep(2)  # the worker sees the connection lost
    private_redis.start()  # empty: the messages not yet consumed are gone
    try:
        wait_for(lambda: Execution.objects.filter(task_id__in=task_ids,
                                                  status__in=TERMINAL).count() == 100,
                 timeout=100, what="100 terminal executions")
    except pytest.fail.Exception:
        print(log_tail(worker), list(Execution.objects.filter(task_id__in=task_ids).exclude(
            status__in=TERMINAL).values("status", "attempt", "worker"))[:5])
        raise
    assert worker.poll() is None  # the same worker process recovered its consumers
    assert_all_succeeded_once(task_ids, marks)
    assert "Connection to broker lost" in log_tail(worker, 10**7)


# --- 4. dispatch across a broker outage (and a database outage) --------------------------------

def test_dispatch_during_broker_outage_is_sent_by_the_reaper(api, private_redis, broker_at,
                                                             processes, tmp_path):
    marks = marks_folder(tmp_path)
    make_trigger(api, "outage", once_only_source(marks))
    broker_at(private_redis.url)
    private_redis.kill()

    response = api.post("/api/triggers/outage/dispatch/", {"payload": 7}, format="json")
    assert response.status_code == 503, response.content
    execution = Execution.objects.get()
    assert execution.status == "queued"
    assert execution.task_id in response.json()["detail"]

    private_redis.start()
    env = platform_env(broker=private_redis.url, database=worker_database_url(), marks=marks)
    processes.append(start_celery("worker", env, tmp_path / "worker.log"))
    processes.append(start_celery("beat", env, tmp_path / "beat.log"))
    wait_for(lambda: Execution.objects.filter(pk=execution.pk, status__in=TERMINAL).exists(),
             timeout=60, what="the reaper sending the stored execution")
    assert_all_succeeded_once([execution.task_id], marks)


def test_dispatch_with_database_and_broker_down_stores_nothing(api, user, processes, tmp_path):
    from tests.test_database_unavailable import TcpProxy

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("needs Postgres (DATABASE_URL)")
    make_trigger(api, "both-down", b"def handle(e):\n    return e\n")
    token = Token.objects.create(user=user).key
    proxy = TcpProxy((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    proxy.start()
    try:
        auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
        env = platform_env(broker="redis://127.0.0.1:1/0",  # nothing listens on port 1
                           database=f"postgres://{auth}@127.0.0.1:{proxy.port}/{db['NAME']}")
        server, base = start_gunicorn(env, tmp_path / "gunicorn.log")
        processes.append(server)
        headers = {"Authorization": f"Token {token}"}

        proxy.cut()  # the database is away as well
        response = requests.post(f"{base}/api/triggers/both-down/dispatch/", json={"payload": 1},
                                 headers=headers, timeout=20)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "database_unavailable"
        assert Execution.objects.count() == 0  # nothing half-stored

        proxy.start()  # the database is back, the broker is not: stored, 503 naming it
        response = requests.post(f"{base}/api/triggers/both-down/dispatch/", json={"payload": 2},
                                 headers=headers, timeout=30)
        assert response.status_code == 503, response.text
        execution = Execution.objects.get()
        assert execution.status == "queued" and execution.input == 2
        assert execution.task_id in response.json()["detail"]
    finally:
        proxy.cut()


# --- 2. Postgres restarted during a burst ------------------------------------------------------

class PrivatePostgres:
    """A throw-away Postgres cluster (initdb as the `postgres` OS user, trust auth) on a free
    loopback port; `stop()`/`start()` is a real server restart."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="kf-faults-pg-"))
        shutil.chown(self.folder, "postgres")
        self.data = self.folder / "data"
        self.port = free_port()

    def _as_postgres(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._as_postgres("/usr/local/bin/initdb", "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        self._as_postgres(
            "/usr/local/bin/pg_ctl", "-D", str(self.data), "-w", "-l", str(self.folder / "log"),
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=50", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("/usr/local/bin/pg_ctl", "-D", str(self.data), "-m", mode, "-w",
                          "stop")

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


def _private_postgres_problem() -> str | None:
    if not Path("/usr/local/bin/pg_ctl").exists():
        return "no /usr/local/bin/pg_ctl"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


SEED = """
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from functions import services as functions
from triggers.models import Trigger
user = User.objects.create_user("burst", password="burst-password-1")
source = open(SOURCE_PATH, "rb").read()
version = functions.function_register(name="burst", filename="burst.py", data=source, owner=user)
Trigger.objects.create(name="burst", function=version.function)
print("TOKEN=" + Token.objects.create(user=user).key)
"""


@pytest.mark.skipif(_private_postgres_problem() is not None,
                    reason=_private_postgres_problem() or "")
def test_postgres_restarted_during_a_burst(private_redis, processes, tmp_path):
    import psycopg2

    postgres = PrivatePostgres()
    try:
        postgres.init()
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
                        "postgres", "kf_faults"], check=True, timeout=30)
        marks = marks_folder(tmp_path)
        env = platform_env(broker=private_redis.url, database=postgres.url("kf_faults"),
                           marks=marks)
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"], cwd=ROOT,
                       env=env, check=True, capture_output=True, timeout=180)
        source = tmp_path / "burst.py"
        source.write_bytes(once_only_source(marks, sleep=0.3))
        seed = SEED.replace("SOURCE_PATH", repr(str(source)))
        seeded = subprocess.run([sys.executable, "manage.py", "shell", "-c", seed], cwd=ROOT,
                                env=env, check=True, capture_output=True, text=True, timeout=60)
        token = seeded.stdout.strip().rsplit("TOKEN=", 1)[1]

        server, base = start_gunicorn(env, tmp_path / "gunicorn.log")
        processes.append(server)
        worker = start_celery("worker", env, tmp_path / "worker.log")
        processes.append(worker)

        answers: list[tuple[int, dict]] = []
        stop = threading.Event()

        def burst() -> None:
            session = requests.Session()
            session.headers["Authorization"] = f"Token {token}"
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = session.post(f"{base}/api/triggers/burst/dispatch/",
                                            json={"payload": n}, timeout=30)
                    body = response.json() if response.headers.get(
                        "Content-Type", "").startswith("application/json") else {
                        "text": response.text[:300]}
                    answers.append((response.status_code, body))
                except requests.RequestException as exc:
                    answers.append((0, {"error": str(exc)}))
                time.sleep(0.05)

        thread = threading.Thread(target=burst, daemon=True)
        thread.start()
        time.sleep(4)
        postgres.stop("fast")  # every connection (web and worker) is dropped
        time.sleep(5)
        postgres.start()
        time.sleep(4)
        stop.set()
        thread.join(timeout=60)

        codes = [code for code, _ in answers]
        unexpected = [(c, b) for c, b in answers if c not in (202, 503)]
        assert not unexpected, unexpected[:3]
        unavailable = [b for c, b in answers if c == 503]
        assert unavailable, "no request met the database outage"
        assert all(b.get("code") == "database_unavailable" for b in unavailable), unavailable[:3]
        accepted = [b["task_id"] for c, b in answers if c == 202]
        assert codes.index(503) > 0 and 202 in codes[codes.index(503):], \
            "accepted before and after the outage"

        connection = psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres",
                                      dbname="kf_faults")
        connection.autocommit = True

        def rows() -> dict[str, tuple[str, int]]:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT e.task_id, e.status || '/' || e.attempt, (SELECT count(*) FROM "
                    "django_celery_results_taskresult r WHERE r.task_id = e.task_id) "
                    "FROM executions_execution e")
                return {t: (s, n) for t, s, n in cursor.fetchall()}

        try:
            wait_for(lambda: all(rows().get(t, ("?",))[0].split("/")[0] in TERMINAL
                                 for t in accepted),
                     timeout=90, what="every accepted execution to end")
        except pytest.fail.Exception:
            print(log_tail(worker))
            raise
        stored = rows()
        for task_id in accepted:
            status, results = stored[task_id]
            # succeeded at its first attempt: the function was not run again
            assert (status, results) == ("succeeded/1", 1), (task_id, status, results)
        # The outage met runs in progress: their claim or outcome was retried, not lost.
        assert "database unavailable (" in log_tail(worker, 10**8)
        connection.close()
    finally:
        for process in processes:
            stop_group(process)
        processes.clear()
        postgres.remove()


# --- 3. the Docker engine restarted during an invocation ---------------------------------------

class PrivateDockerd:
    """A second Docker engine with its own socket, data root and containerd (so restarting it
    touches nobody else's containers), started the way scripts/services.sh starts the shared
    one; `restart()` is SIGTERM, wait for it to exit, start again, wait until it answers."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="kf-dockerd-"))
        self.socket = self.folder / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import docker

        log = (self.folder / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            ["/usr/sbin/dockerd", "--host", self.url, "--data-root", str(self.folder / "data"),
             "--exec-root", str(self.folder / "exec"), "--pidfile",
             str(self.folder / "docker.pid"), "--bridge=none", "--iptables=false",
             "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            if self.process.poll() is not None:
                pytest.fail((self.folder / "dockerd.log").read_text()[-3000:])
            try:
                return docker.DockerClient(base_url=self.url, timeout=5).ping()
            except Exception:
                return False

        wait_for(answers, timeout=60, what="the private dockerd", every=0.3)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def running_containers(self) -> list[dict]:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=10).api.containers(
            filters={"label": "io.kubefunction.managed=true"})

    def remove(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(self.folder / "exec")], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    from tests.docker_engine import engine_problem

    if engine_problem():
        pytest.skip(engine_problem())
    engine = PrivateDockerd()
    try:
        engine.start()
        yield engine
    finally:
        engine.remove()


def test_docker_engine_restarted_during_an_invocation(api, private_redis, private_dockerd,
                                                      broker_at, processes, tmp_path):
    from functions.builds import version_build
    from functions.models import FunctionVersion

    broker_at(private_redis.url)
    make_trigger(api, "engine-restart", b"import time\n\ndef handle(event):\n"
                 b"    time.sleep(event)\n    return event\n", runtime="docker",
                 timeout_seconds=30)
    version = FunctionVersion.objects.get(function__name="engine-restart")
    version_build(version_id=version.pk)  # on the shared engine, pushed to the registry
    version.refresh_from_db()
    assert version.status == "ready" and version.image, version.build_log
    celery_app.control.purge()  # the build message: built already
    env = platform_env(broker=private_redis.url, database=worker_database_url(),
                       KUBEFUNCTION_DOCKER_URL=private_dockerd.url)
    worker = start_celery("worker", env, tmp_path / "worker.log")
    processes.append(worker)
    processes.append(start_celery("beat", env, tmp_path / "beat.log"))

    def run(payload: int, timeout: float = 90) -> Execution:
        response = api.post("/api/triggers/engine-restart/dispatch/", {"payload": payload},
                            format="json")
        assert response.status_code == 202, response.content
        execution = Execution.objects.get(task_id=response.json()["task_id"])
        try:
            wait_for(lambda: Execution.objects.filter(pk=execution.pk,
                                                      status__in=TERMINAL).exists(),
                     timeout=timeout, what=f"execution {execution.task_id} to end")
        except pytest.fail.Exception:
            print(log_tail(worker))
            raise
        execution.refresh_from_db()
        return execution

    def interrupted(seconds: int) -> Execution:
        response = api.post("/api/triggers/engine-restart/dispatch/", {"payload": seconds},
                            format="json")
        execution = Execution.objects.get(task_id=response.json()["task_id"])
        wait_for(lambda: Execution.objects.filter(pk=execution.pk, status="running").exists(),
                 timeout=30, what="the invocation to start")
        time.sleep(1.5)  # inside the function's sleep
        assert private_dockerd.running_containers()
        private_dockerd.restart()
        try:
            wait_for(lambda: Execution.objects.filter(pk=execution.pk,
                                                      status__in=TERMINAL).exists(),
                     timeout=90, what="the interrupted invocation to end")
        except pytest.fail.Exception:
            print(log_tail(worker))
            raise
        execution.refresh_from_db()
        return execution

    warm_up = run(0, timeout=120)  # pulls the image from the registry into the private engine
    assert warm_up.status == "succeeded", (warm_up.error_type, warm_up.error)

    # 5 s: the engine's SIGTERM reaches the runner, which ends the invocation it holds (it
    # answers over its socket, not through the engine) before the engine's 10-s stop timeout.
    # 20 s: the engine kills the container at its stop timeout, mid-function.
    for seconds in (5, 20):
        execution = interrupted(seconds)
        first = (execution.attempts or [{}])[0]
        print(f"{seconds}-s invocation under an engine restart: {execution.status} after "
              f"{execution.attempt} attempt(s); earlier: " + "; ".join(
                  f"{a.get('error_type')}: {a.get('error', '')[:300]}"
                  for a in execution.attempts or []))
        assert execution.status in ("succeeded", "failed")
        if execution.status == "failed":  # with a reason that names the engine
            assert "Docker engine" in execution.error, (execution.error_type, execution.error)
            continue
        assert execution.output == seconds
        if execution.attempt > 1:  # retried as a platform failure, the reason kept
            assert first.get("platform") is True, execution.attempts
            assert "Docker engine" in first.get("error", ""), execution.attempts
        if seconds == 20:
            assert execution.attempt >= 2, execution.attempts  # the killed run was retried

    for payload in (1, 2):  # later invocations succeed (no stuck warm pool)
        later = run(payload)
        assert (later.status, later.output, later.attempt) == ("succeeded", payload, 1), \
            (later.error_type, later.error, later.attempts)


# --- the retry loop itself ---------------------------------------------------------------------

def test_db_retry_reconnects_after_the_server_dropped_the_connection():
    import psycopg2
    from django.db import connection

    from executions.db_retry import retrying

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("needs Postgres (DATABASE_URL)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    killer = psycopg2.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                              user=db["USER"], password=db.get("PASSWORD") or None,
                              dbname=db["NAME"])
    killer.autocommit = True
    with killer.cursor() as cursor:  # what a Postgres restart does to every open connection
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    killer.close()

    def count_executions() -> int:
        return Execution.objects.count()

    assert retrying(count_executions, what="count") == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid  # a new connection


def test_db_retry_gives_up_with_service_unavailable_and_never_retries_in_a_transaction():
    from django.db import OperationalError, transaction

    from executions.db_retry import retrying
    from kubefunction.errors import ServiceUnavailable

    calls = []

    def unreachable() -> None:
        calls.append(time.monotonic())
        raise OperationalError("connection refused")

    with pytest.raises(ServiceUnavailable, match="could not store it after"):
        retrying(unreachable, what="store it", seconds=0.5)
    assert len(calls) >= 2 and calls[-1] - calls[0] < 2  # retried, with a bounded wait

    calls.clear()
    with pytest.raises(OperationalError), transaction.atomic():
        retrying(unreachable, what="store it", seconds=5)
    assert len(calls) == 1  # the transaction is lost: no retry inside it
