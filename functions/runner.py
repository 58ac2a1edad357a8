"""KubeFunction's function runner: imports a user's function, runs it on requests, frames results.

Standard library only, no Django, Python 3.9+: this file is copied alone into container images.

    python runner.py --root SRC [--path DIR]... --handler H --mode handler|script
                     [--convention NAME]
                     [--serve | --request-file PATH | --request-env NAME | --socket PATH |
                      --http [HOST]:PORT]

Requests are JSON lines: {"nonce", "event", "context": {...}, "max_output_bytes",
"max_log_bytes"[, "http": true]}; with "http" the event is a webhook's HTTP request description
(conventions/base.py), which a --convention turns into its platform's event or request object.
By default the runner reads one request from stdin, answers it and exits with the function's
exit code; with --request-file it reads that one request from a file instead (a
container's read-only mount), and with --request-env from that environment variable (a pod's
env; the runner removes it from its environment before the function runs). With --serve it
imports the function once (warm) and answers requests from stdin until stdin closes. With
--socket it serves over the host's unix socket at PATH (see `SocketChannel`): it connects, reads
one request line, answers with one frame, closes, and connects again for the next request, until
SIGTERM or until the host stops listening. With --http it serves HTTP (a warm pod):
GET /healthz, and POST /invoke with one request line, answered with its frame. Each mode is a
channel (`Channel`, `SocketChannel`, `HTTPChannel`); one request loop (`serve`) answers them all.

Each answer is a frame written to a private duplicate of the original stdout, the only thing ever
written there:

    b"\\n\\x1eKUBEFUNCTION-RESULT <nonce> <length>\\n" + <length> bytes of UTF-8 JSON + b"\\n"

File descriptor 1 is pointed at stderr at startup, so nothing the function writes (print, os.write,
subprocesses, C extensions) can land inside a frame, and the per-request nonce means a function
cannot forge one either. Python-level stdout/stderr are captured, bounded, while the function runs.
In socket mode the frame travels on the request's connection, and so do fds 1 and 2 while the
request runs: the host reads the function's stray output there, and the nonce still tells the
frame apart. There a frame also says `"retire": true` when the function left processes running
in the container (the runner then exits: the host must not reuse it).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import resource
import sys
import threading
import time
import types

# Only what every request needs is imported up front: a cold start pays for each module.
# inspect, traceback, runpy and asyncio are imported where (and if) they are needed.

CO_VARARGS, CO_COROUTINE = 0x04, 0x80  # code object flags (inspect.CO_VARARGS, CO_COROUTINE)


# --- the wire contract (the host's side: executions.runtimes.wire) ------------------------------

FRAME_MARKER = b"\x1eKUBEFUNCTION-RESULT "
"""A frame header is b"\\n" + FRAME_MARKER + nonce + b" " + length + b"\\n"."""

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_MAX_LOG_BYTES = 256 * 1024
NONCE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Error types after which the process must not serve again: the host retires it.
FATAL_ERROR_TYPES = ("MemoryError",)


def parse_request(line: bytes) -> tuple[str, dict]:
    """(nonce, request) from one request line; raises ValueError when it is not a request."""
    try:
        request = json.loads(line)
        nonce = str(request["nonce"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"no nonce: {exc!r}") from None
    if not (8 <= len(nonce) <= 128 and NONCE_CHARACTERS.issuperset(nonce)):
        raise ValueError(f"bad nonce {nonce!r}")
    if not isinstance(request, dict):
        raise ValueError("the request is not an object")
    return nonce, request


def frame_header(nonce: str, length: int) -> bytes:
    """The header line that precedes a frame's `length` bytes of JSON."""
    return b"\n" + FRAME_MARKER + nonce.encode("ascii") + b" " + str(length).encode("ascii") + b"\n"


class _Raw(str):
    """JSON text to splice into a frame as is."""


def frame_bytes(nonce: str, answer: dict) -> bytes:
    """`answer` as one frame (its "output" is spliced in as JSON text)."""
    output = answer.pop("output", None)
    rest = json.dumps(answer, ensure_ascii=False, allow_nan=False)
    output_json = output if isinstance(output, _Raw) else json.dumps(output, ensure_ascii=False)
    payload = f'{rest[:-1]}, "output": {output_json}}}'.encode("utf-8", "replace")
    return frame_header(nonce, len(payload)) + payload + b"\n"


def write_frame(fd: int, nonce: str, answer: dict) -> None:
    """Write `answer` as one frame to `fd`."""
    data = memoryview(frame_bytes(nonce, answer))
    while data:
        written = os.write(fd, data)
        data = data[written:]


# --- bounded capture of what the function prints -------------------------------------------------


def utf8_prefix(data: bytes, limit: int) -> bytes:
    """The first `limit` bytes of `data`, cut back so no UTF-8 character is split."""
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:  # a continuation byte: back off to a start
        end -= 1
    return data[:end]


class _BinaryCapture(io.RawIOBase):
    """`sys.stdout.buffer` for code that writes bytes."""

    def __init__(self, owner: Capture) -> None:
        super().__init__()
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        data = bytes(data)
        self._owner.write_bytes(data)
        return len(data)


class Capture(io.TextIOBase):
    """A text stream that keeps the first `limit` bytes (UTF-8) written to it and counts the rest.

    Thread-safe, so threads the function starts may print too. `fileno()` is `fileno` when given
    (fd 2, so `subprocess.run(stdout=sys.stdout)` still works and lands in the stray logs).
    """

    def __init__(self, limit: int, fileno: int | None = None) -> None:
        super().__init__()
        self.limit = max(0, limit)
        self.dropped = 0  # bytes written past the limit
        self._data = bytearray()
        self._fileno = fileno
        self._lock = threading.Lock()
        self.buffer = _BinaryCapture(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._fileno is None:
            raise io.UnsupportedOperation("this stream has no file descriptor")
        return self._fileno

    def write(self, text: object) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.dropped or len(self._data) >= self.limit:  # full: count cheaply, encode nothing big
            self.dropped += len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
            return len(text)
        self.write_bytes(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def write_bytes(self, data: bytes) -> None:
        with self._lock:
            room = 0 if self.dropped else self.limit - len(self._data)  # keep a true prefix
            if len(data) <= room:
                self._data += data
                return
            kept = utf8_prefix(data, room) if room > 0 else b""
            self._data += kept
            self.dropped += len(data) - len(kept)

    def getvalue(self, start: int = 0) -> str:
        """What was kept, from byte `start`, as text."""
        with self._lock:
            data = bytes(self._data[start:])
        return data.decode("utf-8", "replace")

    def size(self) -> int:
        return len(self._data)


# --- the function's context argument ------------------------------------------------------------


class Context:
    """What a handler's `context` argument carries (like AWS Lambda's context object)."""

    def __init__(self, fields: object) -> None:
        if not isinstance(fields, dict):
            fields = {}
        self.execution_id = str(fields.get("execution_id", ""))
        self.task_id = str(fields.get("task_id", ""))
        self.function_name = str(fields.get("function_name", ""))
        self.function_version = int(fields.get("function_version") or 0)
        deadline = fields.get("deadline")
        self.deadline = float(deadline) if deadline is not None else None
        # 1 on the first run; a retry of the same execution counts up (the box keeps no state
        # between attempts, so this is how a handler knows it is being retried).
        attempt = fields.get("attempt")
        self.attempt = attempt if isinstance(attempt, int) and attempt > 0 else 1
        memory = fields.get("memory_mb")
        self.memory_mb = memory if isinstance(memory, int) and memory > 0 else 0
        self.fields = fields  # everything the host sent, for a convention's own context

    def remaining_time_ms(self) -> int:
        """Milliseconds left before the platform stops the function (0 when none are left)."""
        if self.deadline is None:
            return 2**31 - 1
        return max(0, int((self.deadline - time.time()) * 1000))

    get_remaining_time_in_millis = remaining_time_ms  # the name AWS Lambda handlers use

    def __repr__(self) -> str:
        return (
            f"Context(execution_id={self.execution_id!r}, function_name={self.function_name!r}, "
            f"function_version={self.function_version}, deadline={self.deadline}, "
            f"attempt={self.attempt})"
        )


# --- tracebacks without the runner's frames -----------------------------------------------------


def _runner_code_file() -> str:
    return _runner_code_file.__code__.co_filename


_STDLIB = os.path.dirname(os.__file__)
_INTERNAL_DIRS = tuple(os.path.join(_STDLIB, name) + os.sep for name in ("asyncio", "importlib"))
_INTERNAL_FILES = (_runner_code_file(), os.path.join(_STDLIB, "runpy.py"))
# The conventions' adapters (conventions/, next to the runner) are the platform's frames too.
_CONVENTIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(_runner_code_file())),
                                "conventions") + os.sep


def _is_internal(filename: str) -> bool:
    return (
        filename in _INTERNAL_FILES
        or filename.startswith(_INTERNAL_DIRS)
        or filename.startswith(_CONVENTIONS_DIR)
        or filename.startswith("<frozen ")
    )


def _user_tb(exc: BaseException) -> types.TracebackType | None:
    """The exception's traceback from the first frame that is not the runner's (or runpy's...)."""
    tb = exc.__traceback__
    while tb is not None and _is_internal(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def format_error(exc: BaseException, limit: int = DEFAULT_MAX_LOG_BYTES) -> str:
    """The exception's message, a blank line, and its traceback without the runner's frames."""
    import traceback

    lines = traceback.format_exception(type(exc), exc, _user_tb(exc))
    message = str(exc) or type(exc).__name__
    text = f"{message}\n\n{''.join(lines)}"
    if len(text) > limit:
        half = max(1, limit // 2)
        text = f"{text[:half]}\n... [{len(text) - 2 * half} characters omitted] ...\n{text[-half:]}"
    return text


# --- loading the function ------------------------------------------------------------------------


class Failure(Exception):
    """A failure to report as `error_type` and `error` (for a load failure: in every answer)."""

    def __init__(self, error_type: str, error: str) -> None:
        super().__init__(error)
        self.error_type = error_type
        self.error = error


def _missing_module(exc: ModuleNotFoundError, module: str) -> bool:
    """True when the handler's own module (or a parent package) is missing, not a dependency."""
    return bool(exc.name) and (module == exc.name or module.startswith(exc.name + "."))


def _load_failure(exc: BaseException, module: str) -> Failure:
    if isinstance(exc, ModuleNotFoundError) and _missing_module(exc, module):
        return Failure(
            "HandlerNotFound", f"no module named '{exc.name}' in the function's source"
        )
    return Failure(
        "ImportError", f"could not import '{module}': {type(exc).__name__}: {format_error(exc)}"
    )


def _import(module: str) -> object:
    try:
        return importlib.import_module(module)
    except MemoryError:
        raise
    except BaseException as exc:  # SyntaxError, anything raised at import, even SystemExit
        raise _load_failure(exc, module) from None


def _accepts_two(func: object) -> bool:
    if type(func) is types.FunctionType and not hasattr(func, "__wrapped__"):
        code = func.__code__  # the common case, without importing inspect
        return bool(code.co_flags & CO_VARARGS) or code.co_argcount >= 2
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: assume (event, context)
        return True
    positional = 0
    for param in params:
        if param.kind == param.VAR_POSITIONAL:
            return True
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def load_callable(name: str) -> object:
    """The callable `module.attr` names; raises `Failure` (HandlerNotFound, ImportError)."""
    module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise Failure(
            "HandlerNotFound", f"handler '{name}' is not of the form module.function"
        )
    module = _import(module_name)
    func = getattr(module, attr, None)
    if func is None:
        raise Failure(
            "HandlerNotFound", f"module '{module_name}' has no function '{attr}'"
        )
    if not callable(func):
        raise Failure(
            "HandlerNotFound", f"'{name}' is a {type(func).__name__}, not a function"
        )
    return func


class Handler:
    """handler mode: `module.function`, called with (event, context) or (event)."""

    def __init__(self, name: str) -> None:
        self.func = func = load_callable(name)
        self.two_args = _accepts_two(func)
        if type(func) is types.FunctionType:
            self.is_async = bool(func.__code__.co_flags & CO_COROUTINE)
        else:
            import inspect

            self.is_async = inspect.iscoroutinefunction(func)

    def call(self, event: object, context: Context, http: bool = False) -> object:
        result = self.func(event, context) if self.two_args else self.func(event)
        if self.is_async or isinstance(result, types.CoroutineType):
            import asyncio  # only async functions pay for importing asyncio

            result = asyncio.run(result)
        return result


def _conventions() -> types.ModuleType:
    """The conventions package next to this file (conventions/), under a private name so that
    it cannot collide with the function's own modules (`import conventions`)."""
    name = "_kubefunction_conventions"
    if name in sys.modules:
        return sys.modules[name]
    import importlib.util

    folder = os.path.join(os.path.dirname(os.path.abspath(_runner_code_file())), "conventions")
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    if spec is None or spec.loader is None:
        raise Failure("PlatformError", f"the runner's conventions are missing at {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def convention_target(convention: str, handler: str) -> object:
    """The adapter that calls `handler` the way `convention`'s platform does."""
    try:
        package = _conventions()
    except (OSError, ImportError) as exc:
        raise Failure("PlatformError", f"the runner's conventions cannot load: {exc!r}") from None
    return package.adapter(convention, handler, load_callable)


class Script:
    """script mode: run a module as `__main__`; its stdout is the output, its stderr the logs."""

    def __init__(self, name: str) -> None:
        if name.endswith(".py"):
            name = name[:-3].replace("/", ".")
        import importlib.util

        try:
            spec = importlib.util.find_spec(name)  # imports parent packages, never the script
        except MemoryError:
            raise
        except BaseException as exc:
            raise _load_failure(exc, name) from None
        if spec is None or not spec.origin:
            raise Failure("HandlerNotFound", f"no script '{name}' in the function's source")
        self.name = name
        self.path = spec.origin


# --- answering one request -----------------------------------------------------------------------


class _NotSerializable(TypeError):
    pass


def _reject(value: object) -> object:
    raise _NotSerializable(type(value).__name__)


def _dump_output(value: object) -> str:
    """The value as JSON text; raises `Failure("NonSerializableResult", ...)` if it has none."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_reject)
    except _NotSerializable as exc:
        inner = str(exc)
        outer = type(value).__name__
        detail = "" if inner == outer else f" (it contains a value of type {inner})"
        message = f"return value of type {outer} is not JSON serialisable{detail}"
    except (TypeError, ValueError, RecursionError) as exc:
        message = f"return value of type {type(value).__name__} is not JSON serialisable: {exc}"
    raise Failure("NonSerializableResult", message)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return 1


def _no_nan(constant: str) -> object:
    raise ValueError(constant)


def _script_output(text: str) -> object:
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return json.loads(stripped, parse_constant=_no_nan)
    except ValueError:
        return stripped


class _Watchdog:
    """Writes the logs captured so far to stderr just before a request's deadline.

    The host kills the process group at the deadline, which loses what is captured in memory; this
    thread (one per process, never one per request) saves it as stray output the host keeps.
    Waking a thread costs more than a whole warm request, so `watch` wakes it only when it would
    otherwise sleep past the new deadline: in a busy process it wakes about once per timeout.
    """

    MARGIN = 0.25

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[float, Capture] | None = None
        self._wakes_at = float("-inf")  # when the thread will look at `_job` again
        self._last_at = float("-inf")  # when the latest job was due
        self.flushed = 0  # bytes of the current capture already written out
        self._writing = False
        thread = threading.Thread(target=self._run, name="kubefunction-watchdog", daemon=True)
        old = threading.stack_size(512 * 1024)  # counts against a small RLIMIT_AS otherwise
        try:
            thread.start()
        finally:
            threading.stack_size(old)

    def watch(self, deadline: float | None, capture: Capture) -> None:
        with self._cond:
            self.flushed = 0
            if deadline is None:
                return
            margin = min(self.MARGIN, max(0.0, (deadline - time.time()) / 4))
            self._last_at = at = deadline - margin
            self._job = (at, capture)
            if at < self._wakes_at:
                self._cond.notify()

    def done(self) -> int:
        """Stop watching; returns how many bytes of the capture were already written out."""
        with self._cond:
            self._job = None
            while self._writing:  # so those bytes reach the pipe before the frame does
                self._cond.wait()
            return self.flushed

    def _run(self) -> None:
        while True:
            with self._cond:
                # With no job, sleep until the latest one would have been due rather than for
                # ever: the next request most likely has a later deadline, and needs no wake-up.
                at, capture = self._job or (self._last_at, None)
                left = at - time.time()
                if left > 0 or capture is None:
                    self._wakes_at = at if left > 0 else float("inf")
                    self._cond.wait(left if left > 0 else None)
                    self._wakes_at = float("-inf")
                    continue
                self._job = None
                self._writing = True
                start, self.flushed = self.flushed, capture.size()
                data = capture.getvalue(start).encode("utf-8")
            try:  # outside the lock, so the function's own threads can go on printing
                while data:
                    data = data[os.write(2, data):]
            except OSError:
                pass
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _peak_rss(fallback_kib: int) -> int:
    # ru_maxrss would do, but Linux carries the parent's peak across fork and exec into it, so a
    # runner spawned by a 100 MB worker would report 100 MB. VmHWM is this process image's own.
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return fallback_kib * 1024


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _cpu_and_rss() -> tuple[float, int]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    return cpu, max(_peak_rss(me.ru_maxrss), children.ru_maxrss * 1024)


class Runner:
    """Holds the loaded function (or the reason it failed to load) and answers requests."""

    def __init__(self, handler: str, mode: str, convention: str = "") -> None:
        self.mode = mode
        self.target: Handler | Script | object | None = None
        self.load_error: Failure | None = None
        self.init_seconds = 0.0
        self._reserve: bytearray | None = bytearray(256 * 1024)  # freed to report a MemoryError
        started = time.perf_counter()
        try:
            if mode == "script":
                self.target = Script(handler)
            elif convention:
                self.target = convention_target(convention, handler)
            else:
                self.target = Handler(handler)
        except Failure as exc:
            self.load_error = exc
        except MemoryError:
            self.load_error = Failure("MemoryError", "function exceeded its memory limit")
        self.init_seconds = time.perf_counter() - started
        self.watchdog = _Watchdog()

    def answer(self, request: dict) -> dict:
        """Run the function on one request; the dict is the frame's JSON."""
        max_output = int(request.get("max_output_bytes") or DEFAULT_MAX_OUTPUT_BYTES)
        max_log = int(request.get("max_log_bytes") or DEFAULT_MAX_LOG_BYTES)
        context = Context(request.get("context"))
        logs = Capture(max_log, fileno=2)
        result: dict = {"ok": False, "output": None, "output_truncated": False, "error_type": "",
                        "error": "", "exit_code": 1}
        cpu_before = _cpu_seconds()
        self.watchdog.watch(context.deadline, logs)
        try:
            if self.load_error is not None:
                result.update(error_type=self.load_error.error_type, error=self.load_error.error)
            elif isinstance(self.target, Script):
                self._run_script(self.target, request.get("event"), logs, max_output, result)
            else:
                self._run_handler(request.get("event"), context, logs, max_output, max_log, result,
                                  http=request.get("http") is True)
        except MemoryError as exc:
            self._reserve = None  # headroom to build and write the answer
            error = "function exceeded its memory limit"
            try:
                import traceback

                error += "\n\n" + "".join(traceback.format_exception(type(exc), exc, _user_tb(exc)))
            except MemoryError:
                pass
            del exc  # its traceback holds the function's frames, and so its memory
            result.update(ok=False, output=None, error_type="MemoryError", error=error,
                          exit_code=1)
        flushed = self.watchdog.done()
        cpu_after, rss = _cpu_and_rss()
        result.update(
            logs=logs.getvalue(flushed), logs_truncated=logs.truncated,
            logs_dropped_bytes=logs.dropped, cpu_seconds=round(cpu_after - cpu_before, 6),
            max_rss_bytes=rss, init_seconds=round(self.init_seconds, 6),
        )
        self.init_seconds = 0.0  # reported once, on the first request after startup
        return result

    def _run_handler(self, event: object, context: Context, logs: Capture, max_output: int,
                     max_log: int, result: dict, http: bool = False) -> None:
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(), logs, logs
        try:
            value = self.target.call(event, context, http)  # type: ignore[union-attr]
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) and exc.code else 1
            result.update(error_type="SystemExit", exit_code=code,
                          error=f"function called sys.exit({exc.code!r})")
            return
        except MemoryError:
            raise
        except Failure as exc:  # a convention's adapter: the answer's shape is refused
            result.update(error_type=exc.error_type, error=exc.error)
            return
        except BaseException as exc:
            result.update(error_type=type(exc).__name__, error=format_error(exc, max_log))
            return
        finally:
            # Both to fd 2: a thread the function left printing now writes stray logs.
            sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stderr__, sys.__stderr__
        self._set_output(value, max_output, result)

    def _run_script(self, script: Script, event: object, logs: Capture, max_output: int,
                    result: dict) -> None:
        stdout = Capture(max_output)
        saved_argv = sys.argv
        sys.argv = [script.path]
        sys.stdin = io.StringIO(json.dumps(event, ensure_ascii=False))
        sys.stdout, sys.stderr = stdout, logs
        code = 0
        try:
            import runpy

            runpy.run_module(script.name, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = _exit_code(exc.code)
            if code and not isinstance(exc.code, int):  # sys.exit("message") prints it
                logs.write(f"{exc.code}\n")
        except MemoryError:
            raise
        except BaseException as exc:
            result.update(error_type=type(exc).__name__, error=format_error(exc, logs.limit))
            return
        finally:
            sys.argv = saved_argv
            sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stderr__, sys.__stderr__
        if code:
            result.update(error_type="SystemExit", exit_code=code,
                          error=f"script exited with code {code}")
            return
        if stdout.truncated:
            total = stdout.size() + stdout.dropped
            result.update(error_type="OutputTooLarge", output=stdout.getvalue(),
                          output_truncated=True,
                          error=f"output is {total} bytes; the limit is {max_output} bytes")
            return
        self._set_output(_script_output(stdout.getvalue()), max_output, result)

    def _set_output(self, value: object, max_output: int, result: dict) -> None:
        try:
            text = _dump_output(value)
        except Failure as exc:
            result.update(error_type=exc.error_type, error=exc.error)
            return
        size = len(text.encode("utf-8", "replace"))
        if size > max_output:
            result.update(error_type="OutputTooLarge", output=text[:max_output],
                          output_truncated=True,
                          error=f"output is {size} bytes of JSON; the limit is {max_output} bytes")
            return
        # Keep the JSON text: the frame splices it in rather than serialising the value twice.
        result.update(ok=True, output=_Raw(text), error_type="", error="", exit_code=0)


# --- the process: file descriptors, transports, the one request loop -------------------------


class Channel:
    """Stdin mode (`--serve` or one request), `--request-file` and `--request-env`: private
    request and result descriptors; fds 0 and 1 are left for the function to misuse.

    Requests come from stdin, from `request_file` (one-shot mode in a container) or from the
    `request_env` variable; the function always gets an empty stdin. Made first in every mode,
    so that fd 1 points at stderr before anything else runs.
    """

    def __init__(self, request_file: str = "", request_env: str = "", serve: bool = False) -> None:
        self.source = request_file or ("$" + request_env if request_env else "")
        self.serve = serve
        self.result_fd = os.dup(1)  # dup'ed descriptors are not inherited by subprocesses
        os.dup2(2, 1)
        if request_env:
            import io

            data = os.environ.pop(request_env, "").encode("utf-8", "surrogateescape")
            self.requests = io.BytesIO(data if not data or data.endswith(b"\n") else data + b"\n")
        else:
            request_fd = os.open(request_file, os.O_RDONLY | os.O_CLOEXEC) if request_file \
                else os.dup(0)
            self.requests = os.fdopen(request_fd, "rb")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    def receive(self) -> bytes | None:
        line = self.requests.readline()
        return line if line else None

    def closed(self) -> int:
        """The host closed stdin: a normal end when serving."""
        if self.source:
            print(f"runner: {self.source} holds no request", file=sys.stderr)
        elif not self.serve:
            print("runner: stdin closed before any request", file=sys.stderr)
        return 0 if self.serve else 2

    def refuse(self, problem: ValueError) -> bool:
        print(f"runner: bad request: {problem}", file=sys.stderr)
        return False

    def begin(self, request: dict) -> None:
        pass

    def retire(self, answer: dict) -> bool:
        return False

    def send(self, nonce: str, answer: dict) -> None:
        write_frame(self.result_fd, nonce, answer)

    def end(self) -> None:
        pass

    def after(self, exit_code: int) -> int | None:
        return None if self.serve else exit_code


class SocketChannel:
    """Socket mode: requests arrive on connections the runner makes to the host's unix socket.

    The host listens; the runner connects (first before importing the function, so the host
    learns at once if it dies while importing, and again after each answer), reads one request
    line, answers with one frame on the same connection and closes it. A connection waiting in
    the host's backlog is how the host knows the runner is ready, without polling. While a
    request runs, fds 1 and 2 point at its connection, so whatever the function writes at the
    file-descriptor level reaches the host as stray output; between requests they point at the
    runner's own stderr. SIGTERM ends an idle runner at once and a busy one after its answer.
    """

    def __init__(self, path: str) -> None:
        import signal

        self.path = path
        self.pid = os.getpid()
        self.stderr_fd = os.dup(2)
        self.idle = True
        self.stopping = False
        self.conn: object | None = None
        signal.signal(signal.SIGTERM, self._terminate)

    def _terminate(self, signum: int, frame: object) -> None:
        if self.idle:
            os._exit(0)
        self.stopping = True

    def connect(self) -> object | None:
        """A new connection to the host, or None when the host no longer listens."""
        import socket

        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
        except OSError as exc:
            conn.close()
            print(f"runner: cannot connect to {self.path}: {exc}", file=sys.stderr)
            return None
        return conn

    def receive(self) -> bytes | None:
        """One request line from the connection; None when the host closed it first (or the
        runner could not connect again)."""
        conn = self.conn
        if conn is None:
            return None
        data = bytearray()
        while not data.endswith(b"\n"):
            try:
                chunk = conn.recv(65536)  # type: ignore[attr-defined]
            except OSError:
                chunk = b""
            if not chunk:
                return None
            data += chunk
        self.idle = False
        return bytes(data)

    def closed(self) -> int:
        """The host dropped the connection: it wants no more of this runner."""
        return 0

    def refuse(self, problem: ValueError) -> bool:
        print(f"runner: bad request: {problem}", file=sys.stderr)
        return False

    def begin(self, request: dict) -> None:
        self._redirect(self.conn)

    def retire(self, answer: dict) -> bool:
        """The function left processes running in the container: the host must not reuse it."""
        if _left_processes(self.pid):
            answer["retire"] = True
            return True
        return False

    def send(self, nonce: str, answer: dict) -> None:
        try:
            write_frame(self.conn.fileno(), nonce, answer)  # type: ignore[attr-defined]
        except OSError:  # the host gave up on this request (its deadline): it kills us next
            pass

    def end(self) -> None:
        self._redirect(None)
        self.conn.close()  # type: ignore[attr-defined]
        self.idle = True  # first: a SIGTERM from now on ends the runner at once

    def after(self, exit_code: int) -> int | None:
        if self.stopping:
            return exit_code
        self.conn = self.connect()
        return None

    def _redirect(self, conn: object | None) -> None:
        """Point fds 1 and 2 at `conn` for a request, or back at stderr with None."""
        try:
            sys.__stderr__.flush()  # what the runner itself printed goes where it was meant to
        except (AttributeError, OSError, ValueError):
            pass
        fd = conn.fileno() if conn is not None else self.stderr_fd  # type: ignore[attr-defined]
        os.dup2(fd, 1)
        os.dup2(fd, 2)


class HTTPChannel:
    """HTTP mode (a warm pod): GET /healthz answers 200 once the function is imported (the
    server listens only then); POST /invoke takes one request line and is answered with its
    frame. One request at a time, one per connection. SIGTERM (the pod deleted or scaled down;
    as PID 1 nothing else would end it) ends an idle runner, or one past its request's
    deadline, at once, and a busy one after its answer, which the pod's grace period bounds.
    """

    def __init__(self, address: str) -> None:
        import http.server
        import signal

        host, _, port = address.rpartition(":")
        self.deadline: float | None = None  # of the request being served (None: unknown)
        self.busy = False
        self.stopping = False
        self.pending = None  # the POST /invoke being served: its connection stays open
        signal.signal(signal.SIGTERM, self._terminate)
        channel = self

        class Server(http.server.HTTPServer):
            def shutdown_request(self, request: object) -> None:
                if channel.pending is None or channel.pending.request is not request:
                    super().shutdown_request(request)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *items: object) -> None:  # noqa: A002
                pass

            def reply(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self.reply(200, b"ok\n") if self.path == "/healthz" else self.reply(404, b"")

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/invoke":
                    self.reply(404, b"")
                    return
                self.line = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                channel.pending = self  # answered by the request loop, then `end` closes it

            def finish(self) -> None:
                if channel.pending is not self:
                    super().finish()

        self.server = Server((host or "0.0.0.0", int(port)), Handler)

    def _terminate(self, signum: int, frame: object) -> None:
        if not self.busy or (self.deadline is not None and time.time() >= self.deadline):
            _exit_on_sigterm(signum, frame)
        self.stopping = True

    def receive(self) -> bytes | None:
        while self.pending is None:
            self.server.handle_request()
        return self.pending.line

    def closed(self) -> int:
        return 0

    def refuse(self, problem: ValueError) -> bool:
        self._answer(400, f"bad request: {problem}\n".encode())
        return True

    def begin(self, request: dict) -> None:
        deadline = (request.get("context") or {}).get("deadline")
        self.deadline = float(deadline) if isinstance(deadline, (int, float)) else None
        self.busy = True

    def retire(self, answer: dict) -> bool:
        return False

    def send(self, nonce: str, answer: dict) -> None:
        self._answer(200, frame_bytes(nonce, answer))

    def end(self) -> None:
        self.busy = False
        self.deadline = None

    def after(self, exit_code: int) -> int | None:
        return 0 if self.stopping else None

    def _answer(self, code: int, data: bytes) -> None:
        """Answer the pending POST and close its connection."""
        handler, self.pending = self.pending, None
        try:
            handler.reply(code, data)
            handler.finish()
        except OSError:  # the host gave up on this request (its deadline)
            pass
        self.server.shutdown_request(handler.request)


def serve(runner: Runner, channel: Channel | SocketChannel | HTTPChannel) -> int:
    """The one request loop of every mode: take a request, answer it, until the channel ends
    or an answer retires the runner; returns the process's exit code."""
    me = os.getpid()
    while True:
        line = channel.receive()
        if line is None:
            return channel.closed()
        try:
            nonce, request = parse_request(line)
        except ValueError as exc:
            if channel.refuse(exc):
                continue
            return 2
        channel.begin(request)
        try:
            answer = runner.answer(request)
            if os.getpid() != me:  # a process the function forked came back here: it never answers
                os._exit(0)
            exit_code = answer["exit_code"]
            retire = channel.retire(answer) or answer["error_type"] in FATAL_ERROR_TYPES
            channel.send(nonce, answer)
        finally:
            channel.end()
        if retire:
            return exit_code
        end = channel.after(exit_code)
        if end is not None:
            return end


def _left_processes(pid: int) -> bool:
    """True when, in a container of its own (the runner is its init or the init's child), the
    function left other processes running (or unreaped): such a container is not reused."""
    if pid != 1 and os.getppid() != 1:
        return False
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    return any(name.isdigit() and int(name) not in (1, pid) for name in names)


class Arguments:
    """The command line (argparse would add a tenth to a cold start)."""

    USAGE = ("usage: runner.py --root SRC_DIR [--path DIR]... [--handler H] "
             "[--mode handler|script] [--convention NAME] "
             "[--serve | --request-file PATH | --request-env NAME | "
             "--socket PATH | --http [HOST]:PORT]")
    VALUED = ("--root", "--path", "--handler", "--mode", "--convention", "--request-file",
              "--request-env", "--socket", "--http")

    def __init__(self, argv: list[str]) -> None:
        self.root = ""
        self.path: list[str] = []
        self.handler = "handler.handle"
        self.mode = "handler"
        self.convention = ""
        self.serve = False
        self.request_file = ""
        self.request_env = ""
        self.socket = ""
        self.http = ""
        items = iter(argv)
        for item in items:
            if item == "--serve":
                self.serve = True
            elif item in self.VALUED:
                value = next(items, None)
                if value is None:
                    self.fail(f"{item} needs a value")
                if item == "--path":
                    self.path.append(value)
                else:
                    setattr(self, item[2:].replace("-", "_"), value)
            else:
                self.fail(f"unknown argument {item!r}")
        if not self.root:
            self.fail("--root is required")
        if self.mode not in ("handler", "script"):
            self.fail(f"--mode must be handler or script, not {self.mode!r}")
        if self.serve + bool(self.request_file) + bool(self.request_env) + bool(self.socket) \
                + bool(self.http) > 1:
            self.fail("--serve, --request-file, --request-env, --socket and --http exclude each "
                      "other")
        if self.http and not self.http.rpartition(":")[2].isdigit():
            self.fail(f"--http needs [HOST]:PORT, not {self.http!r}")

    def fail(self, message: str) -> None:
        print(f"{self.USAGE}\nrunner.py: {message}", file=sys.stderr)
        raise SystemExit(2)


def _setup_paths(root: str, extra: list[str]) -> None:
    root = os.path.abspath(root)
    os.chdir(root)
    sys.path.insert(0, root)
    if extra:
        import site  # with -S this only defines functions; addsitedir also reads .pth files

        for path in extra:
            site.addsitedir(os.path.abspath(path))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    try:
        os.write(2, b"runner: SIGTERM: the pod is being deleted (its deadline, most likely)\n")
    except OSError:
        pass
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the runner; returns the process exit code."""
    args = Arguments(sys.argv[1:] if argv is None else argv)
    if os.getpid() == 1 and not (args.socket or args.http):
        # A container's PID 1 gets no default signal action: without a handler SIGTERM (a Job
        # past its deadline, a deleted pod) would be ignored until SIGKILL ends the grace
        # period. One-shot: nothing is worth finishing once the pod is being deleted. Python
        # runs the handler between bytecodes, so a busy `while True: pass` cannot defer it.
        import signal

        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        channel: Channel | SocketChannel | HTTPChannel = Channel(
            args.request_file, args.request_env, serve=args.serve)
    except OSError as exc:
        print(f"runner: cannot read the request: {exc}", file=sys.stderr)
        return 2
    if args.socket:
        channel = SocketChannel(args.socket)
        # Before the import: the host sees a crash while importing as EOF.
        channel.conn = channel.connect()
        if channel.conn is None:
            return 2
    _setup_paths(args.root, args.path)
    runner = Runner(args.handler, args.mode, args.convention)
    if args.http:
        channel = HTTPChannel(args.http)  # listening only now: ready once imported
    return serve(runner, channel)


if __name__ == "__main__":
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        # Skip interpreter shutdown: the function's non-daemon threads or atexit hooks must not
        # keep the process (or its container) alive once the answer is out.
        os._exit(code & 0xFF if code >= 0 else 1)
