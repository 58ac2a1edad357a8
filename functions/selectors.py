"""Reads over functions and their versions that commands, pages and the API share."""

from __future__ import annotations

import time

from . import executor
from .models import Function, FunctionVersion, VersionStatus


def builds_image(function: Function) -> bool:
    """True when the function's runtime runs container images (`Runtime.runs_images`, asked
    through `functions.executor`)."""
    return executor.runtime(function.effective_runtime).runs_images


def version_is_built(version: FunctionVersion) -> bool:
    """Whether the version's build has ended: failed, or ready with what its runtime needs."""
    if version.status == VersionStatus.FAILED:
        return True
    return version.status == VersionStatus.READY and (
        bool(version.image) or not builds_image(version.function))


def version_wait(*, version: FunctionVersion, timeout: float) -> FunctionVersion:
    """Re-read the version until its build ends or `timeout` seconds pass (bounded polling, for
    a command or a request; a worker never waits for a build)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not version_is_built(version) and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.5)
        version.refresh_from_db()
    return version
