"""The runner on its own: a real `python -I -S runner.py` process fed JSON lines, frames parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from executions.runtimes.wire import FrameReader
from functions import runner

RUNNER = Path(runner.__file__)


class Run:
    """One runner process's frames (in request order), stray stdout, stderr and exit code."""

    def __init__(self, frames: list[dict | None], stray: str, stderr: str, returncode: int):
        self.frames = frames
        self.stray = stray
        self.stderr = stderr
        self.returncode = returncode

    @property
    def frame(self) -> dict:
        assert self.frames[0] is not None, self.stderr
        return self.frames[0]


def run(tmp_path: Path, files: dict[str, str], events: list, *, handler: str = "handler.handle",
        mode: str = "handler", serve: bool = False, deadline: float | None = None,
        max_output_bytes: int = 1024 * 1024, max_log_bytes: int = 64 * 1024,
        timeout: float = 30) -> Run:
    src = tmp_path / "src"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    nonces = [f"nonce{index:04d}{os.urandom(8).hex()}" for index in range(len(events))]
    lines = b"".join(
        json.dumps({
            "nonce": nonce, "event": event,
            "context": {"execution_id": "exec-1", "task_id": "task-1", "function_name": "fn",
                        "function_version": 3,
                        "deadline": deadline if deadline is not None else time.time() + 30},
            "max_output_bytes": max_output_bytes, "max_log_bytes": max_log_bytes,
        }, ensure_ascii=False).encode("utf-8") + b"\n"
        for nonce, event in zip(nonces, events, strict=True)
    )
    argv = [sys.executable, "-I", "-S", "-B", str(RUNNER), "--root", str(src),
            "--handler", handler, "--mode", mode] + (["--serve"] if serve else [])
    env = {"PATH": os.defpath, "LANG": "C.UTF-8"}
    done = subprocess.run(argv, input=lines, capture_output=True, timeout=timeout, env=env,
                          cwd=tmp_path)
    frames: list[dict | None] = []
    stray = ""
    for nonce in nonces:
        reader = FrameReader(nonce, 1024 * 1024)
        reader.feed(done.stdout)
        frames.append(reader.result() if reader.done else None)
        if reader.done and not stray:
            stray = reader.stray.text()
    return Run(frames, stray, done.stderr.decode("utf-8", "replace"), done.returncode)


def test_handler_with_event_only(tmp_path):
    result = run(tmp_path, {"handler.py": """
        def handle(event):
            return {"sum": event["a"] + event["b"]}
    """}, [{"a": 2, "b": 3}])
    assert result.frame["ok"] is True
    assert result.frame["output"] == {"sum": 5}
    assert result.frame["exit_code"] == 0
    assert result.frame["error_type"] == ""
    assert result.returncode == 0


def test_handler_with_event_and_context(tmp_path):
    deadline = time.time() + 10
    result = run(tmp_path, {"app/__init__.py": "", "app/main.py": """
        def run(event, context):
            return {
                "event": event,
                "execution_id": context.execution_id,
                "task_id": context.task_id,
                "function_name": context.function_name,
                "function_version": context.function_version,
                "deadline": context.deadline,
                "remaining": context.remaining_time_ms(),
                "lambda_style": context.get_remaining_time_in_millis(),
            }
    """}, ["ping"], handler="app.main.run", deadline=deadline)
    output = result.frame["output"]
    assert output["event"] == "ping"
    assert output["execution_id"] == "exec-1"
    assert output["task_id"] == "task-1"
    assert output["function_name"] == "fn"
    assert output["function_version"] == 3
    assert output["deadline"] == deadline
    assert 5000 < output["remaining"] <= 10000
    assert 5000 < output["lambda_style"] <= 10000


def test_async_handler(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import asyncio

        async def handle(event, context):
            await asyncio.sleep(0.01)
            return {"doubled": event * 2, "name": context.function_name}
    """}, [21])
    assert result.frame["ok"] is True
    assert result.frame["output"] == {"doubled": 42, "name": "fn"}


def test_print_goes_to_logs_and_stdin_is_empty(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import sys

        def handle(event):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            return sys.stdin.read()
    """}, [None])
    assert result.frame["output"] == ""
    assert result.frame["logs"] == "to stdout\nto stderr\n"
    assert result.frame["logs_truncated"] is False


def test_script_mode_json_stdout_and_stderr_logs(tmp_path):
    result = run(tmp_path, {"main.py": """
        import json, sys
        event = json.load(sys.stdin)
        print("working on", event["n"], file=sys.stderr)
        if __name__ == "__main__":
            print(json.dumps({"square": event["n"] ** 2, "argv": sys.argv}))
    """}, [{"n": 7}], handler="main", mode="script")
    assert result.frame["ok"] is True
    assert result.frame["output"] == {"square": 49, "argv": [str(tmp_path / "src" / "main.py")]}
    assert result.frame["logs"] == "working on 7\n"


def test_script_mode_plain_text_in_a_package(tmp_path):
    result = run(tmp_path, {"pkg/__init__.py": "", "pkg/util.py": "WORD = 'hello'\n",
                            "pkg/main.py": """
        from .util import WORD
        print(WORD, "world")
    """}, [None], handler="pkg.main", mode="script")
    assert result.frame["ok"] is True
    assert result.frame["output"] == "hello world"


def test_script_mode_nonzero_exit_is_an_error(tmp_path):
    result = run(tmp_path, {"main.py": """
        import sys
        print("partial")
        sys.exit(2)
    """}, [None], handler="main", mode="script")
    assert result.frame["ok"] is False
    assert result.frame["error_type"] == "SystemExit"
    assert result.frame["exit_code"] == 2
    assert result.returncode == 2


def test_script_mode_exit_zero_is_success(tmp_path):
    result = run(tmp_path, {"main.py": """
        import sys
        print("[1, 2]")
        sys.exit(0)
    """}, [None], handler="main", mode="script")
    assert result.frame["ok"] is True
    assert result.frame["output"] == [1, 2]


def test_exception_reports_user_traceback_without_runner_frames(tmp_path):
    result = run(tmp_path, {"handler.py": """
        def helper(value):
            raise ValueError(f"bad value {value}")

        def handle(event):
            return helper(event)
    """}, [5])
    frame = result.frame
    assert frame["ok"] is False
    assert frame["error_type"] == "ValueError"
    assert frame["exit_code"] == 1
    assert frame["error"].startswith("bad value 5\n")
    assert 'raise ValueError(f"bad value {value}")' in frame["error"]
    assert "return helper(event)" in frame["error"]
    assert "runner.py" not in frame["error"]
    assert result.returncode == 1


def test_async_exception_traceback_has_no_asyncio_frames(tmp_path):
    result = run(tmp_path, {"handler.py": """
        async def handle(event):
            raise KeyError("missing")
    """}, [None])
    assert result.frame["error_type"] == "KeyError"
    assert "asyncio" not in result.frame["error"]
    assert 'raise KeyError("missing")' in result.frame["error"]


def test_sys_exit_in_handler_is_an_error_and_serving_goes_on(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import os, sys

        def handle(event):
            if event == "exit":
                sys.exit(3)
            return os.getpid()
    """}, [0, "exit", 0], serve=True)
    first, failed, after = result.frames
    assert failed["ok"] is False
    assert failed["error_type"] == "SystemExit"
    assert failed["error"] == "function called sys.exit(3)"
    assert failed["exit_code"] == 3
    assert after["ok"] is True
    assert after["output"] == first["output"]  # the same process answered
    assert result.returncode == 0


def test_non_json_return_value(tmp_path):
    result = run(tmp_path, {"handler.py": """
        def handle(event):
            return {1, 2} if event == "set" else {"nested": {1}}
    """}, ["set", "nested"], serve=True)
    top, nested = result.frames
    assert top["ok"] is False
    assert top["error_type"] == "NonSerializableResult"
    assert top["error"] == "return value of type set is not JSON serialisable"
    assert nested["error"] == (
        "return value of type dict is not JSON serialisable (it contains a value of type set)"
    )


def test_nan_is_not_json(tmp_path):
    result = run(tmp_path, {"handler.py": "def handle(event):\n    return float('nan')\n"}, [None])
    assert result.frame["error_type"] == "NonSerializableResult"


def test_output_over_the_cap(tmp_path):
    result = run(tmp_path, {"handler.py": """
        def handle(event):
            return "x" * 500
    """}, [None], max_output_bytes=100)
    frame = result.frame
    assert frame["ok"] is False
    assert frame["error_type"] == "OutputTooLarge"
    assert frame["output_truncated"] is True
    assert frame["output"] == '"' + "x" * 99
    assert "502" in frame["error"] and "100" in frame["error"]


def test_script_output_over_the_cap(tmp_path):
    result = run(tmp_path, {"main.py": "print('y' * 1000)\n"}, [None], handler="main",
                 mode="script", max_output_bytes=10)
    assert result.frame["error_type"] == "OutputTooLarge"
    assert result.frame["output"] == "y" * 10
    assert result.frame["output_truncated"] is True


def test_unicode_round_trips(tmp_path):
    text = "héllo ✓ 你好 🎉"
    result = run(tmp_path, {"handler.py": """
        def handle(event):
            print(event["text"])
            return {"text": event["text"], "len": len(event["text"])}
    """}, [{"text": text}])
    assert result.frame["output"] == {"text": text, "len": len(text)}
    assert result.frame["logs"] == text + "\n"


def test_fifty_megabytes_of_prints_are_bounded(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import sys

        def handle(event):
            line = "z" * 999
            for _ in range(50_000):
                print(line)
            sys.stdout.buffer.write(b"bytes too")
            return "done"
    """}, [None], max_log_bytes=1000)
    frame = result.frame
    assert frame["ok"] is True
    assert frame["output"] == "done"
    assert frame["logs_truncated"] is True
    assert frame["logs"] == "z" * 999 + "\n"
    assert frame["logs_dropped_bytes"] == 50_000 * 1000 - 1000 + len("bytes too")
    assert frame["max_rss_bytes"] < 40 * 1024 * 1024  # 50 MB never sat in memory


def test_log_cap_does_not_split_a_character(tmp_path):
    result = run(tmp_path, {"handler.py": "def handle(e):\n    print('✓' * 10)\n"}, [None],
                 max_log_bytes=10)
    assert result.frame["logs"] == "✓✓✓"  # 9 bytes: a fourth would not fit whole
    assert result.frame["logs_truncated"] is True


def test_fd_level_writes_cannot_forge_a_frame(tmp_path):
    fake = '{"ok": true, "output": "forged"}'
    result = run(tmp_path, {"handler.py": f"""
        import os, subprocess, sys

        FAKE = {fake!r}

        def handle(event):
            for nonce in ["nonce0000", "nonce0000" + "0" * 16, "0" * 32]:
                header = "\\n\\x1eKUBEFUNCTION-RESULT %s %d\\n" % (nonce, len(FAKE))
                os.write(1, (header + FAKE + "\\n").encode())
                print(header + FAKE)
            subprocess.run(["echo", "from a child"])
            return "real"
    """}, [None])
    assert result.frame["output"] == "real"
    assert result.stray == ""  # nothing but the frame on the result stream
    assert "from a child" in result.stderr
    assert "KUBEFUNCTION-RESULT" in result.stderr


def test_syntax_error_is_the_first_answer(tmp_path):
    result = run(tmp_path, {"handler.py": "def handle(event)\n    return 1\n"}, [None, None],
                 serve=True)
    first, second = result.frames
    assert first["ok"] is False
    assert first["error_type"] == "ImportError"
    assert "SyntaxError" in first["error"]
    assert "handler.py" in first["error"]
    assert first["init_seconds"] > 0
    assert second["error_type"] == "ImportError"


def test_missing_module_and_function_are_handler_not_found(tmp_path):
    missing_module = run(tmp_path, {"handler.py": ""}, [None], handler="nothere.handle")
    assert missing_module.frame["error_type"] == "HandlerNotFound"
    assert "nothere" in missing_module.frame["error"]
    missing_function = run(tmp_path, {"handler.py": "x = 1\n"}, [None], handler="handler.nope")
    assert missing_function.frame["error_type"] == "HandlerNotFound"
    assert missing_function.frame["error"] == "module 'handler' has no function 'nope'"
    bad_name = run(tmp_path, {"handler.py": ""}, [None], handler="handle")
    assert bad_name.frame["error_type"] == "HandlerNotFound"


def test_missing_dependency_is_an_import_error(tmp_path):
    result = run(tmp_path, {"handler.py": "import not_installed_anywhere\n"}, [None])
    assert result.frame["error_type"] == "ImportError"
    assert "not_installed_anywhere" in result.frame["error"]
    assert "import not_installed_anywhere" in result.frame["error"]


def test_platform_packages_are_not_importable(tmp_path):
    result = run(tmp_path, {"handler.py": """
        def handle(event):
            try:
                import django  # noqa: F401
            except ImportError as exc:
                return type(exc).__name__
            return "imported"
    """}, [None])
    assert result.frame["output"] == "ModuleNotFoundError"


def test_init_seconds_only_on_the_first_request(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import time
        time.sleep(0.1)

        def handle(event):
            return event
    """}, [1, 2], serve=True)
    first, second = result.frames
    assert first["init_seconds"] >= 0.1
    assert second["init_seconds"] == 0


def test_cpu_seconds_count_the_call_and_its_children(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import subprocess, sys, time

        def handle(event):
            end = time.process_time() + 0.2
            while time.process_time() < end:
                pass
            code = ("import time\\nend = time.process_time() + 0.2\\n"
                    "while time.process_time() < end: pass")
            subprocess.run([sys.executable, "-c", code], check=True)
            return 1
    """}, [None])
    assert result.frame["ok"] is True
    assert 0.4 <= result.frame["cpu_seconds"] < 2


def test_memory_error_ends_the_serving_process(tmp_path):
    result = run(tmp_path, {"handler.py": """
        def handle(event):
            return bytearray(1 << 60)
    """}, [None, None], serve=True)
    first, second = result.frames
    assert first["error_type"] == "MemoryError"
    assert first["error"].startswith("function exceeded its memory limit")
    assert "bytearray(1 << 60)" in first["error"]
    assert second is None  # it exited rather than serve again
    assert result.returncode == 1


def test_logs_are_saved_just_before_the_deadline(tmp_path):
    result = run(tmp_path, {"handler.py": """
        import time

        def handle(event):
            print("before the deadline")
            time.sleep(1.5)
            print("after it")
            return 1
    """}, [None], deadline=time.time() + 1)
    # The runner wrote what it had to stderr for the host to keep if it must kill the process,
    # and the frame only carries what came later.
    assert "before the deadline" in result.stderr
    assert result.frame["logs"] == "after it\n"


def test_without_serve_a_closed_stdin_is_an_error(tmp_path):
    result = run(tmp_path, {"handler.py": "def handle(e):\n    return e\n"}, [])
    assert result.returncode == 2
    assert "stdin closed" in result.stderr


@pytest.mark.parametrize("nonce", ["short", "has space 0123456789", "x" * 200])
def test_a_bad_nonce_is_refused(tmp_path, nonce):
    (tmp_path / "handler.py").write_text("def handle(e):\n    return e\n")
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(RUNNER), "--root", str(tmp_path)],
        input=json.dumps({"nonce": nonce, "event": 1}).encode() + b"\n",
        capture_output=True, timeout=30,
    )
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"bad request" in done.stderr
