"""Operations on functions and versions: register, update, upload a version, activate.

Building a version (requirements, images) lives in `functions.builds`.
"""

from __future__ import annotations

import hashlib

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max

from kubefunction.errors import Conflict, InvalidInput

from . import builds, quotas
from .models import DNS1123_LABEL, Function, FunctionVersion, PayloadRetention, VersionStatus
from .validation import validate_source

EDITABLE_SETTINGS = ("description", "runtime", "timeout_seconds", "memory_mb", "env_vars",
                     "network", "max_concurrency", "payload_retention", "payload_retention_days")


def retention_check(policy: str, days: int | None) -> None:
    """Refuse a retention without its days, or days without the `days` retention."""
    if policy == PayloadRetention.DAYS and days is None:
        raise InvalidInput("payload_retention_days is required when payload_retention is "
                           "'days'.", field="payload_retention_days")
    if policy != PayloadRetention.DAYS and days is not None:
        raise InvalidInput(f"payload_retention_days applies only to payload_retention 'days' "
                           f"(not '{policy}').", field="payload_retention_days")


def _check_env_vars(env_vars: object) -> dict[str, str]:
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise InvalidInput("env_vars must be an object mapping names to string values.",
                           field="env_vars")
    for key in env_vars:
        if not key or "=" in key or "\x00" in key or key[0].isdigit():
            raise InvalidInput(f"'{key}' is not a valid environment variable name.",
                               field="env_vars")
    return env_vars


def _full_clean(function: Function) -> None:
    try:
        function.full_clean(exclude=["owner", "active_version"])
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidInput(" ".join(messages), field=field) from exc


@transaction.atomic
def function_register(*, name: str, owner, filename: str, data: bytes,
                      handler: str | None = None, mode: str | None = None,
                      convention: str = "", timeout_seconds: int | None = None,
                      memory_mb: int | None = None,
                      env_vars: dict | None = None, description: str = "",
                      runtime: str = "", network: bool = False,
                      payload_retention: str = PayloadRetention.KEEP,
                      payload_retention_days: int | None = None) -> FunctionVersion:
    """Create a function and its first version from an upload. Returns the version."""
    try:
        DNS1123_LABEL(name)
    except ValidationError as exc:
        raise InvalidInput(exc.messages[0], field="name") from exc
    if Function.objects.filter(name=name).exists():
        raise InvalidInput(f"a function named '{name}' already exists.", field="name")
    quotas.check_new_function(owner)  # the upload's size: version_create (one transaction)
    checked = validate_source(filename=filename, data=data, handler=handler, mode=mode,
                              convention=convention)
    function = Function(name=name, owner=owner, description=description, runtime=runtime,
                        handler=checked.handler, mode=checked.mode, network=network,
                        convention=checked.convention,
                        env_vars=_check_env_vars(env_vars or {}),
                        payload_retention=payload_retention,
                        payload_retention_days=payload_retention_days)
    retention_check(payload_retention, payload_retention_days)
    if timeout_seconds is not None:
        function.timeout_seconds = timeout_seconds
    if memory_mb is not None:
        function.memory_mb = memory_mb
    _full_clean(function)
    function.save()
    return version_create(function=function, filename=filename, data=data, user=owner,
                          handler=checked.handler, mode=checked.mode,
                          convention=checked.convention)


@transaction.atomic
def function_update(*, function: Function, **changes) -> Function:
    """Change a function's settings (not its code: upload a version for that)."""
    unknown = set(changes) - set(EDITABLE_SETTINGS)
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"'{field}' cannot be changed here.", field=field)
    if "env_vars" in changes:
        _check_env_vars(changes["env_vars"])
    if changes.get("payload_retention", PayloadRetention.DAYS) != PayloadRetention.DAYS:
        changes.setdefault("payload_retention_days", None)  # leaving `days` drops its days
    for key, value in changes.items():
        setattr(function, key, value)
    retention_check(function.payload_retention, function.payload_retention_days)
    _full_clean(function)
    function.save()
    return function


@transaction.atomic
def version_create(*, function: Function, filename: str, data: bytes, user=None,
                   handler: str | None = None, mode: str | None = None,
                   convention: str | None = None) -> FunctionVersion:
    """Upload a new immutable version. The same bytes, handler and convention as the latest
    version reuse it. `convention` None keeps the function's.

    A version that needs no preparation is ready at once and becomes active; otherwise it is
    pending and a build task is sent after commit.
    """
    function = Function.objects.select_for_update().get(pk=function.pk)
    convention = function.convention if convention is None else convention
    if handler is None and convention == function.convention:
        handler = function.handler  # a new convention finds its own entry point instead
    checked = validate_source(filename=filename, data=data, handler=handler,
                              mode=mode or (None if convention else function.mode),
                              convention=convention)
    sha256 = hashlib.sha256(data).hexdigest()
    latest = function.versions.order_by("-number").first()
    if latest and (latest.sha256, latest.handler, latest.mode, latest.convention) == (
            sha256, checked.handler, checked.mode, checked.convention) \
            and latest.status != VersionStatus.FAILED:
        return latest
    quotas.check_upload(function.owner, len(data))
    number = (function.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = FunctionVersion(
        function=function, number=number, sha256=sha256, source_name=filename.rsplit("/", 1)[-1],
        source_size=len(data), handler=checked.handler, mode=checked.mode,
        convention=checked.convention, requirements=checked.requirements, created_by=user,
    )
    version.source.save(version.source_name, ContentFile(data), save=False)
    version.save()
    if (function.handler, function.mode, function.convention) != (
            checked.handler, checked.mode, checked.convention):
        Function.objects.filter(pk=function.pk).update(
            handler=checked.handler, mode=checked.mode, convention=checked.convention)
    builds.version_start_build(version)
    return version


def version_activate(*, version: FunctionVersion) -> Function:
    """Make a ready version the one invocations run (roll back or forward)."""
    if version.status != VersionStatus.READY:
        raise Conflict(
            f"version {version.number} is {version.status}; only a ready version can be "
            "activated.", field="version")
    Function.objects.filter(pk=version.function_id).update(active_version=version)
    version.function.active_version = version
    return version.function
