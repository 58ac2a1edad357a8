"""Reading uploaded sources: a single `.py` file, or a `.zip` / `.tar.gz` archive.

`read_members` is the one place that opens an upload; it refuses anything that could escape the
folder it is unpacked into (absolute or `..` paths, links, devices) and archives that unpack to
more than the configured limits (zip bombs). `unpack` writes the members into a folder.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler

from kubefunction.errors import InvalidInput, PayloadTooLarge

PY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")


class SourceRejected(InvalidInput):
    """The uploaded source cannot be used; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="source")


class SourceSizeLimitHandler(FileUploadHandler):
    """First of a request's upload handlers: counts the bytes of its files as they stream in and
    refuses the request (413) past `limit`, so an oversized upload is never read whole, in
    memory or on disk, even when its size was not declared."""

    def __init__(self, request=None, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0  # over all the request's files

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            raise PayloadTooLarge(
                f"'{self.file_name}' is too large: the limit is {self.limit} bytes.",
                field=self.field_name)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler (memory or temporary file) keeps the file


class AdminSourceSizeLimitHandler(SourceSizeLimitHandler):
    """The same count for the admin's upload forms, where the parse happens in the CSRF check:
    Django answers `RequestDataTooBig` with a 400 page."""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        try:
            return super().receive_data_chunk(raw_data, start)
        except PayloadTooLarge as exc:
            raise RequestDataTooBig(exc.message) from exc


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


# Past this much unpacked data, an archive must not be more than this many times its own size
# (source code compresses ~5x; a zip bomb thousands of times).
RATIO_CHECK_BYTES = 1024 * 1024
MAX_COMPRESSION_RATIO = 200
MAX_PATH_DEPTH = 32
MAX_NAME_BYTES = 255  # one path component, as most file systems allow
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _member_parts(name: str) -> list[str]:
    """The components of a member's path, refusing anything that could escape or not be
    written: absolute paths, '..', backslashes, control characters, undecodable or overlong
    names, deep nesting."""
    shown = name.encode("utf-8", "backslashreplace").decode("utf-8")[:200]
    if "\\" in name or CONTROL_CHARACTERS.search(name):
        raise SourceRejected(f"archive member '{shown}' has a backslash or control character "
                             "in its path.")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise SourceRejected(f"archive member '{shown}' has an absolute path.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceRejected(f"archive member '{shown}' has a '..' path component.")
    if len(parts) > MAX_PATH_DEPTH:
        raise SourceRejected(f"archive member '{shown}' is nested more than {MAX_PATH_DEPTH} "
                             "folders deep.")
    for part in parts:
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:
            raise SourceRejected(
                f"archive member '{shown}' has a name that is not UTF-8.") from None
        if size > MAX_NAME_BYTES:
            raise SourceRejected(f"archive member '{shown}' has a name longer than "
                                 f"{MAX_NAME_BYTES} bytes.")
    return parts


class _Members:
    """The files read so far, counted against the limits (members, unpacked bytes, ratio), with
    no two at one path and no file where another needs a folder."""

    def __init__(self, archive_size: int) -> None:
        self.archive_size = max(archive_size, 1)
        self.count = 0
        self.bytes = 0
        self.files: dict[str, bytes] = {}
        self.folders: set[str] = set()

    def take(self, size: int) -> None:
        """Count one more member (file or folder) of `size` unpacked bytes."""
        self.count += 1
        self.bytes += size
        if self.count > settings.KUBEFUNCTION_MAX_ARCHIVE_MEMBERS:
            raise SourceRejected(
                f"archive has more than {settings.KUBEFUNCTION_MAX_ARCHIVE_MEMBERS} members."
            )
        if self.bytes > settings.KUBEFUNCTION_MAX_UNPACKED_BYTES:
            raise SourceRejected(
                "archive unpacks to more than "
                f"{settings.KUBEFUNCTION_MAX_UNPACKED_BYTES} bytes (limit)."
            )
        if (self.bytes > RATIO_CHECK_BYTES
                and self.bytes > MAX_COMPRESSION_RATIO * self.archive_size):
            raise SourceRejected(
                f"archive unpacks to more than {MAX_COMPRESSION_RATIO} times its size "
                "(a zip bomb?).")

    def admit(self, name: str, *, size: int, folder: bool, special: bool) -> list[str] | None:
        """Check one member of either archive format: its path, its kind (`special`: a link or
        device) and its count against the limits. A folder is recorded (None); for a file, the
        parts of its path are returned, to read its content and `add_file` it."""
        parts = _member_parts(name)
        if special:
            raise SourceRejected(f"archive member '{name}' is a link or device.")
        self.take(0 if folder else size)
        if folder:
            self.add_folder(parts)
            return None
        if not parts:
            raise SourceRejected(f"archive member '{name}' has an empty path.")
        return parts

    def add_folder(self, parts: list[str]) -> None:
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder in self.files:
                raise SourceRejected(f"archive member '{folder}' is both a file and a folder.")
            self.folders.add(folder)

    def add_file(self, parts: list[str], content: bytes) -> None:
        path = "/".join(parts)
        if path in self.files:
            raise SourceRejected(f"archive has two members at '{path}'.")
        if path in self.folders:
            raise SourceRejected(f"archive member '{path}' is both a file and a folder.")
        self.add_folder(parts[:-1])
        self.files[path] = content


ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
              RuntimeError, NotImplementedError, zlib.error, lzma.LZMAError)


def _zip_members(data: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except ZIP_ERRORS as exc:
        raise SourceRejected(f"the .zip archive cannot be read: {exc}") from exc
    members = _Members(len(data))
    with archive:
        for info in archive.infolist():
            kind = (info.external_attr >> 16) & 0o170000  # no bits: a zip written without modes
            # `endswith`, not `is_dir()`: that indexes the name, and an empty one is refused by
            # `admit` (as an unsafe path), not by an IndexError.
            parts = members.admit(info.filename, size=info.file_size,
                                  folder=info.filename.endswith("/"),
                                  special=kind not in (0, 0o100000, 0o040000))
            if parts is None:
                continue
            try:
                # Read at most the declared size + 1 so a lying header cannot inflate us.
                with archive.open(info) as handle:
                    content = handle.read(info.file_size + 1)
            except ZIP_ERRORS as exc:
                raise SourceRejected(f"archive member '{info.filename}' is corrupt: {exc}") from exc
            if len(content) > info.file_size:
                raise SourceRejected(f"archive member '{info.filename}' is larger than declared.")
            members.add_file(parts, content)
    return members.files


def _gunzip(data: bytes, limit: int) -> bytes:
    """The decompressed bytes of a gzip stream (all its members), refusing more than `limit`:
    tar headers are read before any member size can be checked."""
    out = bytearray()
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(rest, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                raise SourceRejected(f"the archive unpacks to more than {limit} bytes (limit).")
            if not inflater.eof:
                if inflater.unconsumed_tail:
                    raise SourceRejected(
                        f"the archive unpacks to more than {limit} bytes (limit).")
                raise SourceRejected("the .tar.gz archive cannot be read: it is truncated.")
            rest = inflater.unused_data.lstrip(b"\0")  # gzip allows trailing padding
    except zlib.error as exc:
        raise SourceRejected(f"the .tar.gz archive cannot be read: {exc}") from exc
    return bytes(out)


def _tar_members(data: bytes) -> dict[str, bytes]:
    limit = (settings.KUBEFUNCTION_MAX_UNPACKED_BYTES
             + 3 * 512 * (settings.KUBEFUNCTION_MAX_ARCHIVE_MEMBERS + 1) + 10240)
    raw = _gunzip(data, limit) if data[:2] == b"\x1f\x8b" else data  # else: a plain tar
    members = _Members(len(data))
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            for info in archive:
                parts = members.admit(info.name, size=info.size, folder=info.isdir(),
                                      special=not (info.isdir() or info.isfile()))
                if parts is None:
                    continue
                handle = archive.extractfile(info)
                content = handle.read() if handle else b""
                if len(content) != info.size:
                    raise SourceRejected(f"archive member '{info.name}' is truncated.")
                members.add_file(parts, content)
    except (tarfile.TarError, OSError, EOFError, ValueError, OverflowError) as exc:
        raise SourceRejected(f"the .tar.gz archive cannot be read: {exc}") from exc
    return members.files


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
