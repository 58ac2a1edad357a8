"""As a new user would, on the Docker runtime: upload with requirements, build, find the image in
the registry, delete it from the engine, dispatch, and get the output (the runtime pulls it)."""

import uuid
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from docker.errors import ImageNotFound

from functions.models import FunctionVersion
from functions.selectors import version_wait
from kubefunction.docker_client import build_client
from tests.archives import make_zip
from tests.docker_engine import needs_docker, registry_repositories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, needs_docker]


def test_build_delete_dispatch_pulls_it_back(api, celery_worker_process):
    marker = uuid.uuid4().hex[:8]
    source = make_zip({
        "handler.py": f"# {marker}\nfrom slugify import slugify\n\n"
                      "def handle(event, context):\n"
                      "    slug = slugify(event['text'])\n"
                      "    return {'slug': slug, 'v': context.function_version}\n",
        "requirements.txt": "python-slugify==8.0.4\n"})
    created = api.post("/api/functions/", {
        "name": f"slug-{marker}", "runtime": "docker",
        "source": SimpleUploadedFile("code.zip", source)}, format="multipart")
    assert created.status_code == 201, created.content
    assert created.json()["version"]["status"] == "pending"
    api.post("/api/triggers/", {"name": f"slug-{marker}", "function": f"slug-{marker}"},
             format="json")

    version = FunctionVersion.objects.get(function__name=f"slug-{marker}")
    version = version_wait(version=version, timeout=300)
    assert version.status == "ready", version.build_log
    assert "python-slugify==8.0.4" in version.installed_packages
    assert "text-unidecode==" in version.installed_packages  # resolved, not just asked for

    assert f"kubefunction/slug-{marker}" in registry_repositories()

    client = build_client()
    client.images.remove(version.image_tag, force=True)
    with pytest.raises(ImageNotFound):
        client.images.get(version.image)

    response = api.post(f"/api/triggers/slug-{marker}/dispatch/?wait=60",
                        {"payload": {"text": "Héllo Dócker"}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded", body
    assert body["output"] == {"slug": "hello-docker", "v": 1}
    assert body["runtime"] == "docker"
    assert client.images.get(version.image)  # pulled back by digest


def test_build_function_command_retries_and_reports_a_failed_build(api, celery_worker_process):
    marker = uuid.uuid4().hex[:8]
    source = make_zip({"handler.py": "def handle(e):\n    return 1\n",
                       "requirements.txt": f"no-such-kubefunction-{marker}==1.0\n"})
    api.post("/api/functions/", {"name": f"broken-{marker}", "runtime": "docker",
                                 "source": SimpleUploadedFile("code.zip", source)},
             format="multipart")
    version = FunctionVersion.objects.get(function__name=f"broken-{marker}")
    version = version_wait(version=version, timeout=120)
    assert version.status == "failed"
    out = StringIO()
    with pytest.raises(CommandError, match="the build of v1 failed"):
        call_command("build_function", f"broken-{marker}", "--wait", "--timeout", "120",
                     stdout=out)
    assert "build of" in out.getvalue() and f"no-such-kubefunction-{marker}" in out.getvalue()
    with pytest.raises(CommandError, match="no function named"):
        call_command("build_function", "ghost", stdout=StringIO())
