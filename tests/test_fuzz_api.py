"""schemathesis against the served OpenAPI schema, over a live server, as an authenticated user:
no 5xx, and every documented response matches its schema. Its report is printed.

Bounded: a fixed seed, a few examples per operation, no shrinking, and `?wait=` capped at one
second so no request waits long for a worker that is not running. Path parameters name seeded
objects (a function, a trigger, a finished execution, a batch), so operations reach their logic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from executions.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"
MAX_EXAMPLES = 30
# The coverage phase (boundary values of every parameter) takes minutes on a small machine:
# KUBEFUNCTION_FUZZ_PHASES=examples,coverage,fuzzing runs it too.
PHASES = os.environ.get("KUBEFUNCTION_FUZZ_PHASES", "examples,fuzzing")


@pytest.fixture
def fuzz_user(user, settings):
    settings.KUBEFUNCTION_MAX_WAIT = 1
    client = APIClient()
    client.force_authenticate(user)
    created = client.post("/api/functions/", {"name": "fuzz-fn", "source": SimpleUploadedFile(
        "hello.py", b"def handle(event, context):\n    return event\n")}, format="multipart")
    assert created.status_code == 201, created.content
    trigger = client.post("/api/triggers/", {"name": "fuzz-trigger", "function": "fuzz-fn"},
                          format="json")
    assert trigger.status_code == 201, trigger.content
    dispatched = client.post("/api/triggers/fuzz-trigger/dispatch/", {"payloads": [1, 2]},
                             format="json")
    assert dispatched.status_code == 202, dispatched.content
    execution = Execution.objects.filter(function__name="fuzz-fn").first()
    Execution.objects.filter(pk=execution.pk).update(
        status="succeeded", output=1, started_at=timezone.now(), finished_at=timezone.now())
    return {"token": Token.objects.create(user=user).key, "task_id": execution.task_id,
            "batch": str(execution.batch_id)}


def config_file(path: Path, objects: dict) -> Path:
    """Path parameters name the seeded objects, so operations reach their logic, not a 404."""
    bindings = [(r"^/api/functions/\\{name\\}", "name", "fuzz-fn"),
                (r"^/api/triggers/\\{name\\}", "name", "fuzz-trigger"),
                (r"^/api/executions/\\{task_id\\}", "task_id", objects["task_id"]),
                (r"^/api/batches/\\{id\\}", "id", objects["batch"])]
    path.write_text("".join(
        f'[[operations]]\ninclude-path-regex = "{regex}"\nparameters = {{ {name} = "{value}" }}\n\n'
        for regex, name, value in bindings))
    return path


def test_schemathesis_finds_no_server_error_and_no_schema_violation(live_server, fuzz_user,
                                                                    tmp_path):
    st = Path(sys.executable).with_name("st")
    config = config_file(tmp_path / "schemathesis.toml", fuzz_user)
    command = [str(st), "--config-file", str(config), "run", f"{live_server.url}/api/schema/",
               "--header", f"Authorization: Token {fuzz_user['token']}",
               "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
               "--phases", PHASES, "--seed", "7", "--no-shrink",
               "--workers", "2", "--request-timeout", "30", "--max-failures", "50",
               "--suppress-health-check", "all",
               "--report", "junit", "--report-dir", str(tmp_path)]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    # Run in tmp_path: schemathesis keeps its cache (.schemathesis/) in the working folder.
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    print(result.stdout[-20000:])  # the schemathesis report, in the test output
    print(result.stderr[-5000:])
    assert result.returncode == 0, "schemathesis found failures: see its report above"
