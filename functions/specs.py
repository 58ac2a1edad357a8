"""The runtime's view of a version: a plain `FunctionSpec`, free of Django models."""

from executions.runtimes.base import FunctionSpec

from .models import FunctionVersion


def version_spec(version: FunctionVersion) -> FunctionSpec:
    """The runtime's view of a version (with its function's current limits and env)."""
    function = version.function

    def read_source() -> bytes:
        with version.source.open("rb") as handle:
            return handle.read()

    return FunctionSpec(
        version_id=version.pk, function_name=function.name, version_number=version.number,
        sha256=version.sha256, source_name=version.source_name, read_source=read_source,
        handler=version.handler, mode=version.mode, requirements=version.requirements,
        timeout_seconds=function.timeout_seconds, memory_mb=function.memory_mb,
        env=dict(function.env_vars or {}), image=version.image, network=function.network,
        payload_retention=function.payload_retention, owner_trusted=function.owner.is_superuser,
    )
