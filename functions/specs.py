"""The runtime's view of a version: plain values, free of Django models.

`version_spec` turns a `FunctionVersion` into a `FunctionSpec`, all a runtime
(`executions.runtimes`) and an image build (`functions.images`) need of it; a runtime's
`prepare` answers with a `PrepareResult`. The functions app defines these values and the
executions app runs them: nothing here imports `executions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only named in an annotation: this module stays free of Django models
    from .models import FunctionVersion


@dataclass(frozen=True)
class FunctionSpec:
    """Everything a runtime needs to run one version of a function."""

    version_id: int
    function_name: str
    version_number: int
    sha256: str
    source_name: str
    read_source: Callable[[], bytes] = field(compare=False, repr=False)
    handler: str = "handler.handle"
    mode: str = "handler"  # "handler" or "script"
    convention: str = ""  # functions/conventions: "" (ours), "lambda", "openwhisk", ...
    requirements: str = ""
    timeout_seconds: float = 30
    memory_mb: int = 256
    env: dict[str, str] = field(default_factory=dict, compare=False)
    # Container runtimes: the version's built image, pinned by digest
    # ("127.0.0.1:5000/kubefunction/<function>@sha256:…"); empty until it is built.
    image: str = ""
    network: bool = False  # the function asked for network access (containers have none otherwise)
    # What the run keeps of the payload: "keep", "days" or "hash" (executions.retention).
    payload_retention: str = "keep"
    # The owner is a superuser: the local runtime without a sandbox runs only such functions.
    owner_trusted: bool = False


@dataclass
class PrepareResult:
    """What preparing a version on a runtime (a build) ended with, and its log."""

    ok: bool
    log: str = ""


def version_spec(version: FunctionVersion) -> FunctionSpec:
    """The runtime's view of a version (with its function's current limits and env)."""
    function = version.function

    def read_source() -> bytes:
        with version.source.open("rb") as handle:
            return handle.read()

    return FunctionSpec(
        version_id=version.pk, function_name=function.name, version_number=version.number,
        sha256=version.sha256, source_name=version.source_name, read_source=read_source,
        handler=version.handler, mode=version.mode, convention=version.convention,
        requirements=version.requirements,
        timeout_seconds=function.timeout_seconds, memory_mb=function.memory_mb,
        env=dict(function.env_vars or {}), image=version.image, network=function.network,
        payload_retention=function.payload_retention, owner_trusted=function.owner.is_superuser,
    )
