"""Property tests: malformed and hostile uploads end in a clean `InvalidInput`, valid ones are
accepted, and unpacking never writes outside its target folder.

Hypothesis builds zip and tar.gz archives from hostile member names (absolute, `..`, backslash,
NUL and control characters, unicode, overlong, deeply nested, duplicates, file/folder clashes),
links and devices, bombs (highly compressible members, many members), then truncates or corrupts
some of them. The limits are lowered so bombs stay cheap.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from functions.artifacts import read_members, unpack
from functions.validation import validate_source
from kubefunction.errors import InvalidInput

HANDLER = b"def handle(event, context):\n    return event\n"
LIMITS = {"KUBEFUNCTION_MAX_UNPACKED_BYTES": 256 * 1024, "KUBEFUNCTION_MAX_ARCHIVE_MEMBERS": 40,
          "KUBEFUNCTION_MAX_SOURCE_BYTES": 512 * 1024}
# No example database: nothing is written into the work tree (.hypothesis/).
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

plain_names = st.sampled_from(["handler.py", "pkg/__init__.py", "pkg/mod.py", "requirements.txt",
                               "data/file.bin", "a/b/c/d.py", "README", "pkg", "pkg/"])
hostile_names = st.one_of(
    st.sampled_from(["../evil.py", "/etc/passwd", "a/../../b.py", "C:/x.py", "a\\..\\b.py",
                     "x\x00.py", "line\nbreak.py", "", ".", "./", "..", "a//b.py", "./handler.py",
                     "handler.py/", "\udcff.py", "é/ü.py", "a" * 300 + ".py",
                     "/".join(["d"] * 40) + "/x.py", "/".join(["d"] * 10) + "/x.py"]),
    st.text(min_size=0, max_size=40),
    st.lists(st.sampled_from(["a", "..", ".", "", "b", "ü", "\\", "x.py"]), min_size=1,
             max_size=8).map("/".join),
)
names = st.one_of(plain_names, plain_names, hostile_names)
contents = st.one_of(
    st.just(HANDLER), st.binary(max_size=300),
    st.builds(lambda n: b"\0" * n, st.integers(0, 300_000)),  # compresses to almost nothing
    st.just(b"def handle(:\n"), st.just(b"x = 1\n" * 3000),
)
kinds = st.sampled_from(["file"] * 8 + ["dir", "symlink", "hardlink", "fifo"])
extras = st.lists(st.tuples(names, contents, kinds), min_size=0, max_size=10)
# Mostly a valid handler plus extras, so that acceptance is exercised as well as rejection.
members = st.tuples(st.sampled_from([[("handler.py", HANDLER, "file")]] * 3 + [[]]),
                    extras).map(lambda pair: pair[0] + pair[1])


def build_zip(entries, compression: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for name, content, kind in entries:
                info = zipfile.ZipInfo(name or "_")
                info.compress_type = compression
                if kind == "dir":
                    info.filename = info.filename.rstrip("/") + "/"
                    info.external_attr = 0o040755 << 16
                    content = b""
                elif kind in ("symlink", "hardlink"):
                    info.external_attr = 0o120777 << 16
                elif kind == "fifo":
                    info.external_attr = 0o010644 << 16
                archive.writestr(info, content)
    return buffer.getvalue()


def build_tar(entries, compress: bool) -> bytes:
    buffer = io.BytesIO()
    types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE}
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as archive:
        for name, content, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
            else:
                info.type = types[kind]
                info.linkname = "../../etc/passwd"
                archive.addfile(info)
    return buffer.getvalue()


@st.composite
def uploads(draw) -> tuple[str, bytes]:
    entries = draw(members)
    fmt = draw(st.sampled_from(["zip", "zip-deflated", "zip-bz2", "zip-lzma", "tar.gz", "tgz",
                                "tar-plain"]))
    try:
        if fmt.startswith("zip"):
            compression = {"zip": zipfile.ZIP_STORED, "zip-deflated": zipfile.ZIP_DEFLATED,
                           "zip-bz2": zipfile.ZIP_BZIP2, "zip-lzma": zipfile.ZIP_LZMA}[fmt]
            data, filename = build_zip(entries, compression), "code.zip"
        else:
            data = build_tar(entries, compress=fmt != "tar-plain")
            filename = "code.tgz" if fmt == "tgz" else "code.tar.gz"
    except (ValueError, UnicodeError, OSError):
        assume(False)  # the builder itself refuses this name
    damage = draw(st.sampled_from(["none"] * 4 + ["truncate", "flip", "append"]))
    if damage == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif damage == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    return filename, data


def check_clean_outcome(filename: str, data: bytes) -> None:
    """Either InvalidInput, or an upload that unpacks entirely inside its target folder."""
    try:
        checked = validate_source(filename=filename, data=data)
    except InvalidInput as exc:
        assert exc.message and isinstance(exc.message, str)
        assert exc.field in ("source", "handler", "mode")
        event("rejected")
        return
    event("accepted")
    assert checked.handler and checked.mode in ("handler", "script")
    with tempfile.TemporaryDirectory() as root:
        target = Path(root) / "target"
        unpack(filename, data, target)
        assert sorted(os.listdir(root)) == ["target"]  # no staging left, nothing beside it
        written = {}
        for folder, _, files in os.walk(target):
            for name in files:
                path = Path(folder) / name
                assert not path.is_symlink()
                assert path.resolve().is_relative_to(target.resolve())
                written[path.relative_to(target).as_posix()] = path.read_bytes()
        assert written == checked.members


@override_settings(**LIMITS)
@FUZZ
@given(uploads())
def test_archives_are_accepted_or_cleanly_rejected(upload):
    check_clean_outcome(*upload)


@override_settings(**LIMITS)
@FUZZ
@given(st.one_of(st.text(max_size=30), st.sampled_from(["x.py", ".py", "a b.py", "1.py",
                                                         "../x.py", "x.PY", "x.tar.gz", "x.zip",
                                                         "x.tgz", "é.py", "x\x00.py"])),
       st.one_of(st.binary(max_size=200), st.just(HANDLER), st.just(b"print(1)\n"),
                 st.just("# é\nprint(1)\n".encode())))
def test_any_name_and_bytes_are_accepted_or_cleanly_rejected(filename, data):
    check_clean_outcome(filename, data)


@override_settings(**LIMITS)
@FUZZ
@given(st.sampled_from(["handler.py", "pkg/x.py"]), st.integers(41, 200),
       st.sampled_from(["zip", "tar"]))
def test_too_many_members_are_refused(name, count, fmt):
    entries = [(f"m{i}/{name}", b"", "file") for i in range(count)]
    data = build_zip(entries, zipfile.ZIP_DEFLATED) if fmt == "zip" else build_tar(entries, True)
    with pytest.raises(InvalidInput, match="more than 40 members"):
        read_members(f"code.{'zip' if fmt == 'zip' else 'tar.gz'}", data)


@override_settings(**LIMITS)
def test_tar_gz_bomb_in_a_header_is_refused_before_it_is_inflated():
    """A GNU long-name header declaring a huge size is read by tarfile before any member size can
    be checked: the gzip stream itself is capped."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("n" * (4 * 1024 * 1024))  # a 4 MiB name
        archive.addfile(info, io.BytesIO(b""))
    data = buffer.getvalue()
    assert len(data) < 64 * 1024
    with pytest.raises(InvalidInput, match="unpacks to more than"):
        read_members("bomb.tar.gz", data)


@override_settings(**LIMITS)
def test_highly_compressed_archive_is_refused_by_its_ratio():
    entries = [(f"z{i}.bin", b"\0" * 400_000, "file") for i in range(4)]
    data = build_zip([("handler.py", HANDLER, "file"), *entries], zipfile.ZIP_DEFLATED)
    with override_settings(KUBEFUNCTION_MAX_UNPACKED_BYTES=10 * 1024 * 1024):
        with pytest.raises(InvalidInput, match="times its size"):
            read_members("bomb.zip", data)


@override_settings(**LIMITS)
@pytest.mark.parametrize("entries, message", [
    ([("handler.py", HANDLER, "file"), ("./handler.py", HANDLER, "file")], "two members"),
    ([("pkg", b"x", "file"), ("pkg/handler.py", HANDLER, "file")], "both a file and a folder"),
    ([("/".join(["d"] * 40) + "/handler.py", HANDLER, "file")], "nested more than"),
    ([("a" * 300 + ".py", HANDLER, "file")], "longer than 255 bytes"),
    ([("x\x01.py", HANDLER, "file")], "control character"),
])
def test_hostile_members_name_the_problem(entries, message):
    for data, filename in ((build_zip(entries, zipfile.ZIP_DEFLATED), "c.zip"),
                           (build_tar(entries, True), "c.tar.gz")):
        with pytest.raises(InvalidInput, match=message):
            read_members(filename, data)


def test_tar_made_with_a_dot_root_is_accepted():
    """`tar czf code.tar.gz -C src .` starts with a './' folder entry."""
    data = build_tar([(".", b"", "dir"), ("./handler.py", HANDLER, "file")], True)
    assert validate_source(filename="code.tar.gz", data=data).handler == "handler.handle"
