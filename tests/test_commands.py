"""Management commands: messages and exit status on bad input; idempotent registration."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from functions.models import Function
from tests.conftest import EXAMPLES
from triggers.models import Trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("admin", "a@b.c", "pw")


def call(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_register_function_with_trigger_is_idempotent(admin_user):
    text = call("register_function", "hello", str(EXAMPLES / "hello.py"), "--trigger", "hi",
                "--timeout", "9", "--memory", "64")
    assert "hello v1 (handler hello.handle): ready; trigger 'hi'" in text
    again = call("register_function", "hello", str(EXAMPLES / "hello.py"), "--trigger", "hi")
    assert "hello v1" in again
    function = Function.objects.get(name="hello")
    assert (function.timeout_seconds, function.memory_mb) == (9, 64)
    assert function.versions.count() == 1
    assert Trigger.objects.get(name="hi").function == function


def test_register_function_new_version_on_change(admin_user, tmp_path):
    source = tmp_path / "calc.py"
    source.write_text("def handle(e):\n    return 1\n")
    call("register_function", "calc", str(source))
    source.write_text("def handle(e):\n    return 2\n")
    assert "calc v2" in call("register_function", "calc", str(source))


@pytest.mark.parametrize("args, message", [
    (["register_function", "Bad_Name", str(EXAMPLES / "hello.py")], "name: "),
    (["register_function", "x", "/nonexistent.py"], "no such file"),
    (["register_function", "x", str(EXAMPLES / "hello.py"), "--handler", "hello.nope"],
     "handler: handler 'hello.nope' not found"),
    (["register_function", "x", str(EXAMPLES / "hello.py"), "--owner", "ghost"],
     "no user named 'ghost'"),
    (["create_trigger", "t", "ghost"], "no function named 'ghost'"),
    (["dispatch", "ghost"], "no trigger named 'ghost'"),
])
def test_bad_input_is_a_command_error(admin_user, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        call(*args)


def test_create_trigger_and_dispatch_input_errors(admin_user, tmp_path):
    call("register_function", "hello", str(EXAMPLES / "hello.py"))
    assert "trigger 'greet' → hello" in call("create_trigger", "greet", "hello",
                                             "--payload", '{"name": "x"}')
    with pytest.raises(CommandError, match="already exists"):
        call("create_trigger", "greet", "hello")
    with pytest.raises(CommandError, match="--payload is not JSON"):
        call("dispatch", "greet", "--payload", "{nope")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(CommandError, match="p.jsonl:2: not JSON"):
        call("dispatch", "greet", "--payload-file", str(bad))


def test_dispatch_payload_file_queues_one_per_line(admin_user, tmp_path):
    call("register_function", "hello", str(EXAMPLES / "hello.py"), "--trigger", "greet")
    payloads = tmp_path / "p.jsonl"
    payloads.write_text('{"name": "a"}\n\n{"name": "b"}\n')
    assert "queued 4 executions" in call("dispatch", "greet", "--payload-file", str(payloads),
                                         "--count", "2")
    names = sorted(Function.objects.get(name="hello").executions.values_list("input__name",
                                                                              flat=True))
    assert names == ["a", "a", "b", "b"]


def test_bootstrap_creates_admin_and_examples(django_user_model, monkeypatch, settings,
                                              tmp_path):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("KUBEFUNCTION_ADMIN_PASSWORD", "s3cret-pass")
    call("bootstrap")
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("s3cret-pass")
    assert set(Function.objects.values_list("name", flat=True)) == {
        "hello", "word-count", "slugify"}
    assert set(Trigger.objects.values_list("name", flat=True)) == {
        "hello", "word-count", "slugify", "hello-http"}
    call("bootstrap")  # idempotent
    assert Function.objects.count() == 3


def test_every_command_of_the_project_loads():
    """Each management command module imports (the benchmarks are run by `make bench` only, so
    a broken import there would show nowhere else)."""
    from django.core.management import get_commands, load_command_class

    ours = {name: app for name, app in get_commands().items()
            if app in ("executions", "functions", "triggers", "metrics", "kubefunction")}
    assert {"bench", "bench_embedded", "bench_webhook", "bench_kube", "loadtest"} <= set(ours)
    for name, app in ours.items():
        assert load_command_class(app, name).help, name
