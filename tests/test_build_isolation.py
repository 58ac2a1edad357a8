"""Builds that cannot reach the host (issue 11): a user's requirements.txt holds named
requirements only, dependencies are fetched as wheels with an isolated pip (no package code runs
on the host), image builds have no network, resource limits and a deadline, and build logs are
capped.

The refusals go through the public API as a non-staff user; the builds run pip and the Docker
engine for real, against package indexes made here (a wheel, an sdist whose setup.py would leave
a marker) or PyPI.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from functions import builds, images
from functions.build_logs import TRUNCATED, cap_log
from functions.models import Function, FunctionVersion
from functions.requirements import check_requirements
from functions.selectors import version_wait
from functions.services import function_register
from kubefunction.docker_client import build_client
from tests.archives import make_zip
from tests.docker_engine import needs_docker

HANDLER = "def handle(event):\n    return 1\n"

TRICKS = [
    "-r ../../../hello-http-token.txt",
    "-r http://127.0.0.1:5000/v2/_catalog",
    "-c constraints.txt",
    "-e .",
    "--index-url http://127.0.0.1:5000/simple",
    "--extra-index-url=http://evil.example/simple",
    "./local.whl",
    "local.whl",
    "/etc/passwd",
    "pkg @ http://127.0.0.1:5000/pkg-1.0.tar.gz",
    "pkg @ file:///etc/passwd",
    "git+https://github.com/psf/requests.git",
    "https://example.com/pkg-1.0-py3-none-any.whl",
    "six==1.16.0 --hash=sha256:0000",
    "pkg===${SECRET_KEY}",
    "six \\",
]


# --- package indexes made here -----------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(files_dir: Path, name: str, version: str, module: str) -> str:
    """A pure-Python wheel of one module; returns its file name."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}.py": module.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: kubefunction-tests\n"
                         b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    filename = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(files_dir / filename, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return filename


def make_sdist(files_dir: Path, name: str, version: str, marker: Path) -> str:
    """A source distribution whose setup.py creates `marker` when anything runs it."""
    dist = name.replace("-", "_")
    root = f"{dist}-{version}"
    files = {
        f"{root}/setup.py": (f"open({str(marker)!r}, 'w').write('setup.py ran')\n"
                             "from setuptools import setup\n"
                             f"setup(name={name!r}, version={version!r}, py_modules=[])\n"),
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    filename = f"{root}.tar.gz"
    with tarfile.open(files_dir / filename, "w:gz") as sdist:
        for path, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(path)
            member.size = len(data)
            sdist.addfile(member, io.BytesIO(data))
    return filename


def make_index(root: Path, projects: dict[str, list[str]]) -> str:
    """A PEP 503 index in `root` (files in root/files); returns its file:// URL."""
    (root / "simple").mkdir(parents=True, exist_ok=True)
    for project, filenames in projects.items():
        page = root / "simple" / project
        page.mkdir(exist_ok=True)
        links = "".join(f'<a href="../../files/{f}">{f}</a>\n' for f in filenames)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return (root / "simple").as_uri() + "/"


@pytest.fixture
def index(tmp_path, settings):
    """The operator's index: kf-tiny 1.0 (a wheel) and kf-sdist-only 1.0 (an sdist only)."""
    files = tmp_path / "index" / "files"
    files.mkdir(parents=True)
    marker = tmp_path / "setup-py-ran"
    tiny = make_wheel(files, "kf-tiny", "1.0", "VALUE = 'tiny 1.0'\n")
    sdist = make_sdist(files, "kf-sdist-only", "1.0", marker)
    settings.KUBEFUNCTION_PIP_INDEX_URL = make_index(
        tmp_path / "index", {"kf-tiny": [tiny], "kf-sdist-only": [sdist]})
    settings.KUBEFUNCTION_PIP_EXTRA_INDEX_URLS = []
    return {"url": settings.KUBEFUNCTION_PIP_INDEX_URL, "files": files, "marker": marker}


def register(user, runtime: str, requirements: str, handler: str = HANDLER) -> FunctionVersion:
    name = f"b-{uuid.uuid4().hex[:10]}"
    return function_register(name=name, owner=user, filename="code.zip", runtime=runtime,
                             data=make_zip({"handler.py": handler,
                                            "requirements.txt": requirements}))


def unique(requirements: str) -> str:
    """New requirements text (a comment), so no earlier build's result is reused."""
    return f"{requirements}  # {uuid.uuid4().hex}\n"


# --- refused at upload -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("trick", TRICKS)
def test_requirements_tricks_are_a_400_naming_the_line(api, user, trick):
    assert not user.is_staff
    source = make_zip({"handler.py": HANDLER,
                       "requirements.txt": f"# our deps\nsix==1.16.0\n{trick}\n"})
    response = api.post("/api/functions/", {
        "name": "tricky", "source": SimpleUploadedFile("code.zip", source)}, format="multipart")
    assert response.status_code == 400, response.content
    message = response.json()["source"][0]
    assert "requirements.txt line 3" in message
    assert trick.strip() in message
    assert not Function.objects.exists() and not FunctionVersion.objects.exists()


@pytest.mark.django_db
def test_requirements_trick_in_a_new_version_creates_no_version(api):
    created = api.post("/api/functions/", {"name": "fine", "source": SimpleUploadedFile(
        "code.zip", make_zip({"handler.py": HANDLER}))}, format="multipart")
    assert created.status_code == 201, created.content
    response = api.post("/api/functions/fine/versions/", {"source": SimpleUploadedFile(
        "code.zip", make_zip({"handler.py": HANDLER, "requirements.txt": "-r /etc/passwd\n"}))},
        format="multipart")
    assert response.status_code == 400
    assert "requirements.txt line 1 ('-r /etc/passwd')" in response.json()["source"][0]
    assert FunctionVersion.objects.filter(function__name="fine").count() == 1


@pytest.mark.django_db
def test_register_function_command_refuses_the_same_way(user, tmp_path):
    path = tmp_path / "code.zip"
    path.write_bytes(make_zip({"handler.py": HANDLER, "requirements.txt": "six\n-e .\n"}))
    with pytest.raises(CommandError, match=r"requirements.txt line 2 \('-e \.'\)"):
        call_command("register_function", "cmd-tricky", str(path), "--owner", user.username,
                     stdout=StringIO())
    assert not Function.objects.exists()


@pytest.mark.django_db
def test_admin_upload_form_refuses_the_same_way(admin_client):
    upload = SimpleUploadedFile("code.zip", make_zip({
        "handler.py": HANDLER, "requirements.txt": "pkg @ http://127.0.0.1:5000/x.tar.gz\n"}))
    response = admin_client.post("/admin/functions/function/add/", {
        "name": "admin-tricky", "description": "", "source": upload, "handler": "", "mode": "",
        "runtime": "", "timeout_seconds": 30, "memory_mb": 256, "env_vars": "{}"})
    assert response.status_code == 200  # the form again, with the error
    assert "requirements.txt line 1" in response.content.decode()
    assert not Function.objects.exists()


def test_named_requirements_and_markers_are_accepted():
    found = check_requirements("# comment\n\nsix==1.16.0  # pinned\nrequests[socks]>=2.31,<3\n"
                               "tomli; python_version < '3.11'\n")
    assert [r.name for r in found] == ["six", "requests", "tomli"]


# --- fetched as wheels, installed with no index ------------------------------------------------


@pytest.mark.django_db
def test_local_build_installs_a_wheel_from_the_operators_index_only(user, index, monkeypatch,
                                                                     tmp_path):
    # The worker's own pip configuration must not count: here it points at an index holding a
    # newer kf-tiny, which an unpinned requirement would prefer.
    other = tmp_path / "other" / "files"
    other.mkdir(parents=True)
    newer = make_index(tmp_path / "other", {"kf-tiny": [
        make_wheel(other, "kf-tiny", "2.0", "VALUE = 'from the host pip config'\n")]})
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", newer)
    monkeypatch.setenv("PIP_INDEX_URL", newer)
    monkeypatch.setenv("PIP_FIND_LINKS", str(other))
    (tmp_path / "pip.conf").write_text(f"[global]\nindex-url = {newer}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))
    version = register(user, "local", unique("kf-tiny"),
                       "import kf_tiny\ndef handle(event):\n    return kf_tiny.VALUE\n")
    built = builds.version_build(version_id=version.pk)
    assert built.status == "ready", built.build_log
    assert "kf_tiny-1.0-py3-none-any.whl" in built.build_log
    assert "kf_tiny-2.0" not in built.build_log
    from executions.runtimes.local.runtime import deps_dir
    from functions.specs import version_spec
    deps = deps_dir(version_spec(built))
    assert (deps / "kf_tiny.py").read_text() == "VALUE = 'tiny 1.0'\n"


@pytest.mark.django_db
@pytest.mark.parametrize("runtime", ["local", pytest.param("docker", marks=needs_docker)])
def test_sdist_only_requirement_fails_the_build_and_never_runs_setup_py(user, index, runtime):
    version = register(user, runtime, unique("kf-sdist-only==1.0"))
    built = builds.version_build(version_id=version.pk)
    assert built.status == "failed"
    assert "no wheel of 'kf-sdist-only==1.0'" in built.build_log
    assert "wheels only" in built.build_log
    assert not index["marker"].exists(), "the sdist's setup.py ran on the host"
    assert Function.objects.get(pk=built.function_id).active_version is None


def test_the_sdist_marker_is_real_when_pip_may_build(index, tmp_path):
    """Control for the test above: a pip allowed to use the sdist runs its setup.py."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--no-binary",
         ":all:", "--no-build-isolation", "--index-url", index["url"], "-d",
         str(tmp_path / "dl"), "kf-sdist-only==1.0"],
        capture_output=True, text=True, timeout=180)
    assert index["marker"].exists(), out.stdout + out.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("runtime", ["local", pytest.param("docker", marks=needs_docker)])
def test_stored_option_lines_are_refused_before_pip_reads_a_host_file(user, index, tmp_path,
                                                                      runtime):
    # A version stored before uploads were checked: its build must not follow `-r`.
    secret = tmp_path / "hello-http-token.txt"
    secret.write_text("token-9f3c1d-secret\n")
    version = register(user, runtime, unique("kf-tiny"))
    FunctionVersion.objects.filter(pk=version.pk).update(
        requirements=f"kf-tiny\n-r {secret}\n")
    built = builds.version_build(version_id=version.pk)
    assert built.status == "failed"
    assert "refused before pip ran" in built.build_log and "line 2" in built.build_log
    assert "token-9f3c1d-secret" not in built.build_log


class SilentIndex:
    """An index that accepts connections and never answers: pip waits on it."""

    def __enter__(self) -> str:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/simple/"

    def __exit__(self, *exc) -> None:
        self.server.close()


@pytest.mark.django_db
@pytest.mark.parametrize("runtime", ["local", pytest.param("docker", marks=needs_docker)])
def test_build_timeout_fails_the_build_with_that_reason(user, settings, runtime):
    settings.KUBEFUNCTION_BUILD_TIMEOUT_SECONDS = 3
    with SilentIndex() as url:
        settings.KUBEFUNCTION_PIP_INDEX_URL = url
        version = register(user, runtime, unique("kf-never"))
        started = time.monotonic()
        built = builds.version_build(version_id=version.pk)
        elapsed = time.monotonic() - started
    assert built.status == "failed"
    assert "did not finish within 3 s (KUBEFUNCTION_BUILD_TIMEOUT_SECONDS)" in built.build_log
    assert elapsed < 15, elapsed


def test_log_cap_keeps_head_and_tail_with_a_marker():
    text = "first line\n" + "x" * 10_000 + "\nlast line\n"
    capped = cap_log(text, 2048)
    assert len(capped.encode()) <= 2048
    assert capped.startswith("first line") and capped.endswith("last line\n")
    assert TRUNCATED in capped
    assert cap_log("short", 2048) == "short"


# --- image builds: no network, limits, deadline, capped log -----------------------------------


def probe_context(dockerfile_body: str) -> io.BytesIO:
    from django.conf import settings

    context = io.BytesIO()
    images.write_context(context, {
        "Dockerfile": f"FROM {settings.KUBEFUNCTION_BASE_IMAGE}\n{dockerfile_body}".encode()})
    return context


NETWORK_PROBE = ("RUN python3 -c \"import socket; "
                 "socket.create_connection(('127.0.0.1', 5000), timeout=3); "
                 "print('NETWORK-' + 'REACHED')\"\n")


@needs_docker
def test_image_build_steps_have_no_network():
    client = build_client()
    sink = images.LogSink()
    with pytest.raises(images.ImageBuildFailed, match="non-zero code"):
        images.run_build(client, context=probe_context(NETWORK_PROBE),
                         reference=f"kf-probe:{uuid.uuid4().hex[:8]}", sink=sink,
                         deadline=time.monotonic() + 120)
    assert "NETWORK-REACHED" not in sink.text
    assert "Connection refused" in sink.text or "unreachable" in sink.text, sink.text
    # Control: the same step on the host's network reaches the registry, so the probe can tell.
    tag = f"kf-probe-control:{uuid.uuid4().hex[:8]}"
    output = "".join(chunk.get("stream", "") + chunk.get("error", "") for chunk in client.api.build(
        fileobj=probe_context(NETWORK_PROBE), custom_context=True, tag=tag, rm=True,
        forcerm=True, pull=False, decode=True, network_mode="host"))
    assert "NETWORK-REACHED" in output
    client.images.remove(tag, force=True)


@needs_docker
def test_image_build_steps_see_only_loopback_and_the_memory_limit(settings):
    settings.KUBEFUNCTION_BUILD_MEMORY_MB = 300
    client = build_client()
    sink = images.LogSink()
    tag = f"kf-probe-limits:{uuid.uuid4().hex[:8]}"
    images.run_build(client, context=probe_context(
        "RUN python3 -c \"import socket; print('IFACES', [n for _, n in socket.if_nameindex()])\"\n"
        "RUN echo MEMORY $(cat /sys/fs/cgroup/memory.max 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\n"), reference=tag, sink=sink,
        deadline=time.monotonic() + 120)
    client.images.remove(tag, force=True)
    assert "IFACES ['lo']" in sink.text, sink.text
    assert f"MEMORY {300 * 1024 * 1024}" in sink.text, sink.text


@needs_docker
def test_image_build_deadline_stops_the_build_and_its_container():
    client = build_client()
    marker = uuid.uuid4().hex[:12]
    started = time.monotonic()
    with pytest.raises(images.ImageBuildFailed, match="KUBEFUNCTION_BUILD_TIMEOUT_SECONDS"):
        images.run_build(client, context=probe_context(f"RUN sleep 120 && echo {marker}\n"),
                         reference=f"kf-probe-slow:{marker}", sink=images.LogSink(),
                         deadline=time.monotonic() + 3)
    assert time.monotonic() - started < 10

    def build_containers():
        return [c for c in client.containers.list(all=True)
                if marker in " ".join(c.attrs["Config"].get("Cmd") or [])]

    deadline = time.monotonic() + 20
    while build_containers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert build_containers() == []


@needs_docker
@pytest.mark.django_db
def test_image_installs_wheels_without_network_and_caps_its_log(user, index, settings):
    settings.KUBEFUNCTION_BUILD_LOG_MAX_BYTES = 2048
    version = register(user, "docker", unique("kf-tiny==1.0"),
                       "import kf_tiny\ndef handle(event):\n    return kf_tiny.VALUE\n")
    built = builds.version_build(version_id=version.pk)
    assert built.status == "ready", built.build_log
    assert built.installed_packages == "kf-tiny==1.0"
    assert len(built.build_log.encode()) <= 2048
    assert TRUNCATED in built.build_log
    assert built.build_log.rstrip().endswith(built.image)  # the end ("pushed ...") survives
    out = build_client().containers.run(
        built.image_tag, ["python3", "-c", "import kf_tiny; print(kf_tiny.VALUE)"],
        environment={"PYTHONPATH": "/opt/kubefunction/deps"}, network_mode="none", remove=True)
    assert out.decode().strip() == "tiny 1.0"


# --- through the worker, as a user would --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_named_requirement_builds_and_runs_through_the_worker(api, user, celery_worker_process):
    assert not user.is_staff
    source = make_zip({"handler.py": "import six\ndef handle(event):\n    return six.__version__\n",
                       "requirements.txt": unique("six==1.16.0")})
    created = api.post("/api/functions/", {
        "name": "with-six", "source": SimpleUploadedFile("code.zip", source)}, format="multipart")
    assert created.status_code == 201, created.content
    version = FunctionVersion.objects.get(function__name="with-six")
    version = version_wait(version=version, timeout=180)
    assert version.status == "ready", version.build_log
    assert "six-1.16.0-py2.py3-none-any.whl" in version.build_log
    api.post("/api/triggers/", {"name": "with-six", "function": "with-six"}, format="json")
    body = api.post("/api/triggers/with-six/dispatch/?wait=30", {"payload": {}},
                    format="json").json()
    assert body["status"] == "succeeded", body
    assert body["output"] == "1.16.0"
