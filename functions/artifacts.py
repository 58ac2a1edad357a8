"""Reading uploaded sources: a single `.py` file, or a `.zip` / `.tar.gz` archive.

`read_members` is the one place that opens an upload; it refuses anything that could escape the
folder it is unpacked into (absolute or `..` paths, links, devices) and archives that unpack to
more than the configured limits (zip bombs). `unpack` writes the members into a folder.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from django.conf import settings

from kubefunction.errors import InvalidInput

PY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")


class SourceRejected(InvalidInput):
    """The uploaded source cannot be used; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="source")


def archive_kind(filename: str) -> str:
    """Return 'py', 'zip' or 'tar' for an accepted file name, else raise `SourceRejected`."""
    lower = filename.lower()
    if lower.endswith(".py"):
        return "py"
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar.gz", ".tgz")):
        return "tar"
    raise SourceRejected(
        f"'{filename}' is not a .py file, a .zip or a .tar.gz archive; upload one of those."
    )


def _safe_member_path(name: str) -> str:
    if "\\" in name or "\x00" in name:
        raise SourceRejected(f"archive member '{name}' has a backslash or NUL in its path.")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise SourceRejected(f"archive member '{name}' has an absolute path.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceRejected(f"archive member '{name}' has a '..' path component.")
    if not parts:
        raise SourceRejected(f"archive member '{name}' has an empty path.")
    return posixpath.join(*parts)


class _Budget:
    """Counts members and unpacked bytes against the limits."""

    def __init__(self) -> None:
        self.members = 0
        self.bytes = 0

    def take(self, size: int) -> None:
        self.members += 1
        self.bytes += size
        if self.members > settings.KUBEFUNCTION_MAX_ARCHIVE_MEMBERS:
            raise SourceRejected(
                f"archive has more than {settings.KUBEFUNCTION_MAX_ARCHIVE_MEMBERS} members."
            )
        if self.bytes > settings.KUBEFUNCTION_MAX_UNPACKED_BYTES:
            raise SourceRejected(
                "archive unpacks to more than "
                f"{settings.KUBEFUNCTION_MAX_UNPACKED_BYTES} bytes (limit)."
            )


def _zip_members(data: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SourceRejected(f"the .zip archive cannot be read: {exc}") from exc
    members: dict[str, bytes] = {}
    budget = _Budget()
    with archive:
        for info in archive.infolist():
            path = _safe_member_path(info.filename)
            mode = info.external_attr >> 16
            if (mode & 0o170000) not in (0, 0o100000, 0o040000):
                raise SourceRejected(f"archive member '{info.filename}' is a link or device.")
            if info.is_dir():
                continue
            budget.take(info.file_size)
            try:
                # Read at most the declared size + 1 so a lying header cannot inflate us.
                with archive.open(info) as handle:
                    content = handle.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:
                raise SourceRejected(f"archive member '{info.filename}' is corrupt: {exc}") from exc
            if len(content) > info.file_size:
                raise SourceRejected(f"archive member '{info.filename}' is larger than declared.")
            members[path] = content
    return members


def _tar_members(data: bytes) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    budget = _Budget()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for info in archive:
                path = _safe_member_path(info.name)
                if info.isdir():
                    continue
                if not info.isfile():
                    raise SourceRejected(f"archive member '{info.name}' is a link or device.")
                budget.take(info.size)
                handle = archive.extractfile(info)
                members[path] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise SourceRejected(f"the .tar.gz archive cannot be read: {exc}") from exc
    return members


def read_members(filename: str, data: bytes) -> dict[str, bytes]:
    """Return the upload's files as {relative path: bytes}, refusing anything unsafe."""
    if len(data) > settings.KUBEFUNCTION_MAX_SOURCE_BYTES:
        raise SourceRejected(
            f"'{filename}' is {len(data)} bytes; the limit is "
            f"{settings.KUBEFUNCTION_MAX_SOURCE_BYTES} bytes."
        )
    kind = archive_kind(filename)
    if kind == "py":
        base = os.path.basename(filename)
        if not PY_NAME.match(base):
            raise SourceRejected(
                f"'{base}' is not an importable module name: use letters, digits and '_'."
            )
        return {base: data}
    members = _zip_members(data) if kind == "zip" else _tar_members(data)
    if not members:
        raise SourceRejected(f"the archive '{filename}' holds no files.")
    return members


def unpack(filename: str, data: bytes, dest: Path) -> None:
    """Write the upload's files into `dest` (created atomically; left alone if it exists)."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        for path, content in read_members(filename, data).items():
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        try:
            os.rename(staging, dest)
        except OSError:
            if not dest.exists():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
