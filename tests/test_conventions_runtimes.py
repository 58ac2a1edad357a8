"""A function with a convention on the container runtimes: its image carries the runner's
conventions (functions/conventions) and the runner is started with `--convention`, so the
same Windmill-style `main(name)` answers a webhook (a path and a query after the trigger) and a
dispatch on Docker and on Kubernetes (the fake API server's docker kubelet), as on local."""

import json
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from executions.models import Execution
from functions.models import FunctionVersion
from functions.selectors import version_wait
from tests.docker_engine import needs_docker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, needs_docker]

SOURCE = "# {marker}\ndef main(name: str):\n    return {{'hello': name}}\n"


@pytest.mark.parametrize("runtime", ["docker", "kubernetes"])
def test_a_convention_function_answers_webhook_and_dispatch(api, celery_worker_process,
                                                            worker_kube, runtime):
    name = f"conv-{runtime[:4]}-{uuid.uuid4().hex[:6]}"
    created = api.post("/api/functions/", {
        "name": name, "runtime": runtime, "convention": "windmill",
        "source": SimpleUploadedFile("main.py", SOURCE.format(marker=name).encode())},
        format="multipart")
    assert created.status_code == 201, created.content
    assert created.json()["convention"] == "windmill"
    assert created.json()["version"]["handler"] == "main.main"
    trigger = api.post("/api/triggers/", {"name": name, "function": name, "kind": "http",
                                          "public": True}, format="json")
    assert trigger.status_code == 201, trigger.content
    version = version_wait(version=FunctionVersion.objects.get(function__name=name),
                           timeout=300)
    assert version.status == "ready" and version.image, version.build_log

    answer = Client().post(f"/t/{name}/some/path", data=json.dumps({"name": "Ada"}),
                           content_type="application/json")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"hello": "Ada"}
    execution = Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"])
    assert execution.http_request and execution.runtime == runtime
    assert execution.input["path"] == "/some/path" and execution.input["method"] == "POST"

    response = api.post(f"/api/triggers/{name}/dispatch/?wait=60",
                        {"payload": {"name": "Bob"}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["output"] == {"hello": "Bob"}, response.json()


FISSION = ("# {marker}\nfrom flask import request\n\n\ndef main():\n"
           "    return {{'method': request.method, 'q': request.args.get('q'),\n"
           "            'path': request.path}}\n")


def test_a_convention_whose_platform_package_is_implied_runs_in_its_image(
        api, celery_worker_process):
    """Flask is not in the upload: the fission convention adds it to the version's
    requirements, and the image installs it (wheels fetched by the worker, no network)."""
    name = f"conv-fis-{uuid.uuid4().hex[:6]}"
    created = api.post("/api/functions/", {
        "name": name, "runtime": "docker", "convention": "fission",
        "source": SimpleUploadedFile("user.py", FISSION.format(marker=name).encode())},
        format="multipart")
    assert created.status_code == 201, created.content
    assert "# added by the fission convention" in created.json()["version"]["requirements"]
    api.post("/api/triggers/", {"name": name, "function": name, "kind": "http",
                                "public": True}, format="json")
    version = version_wait(version=FunctionVersion.objects.get(function__name=name),
                           timeout=300)
    assert version.status == "ready" and version.image, version.build_log
    assert any(line.lower().startswith("flask==")
               for line in version.installed_packages.splitlines()), \
        version.installed_packages
    answer = Client().get(f"/t/{name}/x?q=1")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"method": "GET", "q": "1", "path": "/x"}
    assert Execution.objects.get(task_id=answer["X-KubeFunction-Task-Id"]).runtime == "docker"
