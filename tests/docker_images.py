"""Function images for the Docker tests, built the way `functions.images` lays them out.

The runner at /opt/kubefunction/runner.py, the source in /opt/kubefunction/src, an empty
/opt/kubefunction/deps, user 10001, and the labels. Tags are content addressed (the files, the
runner and the base image's id), so an image is built once and reused by later runs.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import textwrap

import docker
from django.conf import settings
from docker.errors import ImageNotFound

from functions import runner

REPOSITORY = "kubefunction-test"

DOCKERFILE = """\
FROM {base}
LABEL io.kubefunction.function="{name}" io.kubefunction.version="1" \\
      io.kubefunction.sha256="{digest}"
ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY runner.py /opt/kubefunction/runner.py
COPY deps/ /opt/kubefunction/deps/
COPY src/ /opt/kubefunction/src/
USER 10001:10001
WORKDIR /opt/kubefunction/src
"""


def _tar(files: dict[str, bytes], folders: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[name]), 0o644
            archive.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def function_image(client: docker.DockerClient, name: str, files: dict[str, str]) -> str:
    """The tag of an image holding `files` (dedented) as the function's source, built if
    missing."""
    base = settings.KUBEFUNCTION_BASE_IMAGE
    base_id = client.images.get(base).id
    source = {f"src/{path}": textwrap.dedent(text).encode("utf-8")
              for path, text in files.items()}
    digest = hashlib.sha256()
    for path in sorted(source):
        digest.update(path.encode() + b"\0" + source[path] + b"\0")
    source_digest = digest.hexdigest()
    dockerfile = DOCKERFILE.format(base=base, name=name, digest=source_digest).encode()
    runner_source = open(runner.__file__, "rb").read()  # noqa: SIM115
    tag_digest = hashlib.sha256(
        dockerfile + runner_source + source_digest.encode() + base_id.encode()).hexdigest()
    tag = f"{REPOSITORY}/{name}:{tag_digest[:24]}"
    try:
        client.images.get(tag)
        return tag
    except ImageNotFound:
        pass
    context = _tar({"Dockerfile": dockerfile, "runner.py": runner_source, **source},
                   ["deps", "src"])
    client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True,
                        forcerm=True, network_mode="none", labels={"io.kubefunction.test": "1"})
    return tag
