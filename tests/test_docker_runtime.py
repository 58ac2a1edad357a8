"""The docker runtime against the real engine, and the runner's container modes on their own.

The runner tests (request file, unix socket) need no engine. The rest run real containers and
are skipped, with how to enable them, when no Docker engine answers. One image holds every
function below (each test picks its handler), built once and reused across runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.errors import NotFound

from executions.runtimes.base import InvocationContext, RuntimeFailure, RuntimeUnavailable
from executions.runtimes.wire import FrameReader
from functions import runner
from functions.specs import FunctionSpec

RUNNER = Path(runner.__file__)
SKIP_MESSAGE = "no Docker engine: run `make services` to enable the Docker tests"
MIB = 1024 * 1024

FUNCTIONS = {
    "handler.py": """
        import os, secrets, socket, sys

        TOKEN = secrets.token_hex(8)  # one per process: tells containers apart

        def handle(event, context):
            print("got", event)
            return {"event": event, "execution_id": context.execution_id,
                    "function_name": context.function_name,
                    "function_version": context.function_version, "token": TOKEN}

        def identity(event):
            status = dict(line.split(":\\t", 1) for line in
                          open("/proc/self/status").read().splitlines() if ":\\t" in line)
            with open("/tmp/scratch.txt", "w") as scratch:
                scratch.write("written")
            return {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
                    "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"],
                    "tmp": open("/tmp/scratch.txt").read(), "cwd": os.getcwd(),
                    "hostname": socket.gethostname()}

        def environment(event):
            return dict(os.environ)

        def leave(event):
            sys.exit(3)
    """,
    "hostile.py": """
        import errno, os, socket, sys, time

        def loop(event):
            print("started")
            while True:
                pass

        def fork_bomb(event):
            while True:
                os.fork()

        def memory_hog(event):
            hoard = []
            while True:
                hoard.append(bytearray(8 * 1024 * 1024))

        def flood(event):
            line = "x" * 999
            for _ in range(25 * 1024):  # 25 MB of prints
                print(line)
            chunk = b"y" * (1024 * 1024)
            for _ in range(25):  # 25 MB at the file-descriptor level
                os.write(1, chunk)
            return "done"

        def big_output(event):
            return "z" * (50 * 1024 * 1024)

        def write_outside_tmp(event):
            found = {}
            for path in ("/opt/kubefunction/src/new.py", "/etc/new.conf", "/x",
                         "/run/kubefunction/x", "/tmp/x"):
                try:
                    with open(path, "a") as target:
                        target.write("x")
                    found[path] = "written"
                except OSError as exc:
                    found[path] = errno.errorcode[exc.errno]
            with open("/tmp/run.sh", "w") as script:
                script.write("#!/bin/sh\\necho escaped\\n")
            os.chmod("/tmp/run.sh", 0o755)
            try:
                os.execv("/tmp/run.sh", ["run.sh"])
            except OSError as exc:
                found["exec /tmp"] = errno.errorcode[exc.errno]
            return found

        def connect(event):
            socket.create_connection(("127.0.0.1", 6379), timeout=2)

        def network(event):
            found = {"interfaces": [name for _, name in socket.if_nameindex()]}
            for host, port in (("1.1.1.1", 53), ("10.0.0.1", 5432), ("172.17.0.1", 6379)):
                try:
                    socket.create_connection((host, port), timeout=2)
                    found[host] = "connected"
                except OSError as exc:
                    found[host] = errno.errorcode.get(exc.errno, str(exc))
            return found

        def fork_and_leave(event):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            return "forked"
    """,
    "script.py": """
        import json, sys
        event = json.load(sys.stdin)
        print("to the logs", file=sys.stderr)
        print(json.dumps({"doubled": event["n"] * 2, "text": "été ✓"}))
    """,
}


# --- the runner's container modes, without an engine ---------------------------------------------


def _request(nonce: str, event, deadline: float | None = None) -> bytes:
    return json.dumps({"nonce": nonce, "event": event, "context": {
        "execution_id": "exec-1", "deadline": deadline or time.time() + 30},
        "max_output_bytes": 4096, "max_log_bytes": 4096}).encode() + b"\n"


def _source(tmp_path: Path, code: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "handler.py").write_text(code)
    return src


def _runner(src: Path, *mode: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(RUNNER), "--root", str(src), "--handler",
         "handler.handle", *mode], env={"PATH": os.defpath, "LANG": "C.UTF-8"}, **popen)


def _frame(data: bytes, nonce: str) -> tuple[dict, str]:
    reader = FrameReader(nonce, 65536)
    reader.feed(data)
    return reader.result(), reader.stray.text()


def test_runner_reads_its_one_request_from_a_file(tmp_path):
    src = _source(tmp_path, "def handle(event):\n    print('hi')\n    return event * 2\n")
    request = tmp_path / "request.json"
    request.write_bytes(_request("n" * 16, 21))
    process = _runner(src, "--request-file", str(request), stdin=subprocess.DEVNULL,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=30)
    frame, stray = _frame(stdout, "n" * 16)
    assert (process.returncode, frame["output"], frame["logs"], stray) == (0, 42, "hi\n", "")


def test_runner_request_file_problems(tmp_path):
    src = _source(tmp_path, "def handle(event):\n    return event\n")
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    for path, message in ((empty, b"holds no request"), (tmp_path / "missing.json",
                                                         b"cannot read the request")):
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(RUNNER), "--root", str(src), "--request-file",
             str(path)], capture_output=True, timeout=30)
        assert (done.returncode, done.stdout) == (2, b"")
        assert message in done.stderr
    both = subprocess.run([sys.executable, "-I", "-S", str(RUNNER), "--root", str(src),
                           "--serve", "--socket", "x"], capture_output=True, timeout=30)
    assert both.returncode == 2
    assert b"exclude each other" in both.stderr


def _serve(listener: socket.socket, request: bytes, timeout: float = 30) -> bytes:
    """Accept the runner's connection, send one request, read until it hangs up."""
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(timeout)
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


@contextlib.contextmanager
def _socket_runner(tmp_path: Path, code: str) -> Iterator[tuple[socket.socket, subprocess.Popen]]:
    """A runner in socket mode on `code`, connecting to the yielded listener; killed after."""
    src = _source(tmp_path, code)
    path = str(tmp_path / "runner.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    process = _runner(src, "--socket", path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    try:
        yield listener, process
    finally:
        process.kill()
        process.communicate()
        listener.close()


def test_runner_socket_mode_serves_one_request_per_connection(tmp_path):
    with _socket_runner(tmp_path, """
import os

def handle(event):
    print("printed")
    os.write(1, b"fd one\\n")
    os.write(2, b"fd two\\n")
    if event == "exit":
        raise SystemExit(5)
    return {"pid": os.getpid(), "event": event}
""") as (listener, process):
        first, stray = _frame(_serve(listener, _request("a" * 16, "été")), "a" * 16)
        assert first["output"]["event"] == "été"
        assert first["logs"] == "printed\n"
        assert stray == "fd one\nfd two\n"  # fd-level output travels on the connection
        second, _ = _frame(_serve(listener, _request("b" * 16, 2)), "b" * 16)
        assert second["output"] == {"pid": first["output"]["pid"], "event": 2}  # warm
        assert "retire" not in second  # not in a container of its own: never judged
        third, _ = _frame(_serve(listener, _request("c" * 16, "exit")), "c" * 16)
        assert (third["error_type"], third["exit_code"]) == ("SystemExit", 5)  # host retires
        listener.settimeout(30)
        conn, _ = listener.accept()  # the runner is back, idle, waiting for a request
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        conn.close()


def test_runner_socket_mode_ends_when_the_host_stops_listening(tmp_path):
    with _socket_runner(tmp_path, "def handle(event):\n    return event\n") as (listener, process):
        frame, _ = _frame(_serve(listener, _request("d" * 16, 7)), "d" * 16)
        assert frame["output"] == 7
        listener.settimeout(30)
        conn, _ = listener.accept()
        conn.close()  # the host hangs up on an idle runner: it ends
        assert process.wait(timeout=10) == 0


def test_an_engine_that_does_not_answer_is_transient(settings, tmp_path):
    from executions.runtimes.docker.runtime import DockerRuntime

    settings.KUBEFUNCTION_WORK_DIR = tmp_path / "work"
    settings.KUBEFUNCTION_DOCKER_URL = f"unix://{tmp_path}/no-engine.sock"
    runtime = DockerRuntime()
    with pytest.raises(RuntimeUnavailable, match="the Docker engine did not answer"):
        runtime.invoke(spec_for("127.0.0.1:5000/kubefunction/x@sha256:" + "0" * 64), None,
                       context())
    ok, detail = runtime.health()
    assert not ok
    assert detail.startswith("docker runtime: the Docker engine did not answer (connect)")
    runtime.close()


# --- the engine ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception:  # noqa: BLE001 - any failure to reach the engine means: no engine
        pytest.skip(SKIP_MESSAGE)
    from django.conf import settings

    try:
        client.images.get(settings.KUBEFUNCTION_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the base image {settings.KUBEFUNCTION_BASE_IMAGE} is missing: run "
                    "`make services` to enable the Docker tests")
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(engine):
    from tests.docker_images import function_image

    return function_image(engine, "runtime-tests", FUNCTIONS)


def _mine(engine) -> list[dict]:
    from executions.runtimes.docker.container import MANAGED_LABEL, owner_id

    return engine.api.containers(all=True, filters={
        "label": [f"{MANAGED_LABEL}=true", f"io.kubefunction.owner={owner_id()}"]})


@pytest.fixture
def make_runtime(engine, settings, tmp_path):
    """Builds DockerRuntimes (warm pool on or off); afterwards, none of their containers is
    left, running or not."""
    from executions.runtimes.docker.runtime import DockerRuntime

    settings.KUBEFUNCTION_WORK_DIR = tmp_path / "work"
    settings.KUBEFUNCTION_MAX_OUTPUT_BYTES = 64 * 1024
    settings.KUBEFUNCTION_MAX_LOG_BYTES = 16 * 1024
    settings.KUBEFUNCTION_DOCKER_URL = ""
    settings.KUBEFUNCTION_DOCKER_PIDS_LIMIT = 64
    settings.KUBEFUNCTION_DOCKER_CPUS = 1.0
    settings.KUBEFUNCTION_DOCKER_WARM_POOL_PER_VERSION = 2
    settings.KUBEFUNCTION_DOCKER_WARM_IDLE_SECONDS = 300
    built = []

    def make(warm: bool) -> DockerRuntime:
        settings.KUBEFUNCTION_DOCKER_WARM_POOL_SIZE = 4 if warm else 0
        runtime = DockerRuntime()
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        runtime.close()
    assert _mine(engine) == []
    assert list((tmp_path / "work" / "docker").glob("*")) == []  # host folders removed too


@pytest.fixture(params=["one-shot", "warm"])
def runtime(request, make_runtime):
    return make_runtime(request.param == "warm")


def spec_for(image: str, handler: str = "handler.handle", **fields) -> FunctionSpec:
    return FunctionSpec(
        version_id=fields.pop("version_id", 1), function_name="demo", version_number=3,
        sha256=hashlib.sha256(image.encode()).hexdigest(), source_name="source.zip",
        read_source=lambda: b"", handler=handler, image=image, **fields)


def context(seconds: float = 20, execution_id: str = "exec-1") -> InvocationContext:
    return InvocationContext(execution_id=execution_id, task_id="task-1",
                             deadline=time.time() + seconds)


def assert_healthy(runtime, image: str) -> None:
    """The engine answers and a plain function still runs."""
    ok, detail = runtime.health()
    assert ok, detail
    outcome = runtime.invoke(spec_for(image, version_id=99), "after", context())
    assert (outcome.status, outcome.output["event"]) == ("succeeded", "after")


def test_handler_result_logs_and_unicode(runtime, image):
    outcome = runtime.invoke(spec_for(image), {"text": "héllo ✓ 🎉"}, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.output["event"] == {"text": "héllo ✓ 🎉"}
    assert (outcome.output["execution_id"], outcome.output["function_name"],
            outcome.output["function_version"]) == ("exec-1", "demo", 3)
    assert outcome.logs == "got {'text': 'héllo ✓ 🎉'}\n"
    assert (outcome.exit_code, outcome.cold, outcome.error_type) == (0, True, "")
    assert 0 < outcome.init_seconds < 30  # create + start the container, import the handler
    assert outcome.cpu_seconds is not None and 0 <= outcome.cpu_seconds < 1
    assert 4 * MIB < outcome.peak_memory_bytes < 64 * MIB


def test_script_mode(runtime, image):
    outcome = runtime.invoke(spec_for(image, "script", mode="script"), {"n": 21}, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {"doubled": 42, "text": "été ✓"}
    assert outcome.logs == "to the logs\n"


def test_warm_container_is_reused(make_runtime, engine, image):
    runtime = make_runtime(warm=True)
    spec = spec_for(image)
    first = runtime.invoke(spec, 1, context())
    second = runtime.invoke(spec, 2, context())
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert (first.cold, second.cold) == (True, False)
    # the cold start: container created → its runner connected → handler imported
    assert 0 < first.init_seconds < 30 and second.init_seconds is None
    assert first.output["token"] == second.output["token"]  # the same process answered
    assert second.logs == "got 2\n"
    [container] = _mine(engine)
    assert container["State"] == "running"
    labels = container["Labels"]
    assert (labels["io.kubefunction.function"], labels["io.kubefunction.version"]) == \
        ("demo", "3")
    assert "io.kubefunction.pool" in labels
    assert runtime.warm_count == 1
    runtime.release(spec)
    assert runtime.warm_count == 0
    assert _mine(engine) == []


def test_warm_container_that_died_idle_is_replaced(make_runtime, engine, image):
    runtime = make_runtime(warm=True)
    spec = spec_for(image)
    first = runtime.invoke(spec, 1, context())
    [container] = _mine(engine)
    engine.api.kill(container["Id"])
    engine.api.wait(container["Id"], timeout=10)
    second = runtime.invoke(spec, 2, context())
    assert (second.status, second.cold) == ("succeeded", True)
    assert second.output["token"] != first.output["token"]


def test_a_retiring_error_is_not_pooled(make_runtime, engine, image):
    runtime = make_runtime(warm=True)
    outcome = runtime.invoke(spec_for(image, "handler.leave"), None, context())
    assert (outcome.status, outcome.error_type, outcome.exit_code) == ("failed", "SystemExit", 3)
    assert runtime.warm_count == 0
    assert _mine(engine) == []


def test_function_runs_unprivileged_with_a_writable_tmp(runtime, image):
    outcome = runtime.invoke(spec_for(image, "handler.identity"), None, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {"uid": 10001, "gid": 10001, "euid": 10001,
                              "cap_eff": "0000000000000000", "no_new_privs": "1",
                              "tmp": "written", "cwd": "/opt/kubefunction/src",
                              "hostname": "kubefunction"}


def test_environment_is_only_the_functions(runtime, image, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/kubefunction")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "platform-secret")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    spec = spec_for(image, "handler.environment", env={"GREETING": "hello", "LANG": "x"})
    outcome = runtime.invoke(spec, None, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {
        "GREETING": "hello", "LANG": "C.UTF-8", "HOME": "/", "HOSTNAME": "kubefunction",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
    }


# --- hostile functions: each fails its own invocation only -----------------------------------


def test_infinite_loop_times_out_and_its_container_goes(runtime, engine, image):
    started = time.monotonic()
    outcome = runtime.invoke(spec_for(image, "hostile.loop", timeout_seconds=2), None,
                             context(seconds=2))
    elapsed = time.monotonic() - started
    assert (outcome.status, outcome.error_type, outcome.exit_code) == ("timed_out", "Timeout",
                                                                       None)
    assert outcome.error == "function did not finish within 2 s"
    assert outcome.logs == "started\n"  # saved by the runner just before the deadline
    assert elapsed < 2 + 3
    assert outcome.cpu_seconds is not None and outcome.cpu_seconds > 1.0  # from the cgroup
    assert runtime.warm_count == 0
    assert _mine(engine) == []
    assert_healthy(runtime, image)


def test_fork_bomb_hits_the_pids_limit(runtime, engine, image):
    # With enough memory for 64 forked interpreters the pids limit is what stops it (with the
    # default 256 MiB, the memory limit comes first: contained all the same).
    started = time.monotonic()
    outcome = runtime.invoke(spec_for(image, "hostile.fork_bomb", timeout_seconds=20,
                                      memory_mb=1024), None, context(seconds=20))
    assert outcome.status == "failed", outcome
    assert outcome.error_type == "BlockingIOError"
    assert "Resource temporarily unavailable" in outcome.error
    assert time.monotonic() - started < 15
    assert runtime.warm_count == 0  # it left processes behind: retired
    assert _mine(engine) == []
    assert_healthy(runtime, image)


def test_memory_hog_is_killed_and_reported(runtime, engine, image):
    outcome = runtime.invoke(spec_for(image, "hostile.memory_hog", memory_mb=64), None,
                             context())
    assert (outcome.status, outcome.error_type) == ("failed", "MemoryError")
    assert outcome.error == \
        "the function's container was killed because it exceeded its memory limit of 64 MiB"
    assert outcome.peak_memory_bytes == 64 * MIB
    assert _mine(engine) == []
    assert_healthy(runtime, image)


def test_fifty_megabytes_of_output_are_truncated(runtime, image):
    started = time.monotonic()
    outcome = runtime.invoke(spec_for(image, "hostile.flood"), None, context(seconds=60))
    assert outcome.status == "succeeded", outcome
    assert outcome.output == "done"
    assert outcome.logs_truncated is True
    # Stray (file-descriptor level) output comes first, as in the local runtime.
    assert outcome.logs == "y" * (16 * 1024)
    assert time.monotonic() - started < 30
    big = runtime.invoke(spec_for(image, "hostile.big_output"), None, context(seconds=60))
    assert (big.status, big.error_type, big.output_truncated) == ("failed", "OutputTooLarge",
                                                                 True)
    assert big.output == '"' + "z" * (64 * 1024 - 1)  # the JSON text's first 64 KiB
    assert big.error == f"output is {50 * MIB + 2} bytes of JSON; the limit is {64 * 1024} bytes"


def test_the_file_system_is_read_only_but_tmp(runtime, image):
    outcome = runtime.invoke(spec_for(image, "hostile.write_outside_tmp"), None, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.output == {
        "/opt/kubefunction/src/new.py": "EROFS", "/etc/new.conf": "EROFS", "/x": "EROFS",
        "/run/kubefunction/x": "EROFS", "/tmp/x": "written", "exec /tmp": "EACCES",
    }


def test_no_network(runtime, engine, image):
    outcome = runtime.invoke(spec_for(image, "hostile.connect"), None, context())
    assert (outcome.status, outcome.error_type) == ("failed", "ConnectionRefusedError")
    found = runtime.invoke(spec_for(image, "hostile.network"), None, context())
    assert found.output == {"interfaces": ["lo"], "1.1.1.1": "ENETUNREACH",
                            "10.0.0.1": "ENETUNREACH", "172.17.0.1": "ENETUNREACH"}
    assert_healthy(runtime, image)


def test_a_function_that_leaves_processes_is_not_reused(make_runtime, engine, image):
    runtime = make_runtime(warm=True)
    outcome = runtime.invoke(spec_for(image, "hostile.fork_and_leave"), None, context())
    assert (outcome.status, outcome.output) == ("succeeded", "forked")
    assert runtime.warm_count == 0
    assert _mine(engine) == []


# --- images, errors, health, orphans -----------------------------------------------------------


def test_missing_images_fail_clearly(make_runtime, image):
    runtime = make_runtime(warm=False)
    with pytest.raises(RuntimeFailure, match="has no image yet"):
        runtime.invoke(spec_for(""), None, context())
    missing = "127.0.0.1:5000/kubefunction-test/missing@sha256:" + "0" * 64
    with pytest.raises(RuntimeFailure, match="kubefunction-test/missing"):
        runtime.invoke(spec_for(missing), None, context())
    down = "127.0.0.1:9/kubefunction-test/missing@sha256:" + "0" * 64  # no registry there
    with pytest.raises(RuntimeUnavailable, match="connection refused"):
        runtime.invoke(spec_for(down), None, context())
    assert runtime.needs_prepare(spec_for(missing)) is True
    assert runtime.needs_prepare(spec_for(image)) is False
    assert runtime.prepare(spec_for(image)).ok is True


def test_the_image_is_pulled_back_from_the_registry(make_runtime, engine):
    from tests.docker_images import function_image

    tag = function_image(engine, "pulled", {"handler.py": "def handle(e):\n    return 'pulled'\n"})
    repository = "127.0.0.1:5000/kubefunction-test/pulled"
    engine.images.get(tag).tag(repository, "latest")
    try:
        for line in engine.api.push(repository, "latest", stream=True, decode=True):
            if "error" in line:
                pytest.skip(f"the registry on 127.0.0.1:5000 refused the push: {line['error']}")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no registry on 127.0.0.1:5000 ({exc}): run `make services`")
    digest = engine.images.get_registry_data(f"{repository}:latest").id
    reference = f"{repository}@{digest}"
    engine.images.remove(image=engine.images.get(tag).id, force=True)  # every tag and digest
    runtime = make_runtime(warm=False)
    spec = spec_for(reference)
    try:
        assert runtime.needs_prepare(spec) is True
        outcome = runtime.invoke(spec, None, context(seconds=60))
        assert (outcome.status, outcome.output) == ("succeeded", "pulled")
        assert runtime.needs_prepare(spec) is False
    finally:
        runtime.close()
        with contextlib.suppress(NotFound):
            engine.images.remove(image=reference, force=True)


def test_health(make_runtime, settings):
    ok, detail = make_runtime(warm=True).health()
    assert ok, detail
    assert detail.startswith("docker runtime: Docker engine ")
    assert f"; base image {settings.KUBEFUNCTION_BASE_IMAGE} present; 0 warm containers" in detail


def test_orphans_of_dead_workers_are_removed(make_runtime, engine, image, settings):
    from executions.runtimes.docker.container import MANAGED_LABEL, OWNER_LABEL
    from executions.runtimes.docker.runtime import cleanup_orphans, folders_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    made = {}
    for name, pid in (("dead", dead.pid), ("alive", os.getpid())):
        made[name] = engine.api.create_container(
            image, ["sleep", "60"], labels={MANAGED_LABEL: "true",
                                            OWNER_LABEL: f"{host}:{pid}"},
            host_config=engine.api.create_host_config(network_mode="none"))["Id"]
        engine.api.start(made[name])
    leftover = folders_dir() / f"{host}-{dead.pid}-abcdefgh"
    leftover.mkdir(parents=True)
    try:
        assert cleanup_orphans(engine) == 1
        left = {c["Id"] for c in engine.api.containers(
            all=True, filters={"label": f"{MANAGED_LABEL}=true"})}
        assert made["dead"] not in left
        assert made["alive"] in left
        assert not leftover.exists()
    finally:
        for container_id in made.values():
            with contextlib.suppress(NotFound):
                engine.api.remove_container(container_id, force=True)
    # A runtime cleans up when it first reaches the engine.
    orphan = engine.api.create_container(
        image, ["sleep", "60"], labels={MANAGED_LABEL: "true", OWNER_LABEL: f"{host}:{dead.pid}"},
        host_config=engine.api.create_host_config(network_mode="none"))["Id"]
    make_runtime(warm=False).client()
    assert orphan not in {c["Id"] for c in engine.api.containers(all=True)}
