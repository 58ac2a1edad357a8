"""The one interface every runtime implements, and the plain values it speaks in.

Runtimes see no Django model: the run service turns a `FunctionVersion` into a `FunctionSpec`
(`functions.specs`, with `PrepareResult`, what `prepare` answers), and the runtime answers with an
`Outcome`. A runtime raises `RuntimeUnavailable` when the platform
(not the function) failed and the invocation may be retried, `RuntimeFailure` when it failed for
good.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from functions.specs import FunctionSpec, PrepareResult


@dataclass(frozen=True)
class InvocationContext:
    """What the function's `context` argument carries."""

    execution_id: str
    task_id: str
    deadline: float  # epoch seconds
    attempt: int = 1  # 1 = first; a retry is a new attempt of the same execution
    # The payload is a webhook's HTTP request description (functions/conventions/base.py),
    # which the function's convention turns into its event.
    http: bool = False


@dataclass
class Outcome:
    """The result of one invocation, as stored on the execution."""

    status: str  # "succeeded", "failed" or "timed_out"
    output: Any = None
    output_truncated: bool = False
    error_type: str = ""
    error: str = ""
    logs: str = ""
    logs_truncated: bool = False
    exit_code: int | None = None
    cold: bool = True
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    # Cold start only: seconds from the runtime starting the process/container/pod to the
    # handler imported — measured whole where the runtime sees it, else what it saw of the start
    # plus the runner's import time. None for a warm invocation, and when the runner never
    # answered.
    init_seconds: float | None = None


class RuntimeUnavailable(Exception):
    """The platform could not run the invocation now; retrying later may work."""


class RuntimeFailure(Exception):
    """The platform cannot run this invocation at all (e.g. the version cannot be prepared)."""


class Runtime(abc.ABC):
    """Where invocations run. Callers reach a runtime only through this interface: what a
    version needs before it runs (`runs_images`, `needs_prepare`, `prepare`), running it
    (`invoke`), and looking after what runtimes leave behind (`release`, `remove_orphans`,
    `scale_idle`, `close`), besides `health`."""

    name: str = ""
    # True when invoking again for the same execution re-attaches to the first attempt instead of
    # running the function a second time (Kubernetes Jobs are named after the execution), so a
    # redelivered task may take over an execution its dead worker left `running`.
    resumable: bool = False
    # True when a version runs as a container image, which `functions.images` builds and pushes
    # (`spec.image`); the runtime's `prepare` only makes sure it can be pulled.
    runs_images: bool = False

    @abc.abstractmethod
    def prepare(self, spec: FunctionSpec) -> PrepareResult:
        """Make the version runnable (unpack, install requirements, build an image). Idempotent."""

    def needs_prepare(self, spec: FunctionSpec) -> bool:
        """True when `prepare` has real work to do, so it should run as a build task."""
        return True

    @abc.abstractmethod
    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        """Run the function once with `payload` and return its outcome by `context.deadline`."""

    def release(self, spec: FunctionSpec) -> None:  # noqa: B027 - optional hook
        """Drop warm resources held for the version."""

    def remove_orphans(self) -> int:
        """Stop what dead worker processes of this host left running (before a lost attempt
        runs again); returns how many were removed. Raises whatever reaching the backend raises.
        """
        return 0

    def scale_idle(self) -> list[str]:
        """Scale down the warm capacity of versions idle past their idle time, wherever it lives
        (the beat task `executions.scale_idle_warm`); returns what was scaled down. Raises
        `RuntimeUnavailable` / `RuntimeFailure` when the backend cannot be reached."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop everything this runtime holds in this process (warm runners, clients)."""

    def health(self) -> tuple[bool, str]:
        """(ok, human-readable detail) for `doctor` and readiness checks."""
        return True, "ok"
