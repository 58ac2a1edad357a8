"""Upload validation: every rejection names its cause; accepted uploads resolve the handler."""

import io
import zipfile

import pytest

from functions.artifacts import SourceRejected
from functions.validation import validate_source
from kubefunction.errors import InvalidInput
from tests.archives import make_tar, make_zip

HANDLER = b"def handle(event, context):\n    return event\n"


def test_single_file_defaults_to_its_handle_function():
    checked = validate_source(filename="hello.py", data=HANDLER)
    assert (checked.handler, checked.mode) == ("hello.handle", "handler")


def test_single_file_without_handle_is_script_mode():
    checked = validate_source(filename="job.py", data=b"print(42)\n")
    assert (checked.handler, checked.mode) == ("job", "script")


def test_bare_function_name_refers_to_the_single_file():
    checked = validate_source(filename="m.py", data=b"def main(e):\n    return 1\n",
                              handler="main")
    assert checked.handler == "m.main"


def test_archive_with_package_handler_and_requirements():
    data = make_zip({"pkg/__init__.py": "", "pkg/api.py": "async def run(event):\n  return 1\n",
                     "requirements.txt": "six==1.16.0\n"})
    checked = validate_source(filename="code.zip", data=data, handler="pkg.api.run")
    assert checked.handler == "pkg.api.run"
    assert checked.requirements == "six==1.16.0"
    assert set(checked.members) == {"pkg/__init__.py", "pkg/api.py", "requirements.txt"}


def test_tar_gz_is_accepted():
    checked = validate_source(filename="code.tar.gz", data=make_tar({"handler.py": HANDLER}))
    assert checked.handler == "handler.handle"


@pytest.mark.parametrize("filename", ["code.rb", "code.tar", "code.py.txt", "noext"])
def test_other_file_types_are_rejected(filename):
    with pytest.raises(SourceRejected, match="not a .py file"):
        validate_source(filename=filename, data=HANDLER)


def test_oversized_file_is_rejected(settings):
    settings.KUBEFUNCTION_MAX_SOURCE_BYTES = 100
    with pytest.raises(SourceRejected, match="the limit is 100 bytes"):
        validate_source(filename="big.py", data=b"#" * 101)


@pytest.mark.parametrize("member", ["/etc/handler.py", "../handler.py", "a/../../handler.py"])
@pytest.mark.parametrize("builder", [make_zip, make_tar])
def test_escaping_paths_are_rejected(builder, member):
    data = builder({"handler.py": HANDLER, member: "x = 1\n"})
    name = "code.zip" if builder is make_zip else "code.tar.gz"
    with pytest.raises(SourceRejected, match="absolute path|'..' path"):
        validate_source(filename=name, data=data)


def test_a_zip_member_without_a_name_is_rejected_cleanly():
    """A member whose name is empty (the fuzz test found it: zipfile's is_dir() indexes the
    name) is refused as an upload error, not a 500."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"x")
        archive.writestr("handler.py", HANDLER)
    with pytest.raises(SourceRejected):
        validate_source(filename="code.zip", data=buffer.getvalue())


def test_zip_symlink_is_rejected():
    data = make_zip({"handler.py": HANDLER}, symlinks={"link.py": "/etc/passwd"})
    with pytest.raises(SourceRejected, match="link or device"):
        validate_source(filename="code.zip", data=data)


@pytest.mark.parametrize("kind", ["symlinks", "hardlinks"])
def test_tar_links_are_rejected(kind):
    data = make_tar({"handler.py": HANDLER}, **{kind: {"link.py": "/etc/passwd"}})
    with pytest.raises(SourceRejected, match="link or device"):
        validate_source(filename="code.tar.gz", data=data)


def test_syntax_error_names_file_and_line():
    data = make_zip({"handler.py": HANDLER, "lib/util.py": "x = 1\ndef broken(:\n"})
    with pytest.raises(SourceRejected, match=r"syntax error in lib/util.py, line 2"):
        validate_source(filename="code.zip", data=data)


def test_missing_handler_function_is_rejected():
    with pytest.raises(InvalidInput, match="handler 'hello.nope' not found") as info:
        validate_source(filename="hello.py", data=HANDLER, handler="hello.nope")
    assert info.value.field == "handler"


def test_missing_handler_module_is_rejected():
    with pytest.raises(InvalidInput, match="module 'other' is not in the upload"):
        validate_source(filename="code.zip", data=make_zip({"handler.py": HANDLER}),
                        handler="other.handle")


def test_archive_without_default_handler_asks_for_one():
    with pytest.raises(InvalidInput, match="name the handler") as info:
        validate_source(filename="code.zip", data=make_zip({"main.py": "print(1)\n"}))
    assert info.value.field == "handler"


def test_zip_bomb_is_rejected(settings):
    settings.KUBEFUNCTION_MAX_UNPACKED_BYTES = 1024 * 1024
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("handler.py", HANDLER)
        archive.writestr("zeros.bin", b"\0" * (2 * 1024 * 1024))
    data = buffer.getvalue()
    assert len(data) < 10_000
    with pytest.raises(SourceRejected, match="unpacks to more than"):
        validate_source(filename="bomb.zip", data=data)


def test_corrupt_archive_is_rejected():
    data = make_zip({"handler.py": HANDLER})[:40]
    with pytest.raises(SourceRejected, match="cannot be read"):
        validate_source(filename="code.zip", data=data)


def test_invalid_handler_syntax_is_rejected():
    with pytest.raises(InvalidInput, match="dotted Python name"):
        validate_source(filename="hello.py", data=HANDLER, handler="hello.handle()")


def test_example_zip_matches_its_sources(tmp_path):
    """examples/functions/slugify.zip is built from examples/src/slugify/ and kept in sync."""
    from tests.conftest import EXAMPLES
    src = EXAMPLES.parent / "src" / "slugify"
    with zipfile.ZipFile(EXAMPLES / "slugify.zip") as archive:
        packed = {name: archive.read(name) for name in archive.namelist()}
    assert packed == {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
