"""Building versions: what each runtime needs before a version can run.

The local runtime needs the requirements installed (its `prepare`, reached through
`functions.executor`); container runtimes need an image, built and pushed by
`functions.images`. A version is pending until its build ends, then ready or failed; a failed
build never becomes active and can be retried.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from kubefunction.celery import app
from kubefunction.errors import Conflict

from . import executor, images
from .build_logs import cap_log
from .models import Function, FunctionVersion, VersionStatus
from .selectors import builds_image
from .specs import version_spec

logger = logging.getLogger(__name__)

# The build task, by name: the contract with the messages in the broker (functions/tasks.py
# registers it under this name; it imports this module, not the reverse).
BUILD_TASK = "functions.build_version"


def _needs_build(version: FunctionVersion) -> bool:
    if builds_image(version.function):
        return not version.image
    return executor.runtime(version.function.effective_runtime).needs_prepare(
        version_spec(version))


def version_start_build(version: FunctionVersion) -> None:
    """For a new version: ready at once when nothing needs building, else send the build."""
    if _needs_build(version):
        transaction.on_commit(lambda: _send_build(version.pk))
    else:
        _mark_built(version, ok=True, log="ready at once: nothing to build for the "
                                          f"{version.function.effective_runtime} runtime.")


def _send_build(version_id: int) -> None:
    app.send_task(BUILD_TASK, args=[version_id])


def _mark_built(version: FunctionVersion, *, ok: bool, log: str) -> None:
    log = cap_log(log)
    version.status = VersionStatus.READY if ok else VersionStatus.FAILED
    version.build_log = log
    version.built_at = timezone.now()
    FunctionVersion.objects.filter(pk=version.pk).update(
        status=version.status, build_log=log, built_at=version.built_at)
    if ok:
        # The newest ready version becomes active; an older one only by explicit activation.
        activated = Function.objects.filter(pk=version.function_id).exclude(
            active_version__number__gt=version.number).update(active_version=version)
        if activated:
            version.function.active_version = version


def _stream_log(version_id: int):
    def write(text: str) -> None:
        FunctionVersion.objects.filter(pk=version_id).update(build_log=cap_log(text))
    return write


def _build_image(version: FunctionVersion) -> tuple[bool, str]:
    try:
        built, log = images.build_image(version_spec(version),
                                        on_log=_stream_log(version.pk))
    except images.ImageBuildFailed as exc:
        return False, str(exc)
    installed = built.installed
    if built.reused:  # the build that made it recorded what it installed
        installed = FunctionVersion.objects.filter(image_tag=built.tag).exclude(
            installed_packages="").values_list("installed_packages", flat=True).first() or ""
    FunctionVersion.objects.filter(pk=version.pk).update(
        image=built.image, image_tag=built.tag, installed_packages=installed)
    version.image, version.image_tag, version.installed_packages = \
        built.image, built.tag, installed
    return True, log


def version_build(*, version_id: int) -> FunctionVersion | None:
    """Build a pending (or failed, on retry) version for its function's runtime.

    Returns None when another worker is already building it. A ready version is built again
    only to add what it lacks (e.g. an image after a switch to a container runtime): its status
    stays ready meanwhile.
    """
    version = FunctionVersion.objects.select_related("function").get(pk=version_id)
    was_ready = version.status == VersionStatus.READY
    if not was_ready and not FunctionVersion.objects.filter(
            pk=version_id, status__in=[VersionStatus.PENDING, VersionStatus.FAILED]
    ).update(status=VersionStatus.BUILDING, build_log=""):
        return None
    try:
        if builds_image(version.function):
            ok, log = _build_image(version)
        else:
            result = executor.runtime(version.function.effective_runtime).prepare(
                version_spec(version))
            ok, log = result.ok, result.log
    except Exception as exc:  # a build must end ready or failed, never stay 'building'
        logger.exception("building %s failed", version)
        ok, log = False, f"build failed: {exc!r}"
    if was_ready:
        log = cap_log(log)
        FunctionVersion.objects.filter(pk=version.pk).update(build_log=log)
        version.build_log = log
    else:
        _mark_built(version, ok=ok, log=log)
    return version


def version_request_build(*, version: FunctionVersion) -> None:
    """Send a version's build (again): a failed one, or a ready one missing its image."""
    if version.status in (VersionStatus.BUILDING, VersionStatus.PENDING):
        raise Conflict(f"version {version.number} is already {version.status}.", field="version")
    if version.status == VersionStatus.READY and not _needs_build(version):
        raise Conflict(f"version {version.number} is built already"
                       + (f" ({version.image})." if version.image else "."), field="version")
    FunctionVersion.objects.filter(pk=version.pk, status=VersionStatus.FAILED).update(
        status=VersionStatus.PENDING)
    transaction.on_commit(lambda: _send_build(version.pk))
