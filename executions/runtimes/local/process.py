"""One runner child process of the local runtime: spawn it, trade a request for a result, kill it.

The child is `python -I -S runner.py --serve` in its own session (so killing its process group
also kills whatever it started), with a minimal environment and an address-space limit, and it
is killed by the kernel if the worker process that started it dies (PR_SET_PDEATHSIG). Its
stdout carries only result frames; its stderr carries everything else the function wrote at the
file-descriptor level, read as stray logs. Everything read is bounded.

Boxed (the default: `sandbox`), the child is bubblewrap instead, with the runner inside it as
pid 2: killing bubblewrap's group kills the box's PID namespace, hence everything in it, and
bubblewrap reports a runner killed by signal n as exit code 128 + n (read back as -n).
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import functools
import os
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

from functions import runner as runner_module

from ..host import folder_prefix
from ..wire import Exchange, FrameError, FrameReader, LogBuffer
from .sandbox import HOME as SANDBOX_HOME
from .sandbox import Network, Sandbox, interpreter, materialize, sandbox_paths

RUNNER_PATH = Path(runner_module.__file__).resolve()
# -I: no user site, no PYTHON* variables, no script folder on sys.path; -S: no site-packages at
# all, so nothing of the platform's virtualenv is importable; -B: the source folder stays as
# unpacked (PYTHONDONTWRITEBYTECODE is ignored under -I); -X utf8: UTF-8 whatever the locale.
PYTHON_FLAGS = ("-I", "-S", "-B", "-X", "utf8")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIB = 1024 * 1024
READ_SIZE = 64 * 1024
DRAIN_READS = 64  # at most this many reads of leftover stderr after a frame (a chatty child)
# A new runner reads its first request only once the function is imported: until the request
# has left the pipe, look every READY_CHECK seconds (growing to READY_CHECK_MAX).
READY_CHECK, READY_CHECK_MAX = 0.001, 0.05


def runner_env(home: str, extra: dict[str, str]) -> dict[str, str]:
    """The child's whole environment: a few fixed variables plus the function's own."""
    env = {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": home,
    }
    env.update({str(key): str(value) for key, value in extra.items()})
    return env


def _address_space_limit(memory_mb: int) -> int | None:
    # No fixed allowance on top: the runner answers a request within 24 MiB of address space.
    if memory_mb <= 0:
        return None
    limit = memory_mb * MIB
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)


# Linux: a runner started from a process's main thread (a prefork worker child runs its tasks
# there) gets SIGKILL when that process dies, so a worker process killed mid-run (SIGKILL, OOM)
# never leaves its function running on while the redelivered message runs it again. The kernel
# ties this to the spawning *thread*, so runners started from other threads (which may end
# while the runner waits warm in the pool) go without it. Loaded before any fork.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _child_setup(memory_limit: int | None, parent: int, die_with_parent: bool,
                 limits: tuple[tuple[int, int], ...] = ()) -> None:
    """Runs in the forked child before exec: die with the parent, cap the address space (and,
    boxed, the other `limits`, which bind once the launcher has dropped root)."""
    if _LIBC is not None and die_with_parent:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    for which, value in limits:
        resource.setrlimit(which, (value, value))


class RunnerProcess:
    """A live runner child. Not thread-safe: one request at a time, by whoever holds it."""

    def __init__(self, popen: subprocess.Popen, home: str | None,
                 spawned_at: float | None = None, boxed: bool = False,
                 network: Network | None = None) -> None:
        self.popen = popen
        self.network = network  # the box's slirp4netns, ended with it
        self.boxed = boxed  # started inside bubblewrap, which reports a signal as 128 + n
        self.pid = popen.pid
        self.home = home
        self.started_at = time.monotonic()
        self.spawned_at = self.started_at if spawned_at is None else spawned_at
        self.ready_at: float | None = None  # when it took its first request: function imported
        self.last_used = self.started_at
        self.cpu_reported = 0.0  # CPU seconds already reported in frames
        assert popen.stdin and popen.stdout and popen.stderr
        self._stdin = popen.stdin.fileno()
        self._stdout = popen.stdout.fileno()
        self._stderr = popen.stderr.fileno()
        for fd in (self._stdin, self._stdout, self._stderr):
            os.set_blocking(fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ, "stdout")
        self._selector.register(self._stderr, selectors.EVENT_READ, "stderr")
        self._stderr_open = True
        self._closed = False
        self._rusage: Any = None
        self.killed = False  # True once we killed it while it still ran

    @classmethod
    def spawn(cls, *, source_dir: Path, extra_paths: list[Path], handler: str, mode: str,
              env: dict[str, str], memory_mb: int, homes: Path, convention: str = "",
              sandbox: Sandbox | None = None, limits: tuple[tuple[int, int], ...] = (),
              network: bool = False) -> RunnerProcess:
        """Start a runner for the function in `source_dir`, its HOME a new folder in `homes`
        (or, in `sandbox`, the sandbox's private /tmp); raises OSError if it cannot start."""
        # No Python-level locks or imports between fork and exec: a partial of a function
        # that only calls into C.
        preexec = functools.partial(_child_setup, _address_space_limit(memory_mb), os.getpid(),
                                    threading.current_thread() is threading.main_thread(),
                                    limits)
        if sandbox is not None:
            return cls._spawn_boxed(sandbox, source_dir, extra_paths, handler, mode, env, preexec,
                                    network, convention)
        argv = [sys.executable, *PYTHON_FLAGS, str(RUNNER_PATH), "--serve",
                "--root", str(source_dir), "--handler", handler, "--mode", mode,
                *(["--convention", convention] if convention else [])]
        for path in extra_paths:
            argv += ["--path", str(path)]
        homes.mkdir(parents=True, exist_ok=True)
        home = tempfile.mkdtemp(prefix=folder_prefix(), dir=homes)
        spawned_at = time.monotonic()
        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=source_dir, env=runner_env(home, env), start_new_session=True,
                preexec_fn=preexec, close_fds=True, bufsize=0,
            )
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        return cls(popen, home, spawned_at)

    @classmethod
    def _spawn_boxed(cls, sandbox: Sandbox, source_dir: Path, extra_paths: list[Path],
                     handler: str, mode: str, env: dict[str, str], preexec,
                     network: bool = False, convention: str = "") -> RunnerProcess:
        code, deps = sandbox_paths(extra_paths)
        runner_args = ["--serve", "--root", code, "--handler", handler, "--mode", mode,
                       *(["--convention", convention] if convention else [])]
        for path in deps:
            runner_args += ["--path", path]
        argv, data = sandbox.command(python=interpreter(), python_flags=PYTHON_FLAGS,
                                     runner=str(RUNNER_PATH), code=source_dir, deps=extra_paths,
                                     runner_args=runner_args, env=runner_env(SANDBOX_HOME, env),
                                     network=network)
        argv, fds = materialize(argv, data)
        wiring = Network() if network else None
        if wiring is not None:
            for name, fd in wiring.child_fds().items():
                argv = [part.replace(f"{{{name}}}", str(fd)) for part in argv]
                fds.append(fd)
        spawned_at = time.monotonic()
        try:
            # bubblewrap itself gets no environment at all: the runner's is in a file of the box.
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env={},
                start_new_session=True, preexec_fn=preexec, close_fds=True,
                pass_fds=fds, bufsize=0,
            )
        except BaseException:
            if wiring is not None:
                wiring.close()
            raise
        finally:
            for fd in fds:
                if wiring is None or fd not in wiring.child_fds().values():
                    os.close(fd)
        process = cls(popen, None, spawned_at, boxed=True, network=wiring)
        if wiring is not None:
            try:
                wiring.start()
            except BaseException:
                process.kill()
                raise
        return process

    @property
    def cold_start_seconds(self) -> float | None:
        """Seconds from spawning it to its taking the first request (interpreter start-up and
        the function's import), once known."""
        return None if self.ready_at is None else self.ready_at - self.spawned_at

    def _request_taken(self) -> bool:
        """True once nothing of the request is left in the stdin pipe."""
        unread = array.array("i", [0])
        try:
            fcntl.ioctl(self._stdin, termios.FIONREAD, unread, True)
        except OSError:
            return True
        return unread[0] == 0

    # --- one request ------------------------------------------------------------------------

    def exchange(self, request: bytes, nonce: str, deadline: float, *, max_log_bytes: int,
                 max_frame_bytes: int) -> Exchange:
        """Send one request line and read until its frame, the process's end, or `deadline`
        (a `time.monotonic()` value). After a timeout or the process's end, it is killed."""
        reader = FrameReader(nonce, max_log_bytes, max_frame_bytes)
        stray = LogBuffer(max_log_bytes)
        pending = memoryview(request)
        try:
            pending = pending[os.write(self._stdin, pending):]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            return self._ended(reader, stray, sent=False)
        if pending:  # a request larger than the pipe: finish writing as the child reads
            self._selector.register(self._stdin, selectors.EVENT_WRITE, "stdin")
        watch, check = self.ready_at is None, READY_CHECK
        try:
            while not reader.done:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return self._timed_out(reader, stray)
                if watch and not pending and self._request_taken():
                    self.ready_at, watch = time.monotonic(), False
                if watch:
                    timeout, check = min(timeout, check), min(check * 1.5, READY_CHECK_MAX)
                for key, _ in self._selector.select(timeout):
                    if key.data == "stdin":
                        pending = self._write_more(pending)
                        continue
                    try:
                        chunk = os.read(key.fd, READ_SIZE)
                    except BlockingIOError:
                        continue
                    if key.data == "stderr":
                        self._take_stderr(chunk, stray)
                    elif chunk:
                        if watch:  # it answers: it took the request since the last look
                            self.ready_at, watch = time.monotonic(), False
                        reader.feed(chunk)
                    else:  # the result pipe closed: the runner is exiting
                        self._has_exited(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                        return self._ended(reader, stray)
        except FrameError as exc:
            self.kill(drain_into=stray)
            return self._result(reader, stray, protocol_error=str(exc))
        finally:
            if pending and not self._closed:
                self._selector.unregister(self._stdin)
        self._drain_stderr(stray)
        self.last_used = time.monotonic()
        return self._result(reader, stray, frame=reader.result())

    def _write_more(self, pending: memoryview) -> memoryview:
        try:
            pending = pending[os.write(self._stdin, pending):]
        except BlockingIOError:
            return pending
        except BrokenPipeError:
            pending = pending[len(pending):]  # the child is gone; its stdout EOF tells the rest
        if not pending:
            self._selector.unregister(self._stdin)
        return pending

    def _take_stderr(self, chunk: bytes, stray: LogBuffer) -> None:
        if chunk:
            stray.add(chunk)
        elif self._stderr_open:  # closed by the function; keep waiting for the frame
            self._stderr_open = False
            self._selector.unregister(self._stderr)

    def _drain_stderr(self, stray: LogBuffer) -> None:
        """Read what is already in the stderr pipe (written before the frame) without waiting."""
        for _ in range(DRAIN_READS):
            if not self._stderr_open:
                return
            try:
                chunk = os.read(self._stderr, READ_SIZE)
            except (BlockingIOError, OSError):
                return
            self._take_stderr(chunk, stray)

    def _timed_out(self, reader: FrameReader, stray: LogBuffer) -> Exchange:
        self.kill(drain_into=stray)
        return self._result(reader, stray, timed_out=True)

    def _ended(self, reader: FrameReader, stray: LogBuffer, sent: bool = True) -> Exchange:
        self.kill(drain_into=stray)
        return self._result(reader, stray, sent=sent)

    def _result(self, reader: FrameReader, stray: LogBuffer, **fields: Any) -> Exchange:
        exchange = Exchange(**fields)
        exchange.stray = reader.stray.text() + stray.text()
        exchange.stray_truncated = reader.stray.truncated or stray.truncated
        if exchange.frame is not None:
            self.cpu_reported += float(exchange.frame.get("cpu_seconds") or 0)
        exchange.cold_start_seconds = self.cold_start_seconds
        if self._closed:
            code = self.popen.returncode if self.popen.returncode is not None else -signal.SIGKILL
            if code < 0:  # killed by signal -code: as a shell reports it
                exchange.returncode, exchange.signal = 128 - code, -code
            else:
                exchange.returncode = code
            exchange.killed = self.killed
            if self._rusage is not None:
                # Not ru_maxrss: Linux carries the worker's own peak into a child's through
                # fork and exec, so it would report the worker's size.
                total = self._rusage.ru_utime + self._rusage.ru_stime
                exchange.cpu_seconds = max(0.0, total - self.cpu_reported)
        return exchange

    # --- life and death ---------------------------------------------------------------------

    def alive(self) -> bool:
        """True while the process runs (kills what is left and closes our side once it ended)."""
        if self._closed:
            return False
        if not self._has_exited():
            return True
        self.kill()
        return False

    def _has_exited(self, timeout: float = 0.0) -> bool:
        """True once the runner has exited, without reaping it; waits up to `timeout` seconds."""
        if timeout > 0:
            try:
                pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):  # not Linux 5.3+: do not wait
                pidfd = None
            if pidfd is not None:
                try:
                    select.select([pidfd], [], [], timeout)
                finally:
                    os.close(pidfd)
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill(self, drain_into: LogBuffer | None = None) -> None:
        """Kill the process group, reap the runner, close our ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.killed = not self._has_exited()
        # Signal the group before reaping its leader: while the leader is unreaped its pid (the
        # group id) cannot be reused, so the signal cannot reach anyone else.
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            _, status, self._rusage = os.wait4(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if self.boxed and 128 < code < 128 + signal.NSIG:
                # bubblewrap exits 128 + n when its child died of signal n (a runner exiting
                # with such a code on its own reads the same: the outcome says "killed").
                code = 128 - code
            self.popen.returncode = code
        except ChildProcessError:
            self.popen.returncode = -signal.SIGKILL
        if drain_into is not None:
            self._drain_stderr(drain_into)
        self._selector.close()
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
        if self.network is not None:
            self.network.close()
