"""The local runtime: functions run in child processes of the worker, with a small warm pool."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from functions.artifacts import SourceRejected, unpack
from functions.requirements import install_for_local
from functions.specs import FunctionSpec, PrepareResult

from ..base import InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable
from ..host import remove_stale_folders
from ..warm_pool import PooledRuntime, PoolLimits, WarmPool
from ..wire import exchange_outcome, late_outcome, runner_request
from . import sandbox as sandboxing
from .process import RUNNER_PATH, RunnerProcess

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def work_dir() -> Path:
    return Path(settings.KUBEFUNCTION_WORK_DIR)


def source_dir(spec: FunctionSpec) -> Path:
    """Where the version's source is unpacked: content addressed, shared by all its processes.

    The upload's file name is part of the address: the same bytes uploaded as `a.py` and as
    `b.py` are two different modules."""
    if not _SAFE_NAME.match(spec.sha256):
        raise RuntimeFailure(f"version {spec.version_id} has an unusable sha256 {spec.sha256!r}")
    name = hashlib.sha256(spec.source_name.encode("utf-8")).hexdigest()[:16]
    return work_dir() / "sources" / f"{spec.sha256}-{name}"


def requirements_digest(requirements: str) -> str:
    """Content address of an installed requirements set (the interpreter is part of the content)."""
    python = f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}"
    text = f"{python}-{platform.machine()}\n{requirements.strip()}\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def deps_dir(spec: FunctionSpec) -> Path | None:
    """Where the version's requirements are installed (pip --target), None without any."""
    if not spec.requirements.strip():
        return None
    return work_dir() / "deps" / requirements_digest(spec.requirements)


def pool_key(spec: FunctionSpec) -> tuple:
    """Processes are interchangeable only if everything that shaped them at start is equal."""
    return (spec.version_id, spec.sha256, spec.handler, spec.mode, spec.convention, spec.memory_mb,
            spec.network, spec.requirements.strip(), tuple(sorted(spec.env.items())))


def _pool_limits() -> PoolLimits:
    return PoolLimits(
        size=settings.KUBEFUNCTION_WARM_POOL_SIZE,
        per_key=settings.KUBEFUNCTION_WARM_POOL_PER_VERSION,
        idle_seconds=settings.KUBEFUNCTION_WARM_IDLE_SECONDS,
    )


def _sandbox_limits(spec: FunctionSpec) -> tuple[tuple[int, int], ...]:
    """Rlimits of a boxed runner besides RLIMIT_AS. RLIMIT_NPROC counts every process of the
    sandbox uid on the host (root, which starts bubblewrap, is exempt), so it stops a fork bomb
    but is shared by all boxed runners; RLIMIT_FSIZE caps one file at the size of /tmp."""
    return ((resource.RLIMIT_NPROC, settings.KUBEFUNCTION_SANDBOX_NPROC),
            (resource.RLIMIT_FSIZE, settings.KUBEFUNCTION_SANDBOX_TMP_MB * 1024 * 1024))


class LocalRuntime(PooledRuntime):
    """Runs each function in a child process of the worker: the embedded default.

    Each runner starts inside bubblewrap (see `sandbox`): its own uid, PID, mount, IPC, UTS and
    network namespaces (a function asking for network gets slirp4netns's NAT, walled off from
    the host and private ranges, where KUBEFUNCTION_LOCAL_ALLOW_NETWORK), a root holding only
    the interpreter, the runner, the version's code and its dependencies (read-only), a
    private size-limited /tmp; plus an isolated interpreter, a
    minimal environment (never the worker's, which holds secrets), an address-space limit
    (RLIMIT_AS, which counts virtual memory, so thread-heavy libraries need more), a process
    limit, and a deadline enforced by killing the sandbox. Where no sandbox can be had, only
    superusers' functions run, unboxed, unless the operator declared the machine trusted
    (KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED); `health()` says which mode is in force.

    Sources are unpacked into KUBEFUNCTION_WORK_DIR/sources/<sha256>/, requirements installed into
    KUBEFUNCTION_WORK_DIR/deps/<digest>/; both are content addressed and safe to share between
    worker processes. Each process gets an empty HOME under KUBEFUNCTION_WORK_DIR/homes/, removed
    with it. Successful processes return to a bounded warm pool (see `WarmPool`); `close()` kills
    them all, and runs at exit. A Celery prefork child ends without exit hooks: its idle processes
    then end on their own (their stdin closes), and the next worker removes their HOME folders.
    """

    name = "local"

    def __init__(self) -> None:
        self._pool = WarmPool(_pool_limits)
        self._install_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._tidied: set[Path] = set()  # homes folders already rid of dead workers' leftovers

    # --- prepare ------------------------------------------------------------------------------

    def needs_prepare(self, spec: FunctionSpec) -> bool:
        deps = deps_dir(spec)
        return deps is not None and not deps.is_dir()

    def prepare(self, spec: FunctionSpec) -> PrepareResult:
        try:
            path = self._unpack(spec)
        except SourceRejected as exc:
            return PrepareResult(ok=False, log=f"the source cannot be unpacked: {exc}")
        deps = deps_dir(spec)
        if deps is None:
            return PrepareResult(ok=True, log=f"source unpacked in {path}; no requirements")
        ok, log = self._install(spec.requirements, deps)
        return PrepareResult(ok=ok, log=log)

    def _unpack(self, spec: FunctionSpec) -> Path:
        path = source_dir(spec)
        if not path.is_dir():
            unpack(spec.source_name, spec.read_source(), path)
        return path

    def _install(self, requirements: str, dest: Path) -> tuple[bool, str]:
        """pip install into a staging folder renamed to `dest`; returns (ok, pip's output)."""
        with self._install_lock(dest.name):
            if dest.is_dir():
                return True, f"requirements already installed in {dest}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".install-", dir=dest.parent))
            try:
                ok, log = install_for_local(requirements=requirements, staging=staging)
                if ok:
                    target = staging / "target"
                    target.mkdir(exist_ok=True)  # requirements with only comments install nothing
                    try:
                        os.rename(target, dest)
                    except OSError:
                        if not dest.is_dir():  # otherwise another process won the race
                            raise
                    log += f"\nrequirements installed in {dest}"
                return ok, log
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _install_lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._install_locks.setdefault(name, threading.Lock())

    def _ensure_ready(self, spec: FunctionSpec) -> tuple[Path, Path | None]:
        """The source and deps folders, prepared now if this host has not done it yet."""
        source, deps = source_dir(spec), deps_dir(spec)
        if source.is_dir() and (deps is None or deps.is_dir()):
            return source, deps
        try:
            self._unpack(spec)
        except SourceRejected as exc:
            raise RuntimeFailure(f"the source cannot be unpacked: {exc}") from exc
        if deps is not None:
            ok, log = self._install(spec.requirements, deps)
            if not ok:  # it installed when the version was built, so this is likely transient
                raise RuntimeUnavailable(f"installing the requirements failed: {log[-2000:]}")
        return source, deps

    # --- invoke -------------------------------------------------------------------------------

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        budget = context.deadline - time.time()
        if budget <= 0:
            return late_outcome()
        deadline = time.monotonic() + budget
        sandbox = self._sandbox_for(spec)
        request, nonce = runner_request(spec, payload, context)
        exchange, cold = self._exchange_pooled(
            (*pool_key(spec), sandbox), lambda: self._spawn(spec, sandbox), request, nonce,
            deadline)
        # A new process's start is seen whole: spawn → interpreter → import → request taken.
        return exchange_outcome(exchange, spec, cold=cold, budget=budget, unit="process",
                                guess_memory=True)

    def _sandbox_for(self, spec: FunctionSpec) -> sandboxing.Sandbox | None:
        """The sandbox to run `spec` in, None to run it unboxed; raises RuntimeFailure when it
        may not run here at all."""
        mode, detail, sandbox = sandboxing.state()
        if mode == sandboxing.SANDBOXED:
            refusal = sandboxing.network_refusal(sandbox) if spec.network else None
            if refusal:  # failing says why; running it without network would hide it
                raise RuntimeFailure(refusal)
            return sandbox
        if mode == sandboxing.UNSANDBOXED_TRUSTED or spec.owner_trusted:
            return None
        raise RuntimeFailure(f"the local runtime refuses to run this function (its owner is not "
                             f"a superuser) without a sandbox: {detail}")

    def _spawn(self, spec: FunctionSpec, sandbox: sandboxing.Sandbox | None) -> RunnerProcess:
        source, deps = self._ensure_ready(spec)
        if sandbox is not None:
            for path in (source, deps):
                if path is not None:
                    _readable_by_sandbox(path)
        homes = work_dir() / "homes"
        if homes not in self._tidied:
            self._tidied.add(homes)
            remove_stale_folders(homes)
        try:
            process = RunnerProcess.spawn(
                source_dir=source, extra_paths=[deps] if deps else [], handler=spec.handler,
                mode=spec.mode, convention=spec.convention, env=spec.env,
                memory_mb=spec.memory_mb, homes=homes,
                sandbox=sandbox, limits=_sandbox_limits(spec) if sandbox else (),
                network=spec.network and sandbox is not None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeUnavailable(f"could not start the function's process: {exc}") from exc
        return process

    # --- the rest of the interface ------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if not RUNNER_PATH.is_file():
            return False, f"local runtime: the runner is missing at {RUNNER_PATH}"
        try:
            work_dir().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=work_dir()):
                pass
        except OSError as exc:
            return False, f"local runtime: the work dir {work_dir()} is not writable: {exc}"
        _, detail, _ = sandboxing.state()
        return True, (f"local runtime: {detail}; python {platform.python_version()} at "
                      f"{sys.executable}, {self.warm_count} warm processes")


def _readable_by_sandbox(path: Path) -> None:
    """Let the sandbox uid read a folder it gets bound (unpacking and pip leave 0700 folders).

    Only the folder's own tree opens: it is bound into the box by root, so its parents (the
    work dir) may stay closed to other users of the host."""
    if path.stat().st_mode & 0o005 == 0o005:
        return
    for folder, _, files in os.walk(path):
        os.chmod(folder, os.stat(folder).st_mode | 0o755)
        for name in files:
            file = os.path.join(folder, name)
            if not os.path.islink(file):
                os.chmod(file, os.stat(file).st_mode | 0o444)
    os.chmod(path, path.stat().st_mode | 0o755)

