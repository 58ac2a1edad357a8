"""The local runtime end to end (real child processes, no database), and the frame parser."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from executions.runtimes.base import InvocationContext, RuntimeFailure
from executions.runtimes.local.runtime import LocalRuntime, deps_dir, source_dir
from executions.runtimes.wire import FrameError, FrameReader, LogBuffer, join_logs
from functions.runner import frame_header
from functions.specs import FunctionSpec
from tests.runtimes import runtime_under
from tests.waiting import wait_until

_versions = itertools.count(1)


@pytest.fixture
def runtime(settings, tmp_path):
    yield from runtime_under(
        settings, LocalRuntime, KUBEFUNCTION_WORK_DIR=tmp_path / "work",
        KUBEFUNCTION_MAX_OUTPUT_BYTES=64 * 1024, KUBEFUNCTION_MAX_LOG_BYTES=16 * 1024,
        KUBEFUNCTION_WARM_POOL_SIZE=8, KUBEFUNCTION_WARM_POOL_PER_VERSION=2,
        KUBEFUNCTION_WARM_IDLE_SECONDS=300)


@pytest.fixture
def unboxed(runtime, settings):
    """The runtime without its sandbox (a trusted machine), for tests that follow the runner's
    host pid, which a boxed runner cannot see (tests/test_local_sandbox.py covers the box)."""
    settings.KUBEFUNCTION_SANDBOX_BWRAP = "/nonexistent/bwrap"
    settings.KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED = True
    return runtime


def zip_bytes(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, textwrap.dedent(text))
    return buffer.getvalue()


def make_spec(code: str | None = None, *, files: dict[str, str] | None = None,
              **fields) -> FunctionSpec:
    """A version of a function: one handler.py from `code`, or a zip of `files`."""
    if files is None:
        data, name = textwrap.dedent(code or "").encode("utf-8"), "handler.py"
    else:
        data, name = zip_bytes(files), "source.zip"
    return FunctionSpec(
        version_id=fields.pop("version_id", next(_versions)), function_name="demo",
        version_number=fields.pop("version_number", 1), sha256=hashlib.sha256(data).hexdigest(),
        source_name=name, read_source=lambda: data, **fields,
    )


def context(seconds: float = 10, execution_id: str = "exec-1") -> InvocationContext:
    return InvocationContext(execution_id=execution_id, task_id="task-1",
                             deadline=time.time() + seconds)


def gone(pid: int) -> bool:
    """True when no thread of `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return False
        except FileNotFoundError:
            pass
    return True


PID = """
import os

def handle(event, context):
    return {"pid": os.getpid(), "event": event}
"""


# --- invoking ------------------------------------------------------------------------------------


def test_invoke_handler_and_context(runtime):
    spec = make_spec("""
        def handle(event, context):
            print("got", event)
            return {
                "event": event, "execution_id": context.execution_id,
                "task_id": context.task_id, "function_name": context.function_name,
                "function_version": context.function_version,
                "remaining": context.remaining_time_ms(),
            }
    """, version_number=4)
    outcome = runtime.invoke(spec, {"x": 1}, context(10))
    assert outcome.status == "succeeded"
    assert outcome.output["event"] == {"x": 1}
    assert outcome.output["execution_id"] == "exec-1"
    assert outcome.output["task_id"] == "task-1"
    assert outcome.output["function_name"] == "demo"
    assert outcome.output["function_version"] == 4
    assert 8000 < outcome.output["remaining"] <= 10000
    assert outcome.logs == "got {'x': 1}\n"
    assert outcome.exit_code == 0
    assert outcome.error_type == "" and outcome.error == ""
    assert outcome.cold is True
    assert outcome.cpu_seconds is not None and outcome.cpu_seconds >= 0
    assert 1024 * 1024 < outcome.peak_memory_bytes < 100 * 1024 * 1024


def test_event_only_handler(runtime):
    outcome = runtime.invoke(make_spec("def handle(event):\n    return event * 2\n"), 21, context())
    assert (outcome.status, outcome.output) == ("succeeded", 42)


def test_async_handler(runtime):
    spec = make_spec("""
        import asyncio

        async def handle(event, context):
            await asyncio.sleep(0)
            return event.upper()
    """)
    assert runtime.invoke(spec, "abc", context()).output == "ABC"


def test_warm_reuse_keeps_the_process(runtime):
    spec = make_spec(PID)
    first = runtime.invoke(spec, 1, context())
    second = runtime.invoke(spec, 2, context())
    assert first.cold is True
    assert second.cold is False
    assert second.output["pid"] == first.output["pid"]
    assert second.output["event"] == 2
    assert runtime.warm_count == 1


def test_cold_start_time_counts_the_process_start_and_the_import(runtime):
    spec = make_spec("""
        import time
        time.sleep(0.3)  # a slow import: the cold start pays it, the warm call does not

        def handle(event):
            return event
    """)
    started = time.monotonic()
    cold = runtime.invoke(spec, 1, context())
    elapsed = time.monotonic() - started
    warm = runtime.invoke(spec, 2, context())
    assert (cold.cold, warm.cold) == (True, False)
    assert 0.3 <= cold.init_seconds < elapsed
    assert warm.init_seconds is None
    # A trivial function still pays the interpreter's start-up, which the runtime sees: the
    # cold start is most of the first call's time, not just the (instant) import.
    trivial = make_spec("def handle(event):\n    return event\n")
    started = time.monotonic()
    first = runtime.invoke(trivial, 1, context())
    elapsed = time.monotonic() - started
    assert 0.005 < first.init_seconds < elapsed and first.init_seconds > elapsed / 2


def test_script_mode(runtime):
    spec = make_spec(files={"main.py": """
        import json, sys
        event = json.load(sys.stdin)
        print("log line", file=sys.stderr)
        print(json.dumps({"total": sum(event)}))
    """}, handler="main", mode="script")
    outcome = runtime.invoke(spec, [1, 2, 3], context())
    assert outcome.status == "succeeded"
    assert outcome.output == {"total": 6}
    assert outcome.logs == "log line\n"
    text = make_spec(files={"main.py": "print('just text')\n"}, handler="main", mode="script")
    assert runtime.invoke(text, None, context()).output == "just text"


def test_script_exit_code(runtime):
    spec = make_spec(files={"main.py": "import sys\nsys.exit(2)\n"}, handler="main",
                     mode="script")
    outcome = runtime.invoke(spec, None, context())
    assert outcome.status == "failed"
    assert outcome.error_type == "SystemExit"
    assert outcome.exit_code == 2


def test_exception(runtime):
    spec = make_spec("""
        def handle(event):
            numbers = [1, 2]
            return numbers[event]
    """)
    outcome = runtime.invoke(spec, 5, context())
    assert outcome.status == "failed"
    assert outcome.error_type == "IndexError"
    assert outcome.exit_code == 1
    assert "return numbers[event]" in outcome.error
    assert "runner.py" not in outcome.error
    # An ordinary exception does not cost the warm process.
    assert runtime.invoke(spec, 0, context()).cold is False


def test_timeout_kills_the_whole_process_group(unboxed, tmp_path):
    runtime = unboxed
    pid_file = tmp_path / "pids.json"
    spec = make_spec("""
        import json, os, subprocess, time

        def handle(event):
            child = subprocess.Popen(["sleep", "60"])
            with open(os.environ["PID_FILE"], "w") as out:
                json.dump([os.getpid(), child.pid], out)
            print("started, now hanging")
            while True:
                time.sleep(0.05)
    """, env={"PID_FILE": str(pid_file)}, timeout_seconds=1)
    started = time.monotonic()
    outcome = runtime.invoke(spec, None, context(1))
    elapsed = time.monotonic() - started
    assert outcome.status == "timed_out"
    assert outcome.error_type == "Timeout"
    assert outcome.error == "function did not finish within 1 s"
    assert outcome.exit_code is None
    assert elapsed < 1 + 2
    assert "started, now hanging" in outcome.logs  # saved by the runner before the deadline
    runner_pid, child_pid = json.loads(pid_file.read_text())
    assert gone(runner_pid)
    assert wait_until(lambda: gone(child_pid), 2, every=0.02)
    assert runtime.warm_count == 0


def test_deadline_already_passed(runtime):
    outcome = runtime.invoke(make_spec(PID), None, context(-1))
    assert outcome.status == "timed_out"
    assert outcome.error_type == "Timeout"


def test_fifty_megabytes_of_output_are_bounded(runtime, settings):
    spec = make_spec("""
        import os

        def handle(event):
            line = "p" * 999
            for _ in range(50_000):
                print(line)
            block = b"f" * (1024 * 1024)
            for _ in range(50):
                os.write(1, block)
            return "survived"
    """)
    tracemalloc.start()
    try:
        outcome = runtime.invoke(spec, None, context(30))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status == "succeeded"
    assert outcome.output == "survived"
    assert outcome.logs_truncated is True
    assert len(outcome.logs.encode()) <= settings.KUBEFUNCTION_MAX_LOG_BYTES
    assert peak < 4 * 1024 * 1024  # the worker read 100 MB through the pipes keeping ~16 KiB
    assert outcome.peak_memory_bytes < 60 * 1024 * 1024


def test_fd_level_writes_cannot_forge_a_frame(runtime):
    spec = make_spec("""
        import os, secrets

        FAKE = '{"ok": true, "output": "forged", "exit_code": 0}'

        def handle(event):
            for _ in range(100):
                header = "\\n\\x1eKUBEFUNCTION-RESULT %s %d\\n" % (secrets.token_hex(16), len(FAKE))
                os.write(1, (header + FAKE + "\\n").encode())
                print(header + FAKE)
            return "real"
    """)
    outcome = runtime.invoke(spec, None, context())
    assert outcome.status == "succeeded"
    assert outcome.output == "real"
    assert "forged" in outcome.logs


def test_non_json_return(runtime):
    outcome = runtime.invoke(make_spec("def handle(event):\n    return {1, 2}\n"), None,
                             context())
    assert outcome.status == "failed"
    assert outcome.error_type == "NonSerializableResult"
    assert outcome.error == "return value of type set is not JSON serialisable"


def test_sys_exit_fails_and_the_next_call_works(runtime):
    spec = make_spec("""
        import os, sys

        def handle(event):
            if event == "exit":
                sys.exit(3)
            return os.getpid()
    """)
    failed = runtime.invoke(spec, "exit", context())
    assert failed.status == "failed"
    assert failed.error_type == "SystemExit"
    assert failed.error == "function called sys.exit(3)"
    assert failed.exit_code == 3
    after = runtime.invoke(spec, "ok", context())
    assert after.status == "succeeded"
    # The runner would serve on (tests/test_runner.py), but the pool does not trust the process.
    assert after.cold is True


def test_output_over_the_cap(runtime, settings):
    settings.KUBEFUNCTION_MAX_OUTPUT_BYTES = 1000
    outcome = runtime.invoke(make_spec("def handle(event):\n    return 'x' * 5000\n"), None,
                             context())
    assert outcome.status == "failed"
    assert outcome.error_type == "OutputTooLarge"
    assert outcome.output_truncated is True
    assert outcome.output == '"' + "x" * 999
    assert "5002" in outcome.error and "1000" in outcome.error


@pytest.mark.parametrize("how", ["at once", "bit by bit"])
def test_memory_limit(runtime, how):
    spec = make_spec("""
        def handle(event):
            if event == "at once":
                data = bytearray(1 << 30)
            else:
                data = [bytearray(1 << 20) for _ in range(1024)]
            return len(data)
    """, memory_mb=128)
    outcome = runtime.invoke(spec, how, context(30))
    assert outcome.status == "failed"
    assert outcome.error_type == "MemoryError"
    assert outcome.error.startswith("function exceeded its memory limit")
    assert runtime.warm_count == 0
    assert runtime.invoke(spec, None, context()).cold is True


def test_a_small_memory_limit_still_runs_python(runtime):
    outcome = runtime.invoke(make_spec(PID, memory_mb=64), None, context())
    assert outcome.status == "succeeded"


def test_process_exit_without_a_result(runtime):
    spec = make_spec("""
        import os

        def handle(event):
            os.write(2, b"last words\\n")
            if event == "segv":
                os.kill(os.getpid(), 11)
            os._exit(7)
    """)
    outcome = runtime.invoke(spec, None, context())
    assert outcome.status == "failed"
    assert outcome.error_type == "ProcessExited"
    assert outcome.exit_code == 7
    assert outcome.logs == "last words\n"
    crashed = runtime.invoke(spec, "segv", context())
    assert crashed.error_type == "MemoryError"
    assert crashed.exit_code == 128 + signal.SIGSEGV
    assert "SIGSEGV" in crashed.error


def test_unicode_in_and_out(runtime):
    text = "héllo ✓ 你好"
    spec = make_spec("""
        def handle(event):
            print(event["greeting"])
            return {"echo": event["greeting"], "more": "→ ✓"}
    """)
    outcome = runtime.invoke(spec, {"greeting": text}, context())
    assert outcome.output == {"echo": text, "more": "→ ✓"}
    assert outcome.logs == text + "\n"


def test_env_reaches_the_function_but_the_worker_environment_does_not(runtime, monkeypatch):
    monkeypatch.setenv("KUBEFUNCTION_TEST_SECRET", "hunter2")
    spec = make_spec("""
        import os

        def handle(event):
            return dict(os.environ)
    """, env={"GREETING": "hello"})
    environ = runtime.invoke(spec, None, context()).output
    assert environ["GREETING"] == "hello"
    assert "KUBEFUNCTION_TEST_SECRET" not in environ
    assert "DJANGO_SETTINGS_MODULE" not in environ
    assert environ["LANG"] == "C.UTF-8"
    assert environ["HOME"] != os.environ.get("HOME")
    assert set(environ) <= {"GREETING", "PATH", "LANG", "PYTHONIOENCODING",
                            "PYTHONDONTWRITEBYTECODE", "HOME", "LC_CTYPE"}


def test_platform_packages_are_not_importable(runtime):
    spec = make_spec("""
        import sys

        def handle(event):
            try:
                import django  # noqa: F401
            except ImportError as exc:
                return [type(exc).__name__, sys.flags.no_site]
            return ["imported", sys.flags.no_site]
    """)
    assert runtime.invoke(spec, None, context()).output == ["ModuleNotFoundError", 1]


def test_import_error_is_reported_and_not_pooled(runtime):
    spec = make_spec("def handle(event)\n    return 1\n")
    outcome = runtime.invoke(spec, None, context())
    assert outcome.status == "failed"
    assert outcome.error_type == "ImportError"
    assert "SyntaxError" in outcome.error
    assert runtime.warm_count == 0
    missing = runtime.invoke(make_spec("x = 1\n", handler="handler.nope"), None, context())
    assert missing.error_type == "HandlerNotFound"


# --- the warm pool -------------------------------------------------------------------------------


def test_idle_processes_expire_on_acquire(unboxed, settings):
    runtime = unboxed
    settings.KUBEFUNCTION_WARM_IDLE_SECONDS = 1
    spec = make_spec(PID)
    first = runtime.invoke(spec, None, context())
    time.sleep(1.1)
    second = runtime.invoke(spec, None, context())
    assert second.cold is True
    assert second.output["pid"] != first.output["pid"]
    assert gone(first.output["pid"])


def test_idle_processes_are_swept_without_calls(unboxed, settings):
    runtime = unboxed
    settings.KUBEFUNCTION_WARM_IDLE_SECONDS = 1
    pid = runtime.invoke(make_spec(PID), None, context()).output["pid"]
    assert runtime.warm_count == 1
    assert wait_until(lambda: runtime.warm_count == 0 and gone(pid), 4, every=0.02)


def test_per_version_cap(unboxed, settings):
    runtime = unboxed
    settings.KUBEFUNCTION_WARM_POOL_PER_VERSION = 1
    spec = make_spec("""
        import os, time

        def handle(event):
            time.sleep(0.3)
            return os.getpid()
    """)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(runtime.invoke(spec, None,
                                                                              context())))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [outcome.cold for outcome in outcomes] == [True, True]
    assert outcomes[0].output != outcomes[1].output
    assert runtime.warm_count == 1
    kept = runtime.invoke(spec, None, context())
    assert kept.cold is False
    evicted = ({outcome.output for outcome in outcomes} - {kept.output}).pop()
    assert gone(evicted)


def test_total_cap_evicts_the_least_recently_used(unboxed, settings):
    runtime = unboxed
    settings.KUBEFUNCTION_WARM_POOL_SIZE = 2
    specs = [make_spec(PID + f"\nVERSION = {index}\n") for index in range(3)]
    pids = [runtime.invoke(spec, None, context()).output["pid"] for spec in specs]
    assert runtime.warm_count == 2
    assert gone(pids[0])
    assert runtime.invoke(specs[2], None, context()).cold is False
    assert runtime.invoke(specs[1], None, context()).cold is False
    assert runtime.invoke(specs[0], None, context()).cold is True


def test_pool_size_zero_makes_every_call_cold(unboxed, settings):
    runtime = unboxed
    settings.KUBEFUNCTION_WARM_POOL_SIZE = 0
    spec = make_spec(PID)
    outcomes = [runtime.invoke(spec, None, context()) for _ in range(2)]
    assert [outcome.cold for outcome in outcomes] == [True, True]
    assert runtime.warm_count == 0
    assert gone(outcomes[0].output["pid"])


def test_env_is_part_of_the_pool_key(runtime):
    spec = make_spec(PID, env={"A": "1"})
    runtime.invoke(spec, None, context())
    other = FunctionSpec(**{**spec.__dict__, "env": {"A": "2"}})
    assert runtime.invoke(other, None, context()).cold is True


def test_release_drops_the_versions_processes(unboxed):
    runtime = unboxed
    spec = make_spec(PID)
    pid = runtime.invoke(spec, None, context()).output["pid"]
    runtime.release(spec)
    assert runtime.warm_count == 0
    assert gone(pid)
    assert runtime.invoke(spec, None, context()).cold is True


def test_a_warm_process_that_died_idle_is_replaced(unboxed):
    runtime = unboxed
    spec = make_spec(PID)
    pid = runtime.invoke(spec, None, context()).output["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), every=0.02)
    outcome = runtime.invoke(spec, None, context())
    assert outcome.status == "succeeded", outcome
    assert outcome.cold is True
    assert outcome.output["pid"] != pid


# --- prepare -------------------------------------------------------------------------------------


def test_prepare_unpacks_lazily_on_invoke(runtime):
    spec = make_spec(PID)
    assert runtime.needs_prepare(spec) is False
    assert not source_dir(spec).exists()
    runtime.invoke(spec, None, context())
    assert (source_dir(spec) / "handler.py").is_file()


def test_requirements_are_installed(runtime):
    spec = make_spec(files={
        "handler.py": """
            import six

            def handle(event):
                return {"six": six.__version__, "from": six.__file__}
        """,
        "requirements.txt": "six==1.16.0\n",
    }, requirements="six==1.16.0\n")
    assert runtime.needs_prepare(spec) is True
    result = runtime.prepare(spec)
    assert result.ok is True, result.log
    assert "six" in result.log
    assert runtime.needs_prepare(spec) is False
    assert (deps_dir(spec) / "six.py").is_file()
    outcome = runtime.invoke(spec, None, context(30))
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output["six"] == "1.16.0"
    assert outcome.output["from"] == "/function/deps/0/six.py"  # bound read-only in the box
    assert runtime.prepare(spec).ok is True  # idempotent


def test_bad_requirements_fail_prepare(runtime):
    spec = make_spec(PID, requirements="this is not a requirement !!!\n")
    result = runtime.prepare(spec)
    assert result.ok is False
    assert "refused before pip ran" in result.log and "line 1" in result.log
    assert runtime.needs_prepare(spec) is True


def test_a_rejected_source(runtime):
    data = zip_bytes({"../evil.py": "x = 1\n"})
    spec = FunctionSpec(version_id=next(_versions), function_name="demo", version_number=1,
                        sha256=hashlib.sha256(data).hexdigest(), source_name="source.zip",
                        read_source=lambda: data)
    result = runtime.prepare(spec)
    assert result.ok is False
    assert ".." in result.log
    with pytest.raises(RuntimeFailure):
        runtime.invoke(spec, None, context())


def test_health(runtime):
    ok, detail = runtime.health()
    assert ok is True
    assert detail.startswith("local runtime: sandboxed (bubblewrap ")
    assert detail.endswith(", 0 warm processes")


def test_health_reports_an_unwritable_work_dir(runtime, settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings.KUBEFUNCTION_WORK_DIR = blocker / "work"
    ok, detail = runtime.health()
    assert ok is False
    assert "not writable" in detail


# --- the frame parser ----------------------------------------------------------------------------


def _frame(nonce: str, value: dict) -> bytes:
    payload = json.dumps(value, ensure_ascii=False).encode()
    return frame_header(nonce, len(payload)) + payload + b"\n"


def test_frame_reader_survives_any_split():
    nonce = "a1" * 16
    value = {"ok": True, "output": "héllo ✓", "logs": ""}
    stream = (b"noise before\n" + _frame("b2" * 16, {"ok": False}) + b"\n\x1eKUBEFUNCTION"
              + _frame(nonce, value) + b"after")
    for cut in range(len(stream) + 1):
        for second_cut in (cut, min(len(stream), cut + 7)):
            reader = FrameReader(nonce, 4096)
            for chunk in (stream[:cut], stream[cut:second_cut], stream[second_cut:]):
                reader.feed(chunk)
            assert reader.done, cut
            assert reader.result() == value
            stray = reader.stray.text()
            assert stray.startswith("noise before\n")
            assert "b2b2" in stray  # another nonce's frame is just stray output
            assert stray.endswith("\n\x1eKUBEFUNCTIONafter")


def test_frame_reader_byte_by_byte():
    nonce = "c3" * 16
    reader = FrameReader(nonce, 10)
    for byte in b"x" * 50 + _frame(nonce, {"ok": True}):
        assert not reader.done
        reader.feed(bytes([byte]))
    assert reader.done
    assert reader.result() == {"ok": True}
    assert reader.stray.text() == "x" * 10
    assert reader.stray.truncated is True


def test_frame_reader_refuses_oversized_and_malformed_frames():
    nonce = "d4" * 16
    with pytest.raises(FrameError):
        FrameReader(nonce, 10, max_frame_bytes=100).feed(frame_header(nonce, 101))
    with pytest.raises(FrameError):
        FrameReader(nonce, 10).feed(b"\n\x1eKUBEFUNCTION-RESULT " + nonce.encode() + b" 1x\n")
    reader = FrameReader(nonce, 10)
    reader.feed(frame_header(nonce, 3) + b"[1]\n")
    with pytest.raises(FrameError):
        reader.result()


def test_log_helpers():
    buffer = LogBuffer(5)
    buffer.add("✓✓".encode())
    buffer.add(b"x")
    assert (buffer.text(), buffer.truncated, buffer.dropped) == ("✓", True, 4)
    assert join_logs([("ab", False), ("cd", False)], 3) == ("abc", True)
    assert join_logs([("ab", False), ("", True)], 10) == ("ab", True)


def test_homes_of_dead_workers_are_removed(runtime, settings):
    homes = Path(settings.KUBEFUNCTION_WORK_DIR) / "homes"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = "".join(c if c.isalnum() or c in ".-" else "_" for c in socket.gethostname())
    stale = homes / f"{host}-{dead.pid}-abc123"
    live = homes / f"{host}-{os.getppid()}-abc123"
    other_host = homes / f"elsewhere-{dead.pid}-abc123"
    for folder in (stale, live, other_host):
        folder.mkdir(parents=True)
    outcome = runtime.invoke(make_spec(PID), None, context())
    assert outcome.status == "succeeded"
    assert not stale.exists()
    assert live.exists() and other_host.exists()
    runtime.close()
    assert sorted(path.name for path in homes.iterdir()) == sorted([live.name, other_host.name])
