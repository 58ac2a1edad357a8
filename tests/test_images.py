"""Image builds against the real Docker engine and registry (skipped without them)."""

import uuid
from dataclasses import replace

import pytest

from functions import builds, images
from functions.models import FunctionVersion
from functions.services import function_register, version_create
from functions.specs import version_spec
from kubefunction.docker_client import build_client
from tests.archives import make_zip
from tests.docker_engine import needs_docker, registry_repositories

pytestmark = [pytest.mark.django_db, needs_docker]


def register(user, name, files, **kwargs) -> FunctionVersion:
    version = function_register(name=name, owner=user, filename="code.zip",
                                data=make_zip(files), runtime="docker", **kwargs)
    assert version.status == "pending"
    return version


def test_build_push_pin_and_reuse(user):
    marker = uuid.uuid4().hex[:8]  # new content: a real build, not a reuse
    files = {"handler.py": f"import six\n# {marker}\ndef handle(e):\n    return six.__version__\n",
             "requirements.txt": "six==1.16.0\n"}
    data = make_zip(files)
    version = function_register(name=f"img-{marker}", owner=user, filename="code.zip", data=data,
                                runtime="docker")
    built = builds.version_build(version_id=version.pk)
    assert built.status == "ready", built.build_log
    repo = images.repository(f"img-{marker}")
    assert built.image.startswith(f"{repo}@sha256:")
    assert built.installed_packages == "six==1.16.0"
    assert "Successfully installed six-1.16.0" in built.build_log
    assert f"kubefunction/img-{marker}" in registry_repositories()
    client = build_client()
    labels = client.images.get(built.image_tag).labels
    assert labels["io.kubefunction.function"] == f"img-{marker}"
    assert labels["io.kubefunction.sha256"] == built.sha256
    config = client.images.get(built.image_tag).attrs["Config"]
    assert config["User"] == "10001:10001"
    # Other code, then the first code again: the third version reuses the first one's image.
    other = version_create(function=built.function, filename="code.zip", data=make_zip(
        {"handler.py": "def handle(e):\n    return 0\n", "requirements.txt": "six==1.16.0\n"}))
    builds.version_build(version_id=other.pk)
    again = version_create(function=built.function, filename="code.zip", data=data)
    assert again.number == 3
    again = builds.version_build(version_id=again.pk)
    assert again.status == "ready"
    assert "nothing to build" in again.build_log
    assert (again.image, again.installed_packages) == (built.image, "six==1.16.0")


def test_same_source_and_base_give_the_same_tag(user):
    version = register(user, "tag-a", {"handler.py": "def handle(e):\n    return 1\n"})
    spec = version_spec(version)
    assert images.content_tag(spec, "base1") == images.content_tag(spec, "base1")
    assert images.content_tag(spec, "base1") == images.content_tag(
        replace(spec, version_number=7), "base1")
    assert images.content_tag(spec, "base1") != images.content_tag(spec, "base2")
    assert images.content_tag(spec, "base1") != images.content_tag(
        replace(spec, requirements="six"), "base1")


def test_bad_requirement_fails_with_the_reason_and_never_activates(user):
    version = register(user, "bad-req", {"handler.py": "def handle(e):\n    return 1\n",
                                         "requirements.txt": "no-such-kubefunction-pkg==9.9\n"})
    built = builds.version_build(version_id=version.pk)
    assert built.status == "failed"
    assert "no-such-kubefunction-pkg" in built.build_log
    assert built.function.active_version is None
    builds.version_request_build(version=built)  # a failed build can be retried
    assert FunctionVersion.objects.get(pk=version.pk).status == "pending"


@pytest.mark.parametrize(("setting", "value", "name", "returns", "log_says"), [
    ("KUBEFUNCTION_REGISTRY", "127.0.0.1:1", "no-registry", 2, "127.0.0.1:1"),  # the reason
    ("KUBEFUNCTION_BASE_IMAGE", "kubefunction/no-such-base:1", "no-base", 3, "make services"),
], ids=["registry-down-says-why", "missing-base-image-says-how-to-fix"])
def test_a_missing_dependency_fails_the_build_and_says_so(user, settings, setting, value, name,
                                                          returns, log_says):
    setattr(settings, setting, value)
    version = register(user, name, {"handler.py": f"def handle(e):\n    return {returns}\n"})
    built = builds.version_build(version_id=version.pk)
    assert built.status == "failed"
    assert log_says in built.build_log


def test_new_version_of_a_docker_function_is_pending_until_built(user):
    version = register(user, "pend", {"handler.py": "def handle(e):\n    return 1\n"})
    builds.version_build(version_id=version.pk)
    second = version_create(function=version.function, filename="code.zip",
                            data=make_zip({"handler.py": "def handle(e):\n    return 2\n"}))
    assert second.status == "pending" and second.image == ""
    version.function.refresh_from_db()
    assert version.function.active_version_id == version.pk


def test_engine_down_fails_the_build_with_the_reason(user, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    version = register(user, "no-engine", {"handler.py": "def handle(e):\n    return 4\n"})
    built = builds.version_build(version_id=version.pk)
    assert built.status == "failed"
    assert "Docker engine is unreachable" in built.build_log
