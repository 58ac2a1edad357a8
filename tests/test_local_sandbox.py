"""The local runtime's sandbox, attacked as a non-staff user through the public API, with the
function run by a real Celery worker inside a real bubblewrap: what the function tries from
inside, and what the host sees of it (uid, namespaces, processes left behind).

These tests never skip: without bubblewrap they fail (scripts/sandbox.sh installs it).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from rest_framework.test import APIClient

from executions.runtimes.local import sandbox
from executions.runtimes.local.runtime import source_dir
from functions.models import FunctionVersion
from functions.specs import version_spec
from kubefunction.celery import app as celery_app
from tests.processes import ROOT, celery_env, start_worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

# Every address and socket a function could use to reach the platform's own services here.
HOST_SERVICES = [("127.0.0.1", 5432), ("127.0.0.1", 6379), ("127.0.0.1", 3306),
                 ("127.0.0.1", 5000), ("::1", 5432)]
UNIX_SOCKETS = ["/var/run/postgresql/.s.PGSQL.5432", "/run/postgresql/.s.PGSQL.5432",
                "/tmp/.s.PGSQL.5432", "/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock",
                "/var/run/redis/redis-server.sock", "/run/redis/redis.sock",
                "/var/run/docker.sock", "/run/docker.sock"]

PROBE = """
import errno, os, socket, subprocess, sys, time


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except Exception as exc:
        return {"ok": False, "errno": getattr(exc, "errno", None),
                "error": f"{type(exc).__name__}: {exc}"}


def read(path):
    with open(path, "rb") as handle:
        return handle.read(100).decode("latin-1")


def connect_tcp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect((host, port))
    return "connected"


def connect_unix(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(path)
    return "connected"


def write(path):
    with open(path, "w") as handle:
        handle.write("written by the function")
    return "written"


def fill_tmp():
    written, chunk = 0, b"x" * (1024 * 1024)
    try:
        with open("/tmp/fill", "wb") as handle:
            while written < 512 * 1024 * 1024:
                handle.write(chunk)
                handle.flush()
                written += len(chunk)
    except OSError as exc:
        return {"written": written, "errno": exc.errno, "error": str(exc)}
    finally:
        try:
            os.unlink("/tmp/fill")
        except OSError:
            pass
    return {"written": written, "errno": None}


def handle(event, context):
    probe = event["probe"]
    if probe == "processes":
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
        return {"pids": pids,
                "worker": {pid: attempt(lambda pid=pid: read(f"/proc/{pid}/environ"))
                           for pid in event["worker_pids"]},
                "parent": attempt(lambda: read(f"/proc/{os.getppid()}/environ")),
                "environ": dict(os.environ), "uid": os.getuid(), "gid": os.getgid(),
                "prefix": sys.prefix, "stdlib": os.__file__}
    if probe == "files":
        return {path: attempt(lambda path=path: read(path)) for path in event["paths"]} | {
            f"ls {path}": attempt(lambda path=path: os.listdir(path))
            for path in event["folders"]}
    if probe == "network":
        return {f"{host}:{port}": attempt(lambda host=host, port=port: connect_tcp(host, port))
                for host, port in event["tcp"]} | {
            path: attempt(lambda path=path: connect_unix(path)) for path in event["unix"]}
    if probe == "write":
        return {path: attempt(lambda path=path: write(path)) for path in event["paths"]}
    if probe == "fill_tmp":
        return fill_tmp()
    if probe == "linger":
        # Named, so the host can find this process (and its child) in its own /proc.
        with open("/proc/self/comm", "w") as comm:
            comm.write(event["name"])
        if event.get("child"):
            subprocess.Popen([sys.executable, "-c", "import time\\n"
                              f"open('/proc/self/comm', 'w').write({event['child']!r})\\n"
                              "time.sleep(60)\\n"])
        time.sleep(event["seconds"])
        return "done"
    raise ValueError(probe)
"""


# --- helpers -------------------------------------------------------------------------------------


def register(api: APIClient, name: str, source: str, **fields) -> None:
    response = api.post("/api/functions/", {
        "name": name, "source": SimpleUploadedFile("handler.py", textwrap.dedent(source).encode()),
        "runtime": "local", **fields}, format="multipart")
    assert response.status_code == 201, response.content
    response = api.post("/api/triggers/", {"name": name, "function": name}, format="json")
    assert response.status_code == 201, response.content


def run(api: APIClient, name: str, payload, wait: int = 30) -> dict:
    response = api.post(f"/api/triggers/{name}/dispatch/?wait={wait}", {"payload": payload},
                        format="json")
    assert response.status_code == 200, response.content
    return response.json()


def dispatch(api: APIClient, name: str, payload) -> str:
    response = api.post(f"/api/triggers/{name}/dispatch/", {"payload": payload}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def result(api: APIClient, task_id: str, wait: int = 30) -> dict:
    response = api.get(f"/api/executions/{task_id}/?wait={wait}")
    assert response.status_code == 200, response.content
    return response.json()


def succeeded(body: dict):
    assert body["status"] == "succeeded", body
    return body["output"]


def host_processes() -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                pass


def find_process(name: str, seconds: float = 15) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid, comm in host_processes():
            if comm == name:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no process named {name} appeared on the host")


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def processes_of_uid(uid: int) -> list[int]:
    found = []
    for pid, _ in host_processes():
        try:
            if status_fields(pid)["Uid"].split()[0] == str(uid):
                found.append(pid)
        except (OSError, KeyError):
            pass
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in os.listdir(f"/proc/{current}/task"):
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


def failed_with(result: dict, *codes: int) -> bool:
    return result["ok"] is False and (not codes or result["errno"] in codes)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def worker(celery_worker_process):
    return celery_worker_process


@pytest.fixture
def probe(api, worker) -> str:
    register(api, "probe", PROBE, timeout_seconds="20")
    return "probe"


@pytest.fixture
def private_worker(tmp_path):
    """start(**env) starts a worker with its own settings on a queue of its own (the test's
    dispatches go there); it is killed at the end."""
    queue = f"kf-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    saved = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    started: list[subprocess.Popen] = []

    def start(**extra: str) -> subprocess.Popen:
        env = celery_env(KUBEFUNCTION_QUEUE=queue, KUBEFUNCTION_DISPATCH_RATE="", **extra)
        try:
            process = start_worker(f"sandbox-{len(started)}-{os.getpid()}@localhost",
                                   tmp_path / f"worker-{len(started)}.log", env, queue=queue)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        started.append(process)
        return process

    def stop_all() -> None:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        started.clear()

    start.stop_all = stop_all
    yield start
    stop_all()
    celery_app.conf.task_default_queue = saved
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)


def test_bubblewrap_is_here_and_works():
    """The sandbox must be real on this machine: no test of this file may pass without it."""
    assert Path(settings.KUBEFUNCTION_SANDBOX_BWRAP).is_file(), \
        "bubblewrap is missing: run scripts/sandbox.sh"
    mode, detail, box = sandbox.state()
    assert mode == sandbox.SANDBOXED, detail
    assert box is not None and box.uid == settings.KUBEFUNCTION_SANDBOX_UID


# --- what the function cannot reach --------------------------------------------------------------


def test_cannot_see_the_worker_or_read_its_environment(api, probe, worker):
    worker_pids = [worker.pid, *descendants(worker.pid)]
    secret = Path(f"/proc/{worker.pid}/environ").read_bytes()
    assert b"DATABASE_URL=" in secret  # what there would be to steal
    output = succeeded(run(api, probe, {"probe": "processes", "worker_pids": worker_pids}))
    # A PID namespace of its own: bubblewrap's init (1) and the runner, nothing of the host.
    assert output["pids"] == [1, 2], output["pids"]
    for pid, attempt in output["worker"].items():
        assert failed_with(attempt, errno.ENOENT), (pid, attempt)
    assert failed_with(output["parent"]), output["parent"]
    assert output["uid"] == output["gid"] == settings.KUBEFUNCTION_SANDBOX_UID
    assert set(output["environ"]) == {"PATH", "LANG", "PYTHONIOENCODING",
                                      "PYTHONDONTWRITEBYTECODE", "HOME"}
    assert output["environ"]["HOME"] == "/tmp"
    # The worker's own interpreter and standard library, bound read-only at their paths.
    assert output["prefix"] == sys.base_prefix
    assert output["stdlib"].startswith(f"{sys.base_prefix}/lib/")


def test_cannot_read_the_repository_var_or_other_sources(api, probe, other_user):
    other = APIClient()
    other.force_authenticate(other_user)
    register(other, "bobs-secret", "def handle(event):\n    return 'TOP-SECRET'\n")
    assert succeeded(run(other, "bobs-secret", {})) == "TOP-SECRET"
    bobs = source_dir(version_spec(FunctionVersion.objects.get(function__name="bobs-secret")))
    assert (bobs / "handler.py").is_file()  # unpacked on the host by the run above
    work = Path(settings.KUBEFUNCTION_WORK_DIR)
    paths = [str(bobs / "handler.py"), str(ROOT / ".env"), str(ROOT / ".env.example"),
             str(ROOT / "manage.py"), str(ROOT / "kubefunction" / "settings.py"),
             str(ROOT / "functions" / "runner.py"),
             "/etc/passwd", "/etc/shadow", "/root/.bash_history", "/proc/1/environ"]
    folders = [str(ROOT), str(ROOT / "var"), str(work), str(work / "sources"),
               "/var/lib/postgresql", "/home", "/run", "/var/run", "/root", "/etc",
               "/function/deps"]
    assert (ROOT / ".env.example").is_file() and (ROOT / "manage.py").is_file()
    output = succeeded(run(api, probe, {"probe": "files", "paths": paths, "folders": folders}))
    for path in paths[:-1]:
        assert failed_with(output[path], errno.ENOENT), (path, output[path])
    for folder in folders[:-3]:
        assert failed_with(output[f"ls {folder}"], errno.ENOENT), (folder, output[f"ls {folder}"])
    # /root holds at most the path to the interpreter's prefix (/root/.pyenv/versions/…).
    expected_root = {Path(sys.base_prefix).relative_to("/root").parts[0]} \
        if sys.base_prefix.startswith("/root/") else set()
    assert set(output["ls /root"].get("value", [])) <= expected_root, output["ls /root"]
    # /etc holds only the allow-listed certificate and time-zone files, /function/deps nothing.
    assert set(output["ls /etc"]["value"]) <= {"ssl", "ca-certificates", "localtime"}
    assert output["ls /function/deps"]["value"] == []
    # Its own /proc: pid 1 is bubblewrap's init in the box (root's: unreadable), not the host's.
    assert failed_with(output["/proc/1/environ"])


def test_cannot_connect_to_the_platforms_services(api, probe):
    host_address = _host_private_address()
    for host, port in [("127.0.0.1", 5432), ("127.0.0.1", 6379)]:  # they do answer the host
        socket.create_connection((host, port), timeout=2).close()
    tcp = [*HOST_SERVICES, (host_address, 5432), (host_address, 6379), ("8.8.8.8", 53)]
    output = succeeded(run(api, probe, {"probe": "network", "tcp": tcp, "unix": UNIX_SOCKETS}))
    for host, port in tcp:
        assert failed_with(output[f"{host}:{port}"]), (host, port, output[f"{host}:{port}"])
    for path in UNIX_SOCKETS:
        assert failed_with(output[path], errno.ENOENT), (path, output[path])
    # Loopback inside the box is the box's own: nothing listens there.
    assert failed_with(output["127.0.0.1:5432"], errno.ECONNREFUSED)
    assert failed_with(output[f"{host_address}:5432"], errno.ENETUNREACH)


def test_network_is_refused_unless_the_operator_allows_it(api, worker):
    register(api, "wants-net", PROBE, network="true")
    body = run(api, "wants-net", {"probe": "network", "tcp": [], "unix": []})
    assert body["status"] == "failed", body
    assert "KUBEFUNCTION_LOCAL_ALLOW_NETWORK=true" in body["error"], body


NETWORKED = """
import socket


def handle(event):
    reached = {}
    for host, port in event["tcp"]:
        with socket.socket() as sock:
            sock.settimeout(3)
            try:
                sock.connect((host, port))
                reached[f"{host}:{port}"] = "connected"
            except OSError as exc:
                reached[f"{host}:{port}"] = exc.errno or str(exc)
    with open("/proc/net/route") as routes:
        table = [line.split()[:3] for line in routes.read().splitlines()[1:]]
    with open("/proc/net/dev") as devices:
        interfaces = [line.split(":")[0].strip() for line in devices.read().splitlines()[2:]]
    return {"reached": reached, "routes": table, "interfaces": interfaces}
"""


def test_an_allowed_network_reaches_neither_the_host_nor_private_ranges(api, private_worker):
    """Operator allowed, function asked: the box has slirp4netns's tap0 and a default route, yet
    the host's loopback, every address of the host and private ranges are out of reach."""
    import psutil

    private_worker(KUBEFUNCTION_LOCAL_ALLOW_NETWORK="true")
    register(api, "net", NETWORKED, network="true", timeout_seconds="60")
    own = sorted({a.address for addresses in psutil.net_if_addrs().values()
                  for a in addresses if a.family == socket.AF_INET})
    # Ports the host listens on at every address: slirp's NAT alone would reach these.
    wildcard = sorted({c.laddr.port for c in psutil.net_connections("tcp4")
                       if c.status == psutil.CONN_LISTEN and c.laddr.ip == "0.0.0.0"})
    tcp = [("127.0.0.1", 5432), ("127.0.0.1", 6379), ("127.0.0.1", 5000), ("10.0.2.2", 5432),
           ("10.0.2.2", 6379), ("192.168.1.1", 80), ("172.17.0.1", 5000), ("169.254.169.254", 80),
           ("100.64.0.1", 80),
           *[(address, port) for address in own for port in (5432, 6379, 5000, *wildcard)]]
    body = succeeded(run(api, "net", {"tcp": tcp}, wait=60))
    assert "tap0" in body["interfaces"], body
    assert ["tap0", "00000000", "0202000A"] in body["routes"], body  # default via 10.0.2.2
    reached = {target: how for target, how in body["reached"].items() if how == "connected"}
    assert not reached, reached


def test_cannot_write_outside_its_tmp(api, probe):
    work = Path(settings.KUBEFUNCTION_WORK_DIR)
    paths = ["/tmp/mine", "/function/code/planted.py", "/function/runner.py", "/planted",
             "/usr/planted", "/etc/planted", "/dev/shm/planted", "/root/planted",
             "/proc/planted", str(ROOT / "planted"), str(work / "planted")]
    output = succeeded(run(api, probe, {"probe": "write", "paths": paths}))
    assert output["/tmp/mine"] == {"ok": True, "value": "written"}
    for path in paths[1:]:
        assert failed_with(output[path]), (path, output[path])
    assert not (ROOT / "planted").exists() and not (work / "planted").exists()
    assert not any(work.rglob("planted*"))


def test_tmp_is_size_limited(api, probe):
    output = succeeded(run(api, probe, {"probe": "fill_tmp"}))
    limit = settings.KUBEFUNCTION_SANDBOX_TMP_MB * 1024 * 1024
    assert output["errno"] in (errno.ENOSPC, errno.EFBIG), output
    assert limit - 2 * 1024 * 1024 <= output["written"] <= limit, output


# --- what the host sees --------------------------------------------------------------------------


def test_the_host_sees_an_unprivileged_uid_in_its_own_namespaces(api, probe):
    name = f"kf{uuid.uuid4().hex[:12]}"
    task_id = dispatch(api, probe, {"probe": "linger", "name": name, "seconds": 3})
    pid = find_process(name)
    fields = status_fields(pid)
    uid = str(settings.KUBEFUNCTION_SANDBOX_UID)
    assert fields["Uid"].split() == [uid] * 4, fields["Uid"]
    assert fields["Gid"].split() == [str(settings.KUBEFUNCTION_SANDBOX_GID)] * 4
    assert fields["Groups"].strip() == ""
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[capabilities], 16) == 0, (capabilities, fields[capabilities])
    assert fields["NoNewPrivs"] == "1"
    for namespace in ("pid", "mnt", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{namespace}") != os.readlink(
            f"/proc/self/ns/{namespace}"), namespace
    assert fields["NSpid"].split()[-1] == "2"  # the runner is pid 2 in its box
    # Its root is not the host's: the repository is not under it.
    assert not Path(f"/proc/{pid}/root{ROOT}").exists()
    assert Path(f"/proc/{pid}/root/function/runner.py").is_file()
    assert succeeded(result(api, task_id)) == "done"


def test_a_timeout_kills_everything_in_the_box(api, probe):
    name, child = f"kf{uuid.uuid4().hex[:12]}", f"kc{uuid.uuid4().hex[:12]}"
    register(api, "hangs", PROBE, timeout_seconds="2")
    task_id = dispatch(api, "hangs", {"probe": "linger", "name": name, "child": child,
                                      "seconds": 60})
    find_process(child)
    body = result(api, task_id)
    assert body["status"] == "timed_out", body
    assert wait_until(lambda: all(comm not in (name, child) for _, comm in host_processes()), 5)


# --- hostile functions end as failures, the worker lives on --------------------------------------


def test_a_memory_hog_fails_and_the_worker_lives_on(api, probe, worker):
    register(api, "hog", "def handle(event):\n    return len(bytearray(2 << 30))\n",
             memory_mb="128")
    body = run(api, "hog", {})
    assert body["status"] == "failed", body
    assert body["error_type"] == "MemoryError", body
    assert worker.poll() is None
    assert succeeded(run(api, probe, {"probe": "write", "paths": ["/tmp/x"]}))


def test_a_fork_bomb_fails_and_leaves_nothing_behind(api, user, private_worker):
    # Its own sandbox uid and a small process limit, so the bomb spends only its own budget.
    uid = 60000 + os.getpid() % 5000
    worker = private_worker(KUBEFUNCTION_SANDBOX_UID=str(uid), KUBEFUNCTION_SANDBOX_GID=str(uid),
                            KUBEFUNCTION_SANDBOX_NPROC="64")
    register(api, "bomb", """
        import os

        def handle(event):
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
    """, timeout_seconds="3")
    register(api, "after-bomb", "import os\ndef handle(event):\n    return os.getuid()\n")
    started = time.monotonic()
    body = run(api, "bomb", {})
    assert body["status"] in ("failed", "timed_out"), body
    assert time.monotonic() - started < 15
    assert wait_until(lambda: processes_of_uid(uid) == [], 5), processes_of_uid(uid)
    assert worker.poll() is None
    assert succeeded(run(api, "after-bomb", {})) == uid


# --- no sandbox ----------------------------------------------------------------------------------


def test_without_a_sandbox_non_staff_functions_are_refused(api, private_worker, settings,
                                                           django_user_model):
    private_worker(KUBEFUNCTION_SANDBOX_BWRAP="/nonexistent/bwrap")
    register(api, "no-box", "import os\ndef handle(event):\n    return os.getuid()\n")
    body = run(api, "no-box", {})
    assert body["status"] == "failed", body
    assert "refuses to run this function" in body["error"]
    assert "bubblewrap not found at /nonexistent/bwrap" in body["error"]
    assert "apt-get install bubblewrap" in body["error"] and "scripts/sandbox.sh" in body["error"]
    assert "KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED=true" in body["error"]
    # is_staff grants nothing (a view-only staff user must not get the worker's uid): refused.
    staff = APIClient()
    staff.force_authenticate(django_user_model.objects.create_user("dave", is_staff=True))
    register(staff, "staff-no-box", "import os\ndef handle(event):\n    return os.getuid()\n")
    assert "refuses to run this function" in run(staff, "staff-no-box", {})["error"]
    # A superuser's function still runs, unboxed (as the worker's uid).
    superuser = APIClient()
    superuser.force_authenticate(django_user_model.objects.create_superuser("carol"))
    register(superuser, "root-no-box", "import os\ndef handle(event):\n    return os.getuid()\n")
    assert succeeded(run(superuser, "root-no-box", {})) == os.geteuid()

    # The operator declares the machine trusted: every function runs, unboxed.
    private_worker.stop_all()
    private_worker(KUBEFUNCTION_SANDBOX_BWRAP="/nonexistent/bwrap",
                   KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED="true")
    assert succeeded(run(api, "no-box", {})) == os.geteuid()


def test_readyz_and_doctor_say_which_mode_is_in_force(client, settings, worker):
    body = client.get("/readyz?check=sandbox").json()
    assert body["checks"]["sandbox"]["detail"].startswith("local runtime: sandboxed (bubblewrap")
    out = StringIO()
    call_command("doctor", stdout=out)
    assert "sandbox   local runtime: sandboxed (" in out.getvalue()
    assert "; no network" in out.getvalue()
    settings.KUBEFUNCTION_LOCAL_ALLOW_NETWORK = True
    detail = client.get("/readyz?check=sandbox").json()["checks"]["sandbox"]["detail"]
    assert "network (slirp4netns) for functions asking for it" in detail, detail
    settings.KUBEFUNCTION_LOCAL_ALLOW_NETWORK = False

    settings.KUBEFUNCTION_SANDBOX_BWRAP = "/nonexistent/bwrap"
    response = client.get("/readyz?check=sandbox")
    assert response.status_code == 200  # superusers' functions still run
    detail = response.json()["checks"]["sandbox"]["detail"]
    assert detail.startswith("local runtime: refusing: bubblewrap not found"), detail
    assert "apt-get install bubblewrap" in detail

    settings.KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED = True
    detail = client.get("/readyz?check=sandbox").json()["checks"]["sandbox"]["detail"]
    assert detail.startswith("local runtime: unsandboxed-trusted: "), detail


def _host_private_address() -> str:
    """The host's own non-loopback address (where its services may also listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


# --- KUBEFUNCTION_SANDBOX_WRITABLE_DIRS ----------------------------------------------------------

SCRATCH = """
import os


def handle(event):
    with open(os.path.join(event["scratch"], "note"), "x") as handle:
        handle.write("from the box")
    try:
        open(os.path.join(event["beside"], "note"), "x").close()
        beside = "written"
    except OSError as exc:
        beside = exc.errno
    return {"uid": os.getuid(), "beside": beside, "listing": os.listdir(event["scratch"])}
"""


def test_a_writable_dir_is_bound_read_write_and_nothing_beside_it(api, private_worker,
                                                                   tmp_path):
    """The operator's scratch folder is writable from the box at its own path (the host sees
    the sandbox uid own what was written); its sibling folder stays out of reach."""
    scratch, beside = tmp_path / "scratch", tmp_path / "beside"
    for folder in (scratch, beside):
        folder.mkdir()
        folder.chmod(0o777)
    (scratch / "from-host").write_text("host")
    private_worker(KUBEFUNCTION_SANDBOX_WRITABLE_DIRS=str(scratch))
    register(api, "scratch", SCRATCH)
    body = succeeded(run(api, "scratch", {"scratch": str(scratch), "beside": str(beside)}))
    assert body["uid"] == settings.KUBEFUNCTION_SANDBOX_UID
    assert sorted(body["listing"]) == ["from-host", "note"]
    assert body["beside"] in (errno.ENOENT, errno.EROFS, errno.EACCES), body
    assert list(beside.iterdir()) == []
    assert (scratch / "note").read_text() == "from the box"
    assert (scratch / "note").stat().st_uid == settings.KUBEFUNCTION_SANDBOX_UID


def test_writable_dirs_that_expose_the_platform_are_refused(settings, tmp_path):
    work = Path(settings.KUBEFUNCTION_WORK_DIR)
    refused = ["/", "/etc", "/tmp", "/root", "/run", "/usr/lib", "/var/lib", str(ROOT),
               str(ROOT.parent), str(ROOT / "kubefunction"), str(settings.VAR_DIR), str(work),
               str(tmp_path / "missing"), "relative/marks"]
    work.mkdir(parents=True, exist_ok=True)
    for path in refused:
        settings.KUBEFUNCTION_SANDBOX_WRITABLE_DIRS = [path]
        mode, detail, box = sandbox.state()
        assert (mode, box) == (sandbox.REFUSING, None), (path, detail)
        assert f"KUBEFUNCTION_SANDBOX_WRITABLE_DIRS: {path!r}" in detail, detail
    settings.KUBEFUNCTION_SANDBOX_WRITABLE_DIRS = [str(tmp_path)]
    mode, detail, box = sandbox.state()
    assert mode == sandbox.SANDBOXED and box.writable == (str(tmp_path),), detail
    assert f"read-write {tmp_path}" in detail
