"""Kubernetes deadlines and payloads against the fake API server, which models what a real
cluster does: SIGTERM then SIGKILL after terminationGracePeriodSeconds, pods that stay until
their container is gone, and the Job's deadline conditions arriving before, after or without
the pod's terminated status (`Cluster.deadline_order`)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture
from tests.kube.server import DEADLINE_ORDERS
from tests.test_kubernetes_runtime import (  # noqa: F401 - fixtures
    context,
    make_spec,
    runtime,
    used_long_ago,
    warm,
)

# The documented bound: a function past its deadline ends timed_out within this many seconds
# of it (DEADLINE_MARGIN, plus the API calls that delete what is left).
MARGIN = 5.0


def stored(fake, plural: str) -> str:
    """Every version of every object of `plural` the fake ever stored, as JSON."""
    return json.dumps([e.obj for e in fake.cluster.history if e.plural == plural])


def test_the_payload_never_enters_the_job_or_pod_specs(fake_kube, runtime):  # noqa: F811
    marker = f"payload-{uuid.uuid4().hex}"
    fake_kube.script("succeed")  # echoes the event it read from the pod's request Secret
    outcome = runtime.invoke(make_spec(), {"secret": marker}, context())
    assert outcome.status == "succeeded" and outcome.output == {"secret": marker}, outcome
    assert marker not in stored(fake_kube, "jobs") and marker not in stored(fake_kube, "pods")
    # the bytes were in the Job's Secret only (base64, as the API stores them) ...
    [secret] = [e.obj for e in fake_kube.cluster.history if e.plural == "secrets"
                and e.type == "ADDED"]
    assert marker in base64.b64decode(secret["data"]["request.json"]).decode()
    [job] = [e.obj for e in fake_kube.cluster.history if e.plural == "jobs" and e.type == "ADDED"]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert secret["metadata"]["name"] == job["metadata"]["name"]
    # ... which the garbage collector removes with the Job: nothing of the payload stays
    assert fake_kube.wait_for(lambda: not fake_kube.objects("secrets")
                              and not fake_kube.objects("jobs"))


def test_the_pod_waits_for_its_secret(fake_kube, runtime):  # noqa: F811
    """The Secret is created after the Job (it needs the Job's uid): meanwhile the pod stays
    ContainerCreating, and starts once the Secret exists."""
    fake_kube.fail("create", "secrets", code=503)  # the first attempt loses the API there
    execution = context()
    with pytest.raises(Exception, match="503"):
        runtime.invoke(make_spec(), {"n": 1}, execution)
    [pod] = fake_kube.objects("pods")
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == \
        "ContainerCreating"
    outcome = runtime.invoke(make_spec(), {"n": 1}, execution)  # adopts, delivers, runs
    assert outcome.status == "succeeded" and outcome.output == {"n": 1}, outcome


@pytest.mark.parametrize("order", DEADLINE_ORDERS)
def test_a_busy_pod_past_its_deadline_is_timed_out_on_time(fake_kube, runtime, settings,  # noqa: F811
                                                          order):
    """A pod that ignores SIGTERM (a busy PID 1 as the old runner was), whatever order the
    Job's conditions and the pod's end arrive in: timed_out within deadline + MARGIN, and the
    pod deleted with no grace period once past it."""
    settings.KUBEFUNCTION_KUBE_START_GRACE = 30  # a cluster's pull time: not for a started pod
    settings.KUBEFUNCTION_KUBE_GRACE_SECONDS = 10  # longer than the margin: must not be waited
    fake_kube.cluster.deadline_order = order
    fake_kube.script("hang", on_sigterm="ignore")
    started = time.monotonic()
    outcome = runtime.invoke(make_spec(timeout_seconds=2), {}, context(seconds=2))
    took = time.monotonic() - started
    assert (outcome.status, outcome.error_type) == ("timed_out", "Timeout"), outcome
    assert took < 2 + MARGIN, took
    assert fake_kube.wait_for(lambda: not fake_kube.objects("pods"), timeout=1)
    assert fake_kube.wait_for(lambda: not fake_kube.objects("jobs"), timeout=1)
    if order in ("failure-target", "failed-first"):  # the pod was still terminating
        assert any(plural == "pods" and grace == 0
                   for plural, _, grace, _ in fake_kube.cluster.deletions)


WARM_BUSY = r"""
import signal

def handle(event, context):
    if event.get("busy"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass
    return "ok"
"""


def test_warm_busy_loop_ignoring_sigterm_is_timed_out_on_time(fake_kube, warm, tmp_path):  # noqa: F811
    (tmp_path / "src" / "handler.py").write_text(WARM_BUSY)
    spec = make_spec(timeout_seconds=2)
    assert warm.invoke(spec, {}, context(seconds=10)).output == "ok"
    [busy] = [p["metadata"]["name"] for p in fake_kube.objects("pods")]
    started = time.monotonic()
    outcome = warm.invoke(spec, {"busy": True}, context(seconds=2))
    assert (outcome.status, outcome.error_type) == ("timed_out", "Timeout"), outcome
    assert time.monotonic() - started < 2 + MARGIN
    assert ("pods", busy, 0, None) in fake_kube.cluster.deletions  # no grace period
    assert fake_kube.wait_for(lambda: busy not in {
        p["metadata"]["name"] for p in fake_kube.objects("pods")}, timeout=1)
    assert warm.invoke(spec, {}, context(seconds=10)).output == "ok"  # a new pod serves
    warm.release(spec)


def test_warm_scale_down_does_not_wait_for_the_grace(fake_kube, warm, settings):  # noqa: F811
    """Scaled to zero, the idle runner exits on SIGTERM at once: the pod does not linger for
    its terminationGracePeriodSeconds."""
    settings.KUBEFUNCTION_KUBE_GRACE_SECONDS = 20
    spec = make_spec(timeout_seconds=2)
    assert warm.invoke(spec, {}, context(seconds=10)).status == "succeeded"
    [pod] = fake_kube.objects("pods")
    assert pod["spec"]["terminationGracePeriodSeconds"] == 20
    name = fake_kube.objects("deployments")[0]["metadata"]["name"]
    used_long_ago(fake_kube, name)
    started = time.monotonic()
    assert warm.warm.scale_idle() == [name]
    assert fake_kube.wait_for(lambda: not fake_kube.objects("pods"), timeout=5)
    assert time.monotonic() - started < 2
    warm.release(spec)


BUSY_REQUEST = {"nonce": "0123456789abcdef0123456789abcdef", "event": {},
                "context": {"execution_id": "e"}}
BUSY_HANDLER = "def handle(event, context):\n    while True:\n        pass\n"


def test_the_runner_as_pid_1_exits_on_sigterm_while_busy(tmp_path):
    """In a PID namespace of its own (as in a container) a process without a SIGTERM handler
    never sees SIGTERM; the runner installs one, which a busy loop cannot defer."""
    import functions.runner

    (tmp_path / "handler.py").write_text(BUSY_HANDLER)
    (tmp_path / "request.json").write_text(json.dumps(BUSY_REQUEST) + "\n")
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-I", "-S",
         functions.runner.__file__, "--root", str(tmp_path), "--request-file",
         str(tmp_path / "request.json")], stderr=subprocess.PIPE)
    try:
        children = f"/proc/{process.pid}/task/{process.pid}/children"
        end = time.monotonic() + 10
        while not open(children).read().split() and time.monotonic() < end:
            time.sleep(0.02)
        [pid_1] = [int(pid) for pid in open(children).read().split()]
        time.sleep(0.5)  # importing, then busy
        with open(f"/proc/{pid_1}/status") as status:
            [ns_pids] = [line.split()[1:] for line in status if line.startswith("NSpid:")]
        assert ns_pids[-1] == "1"  # PID 1 of its namespace
        subprocess.run(["kill", "-TERM", str(pid_1)], check=True)
        code = process.wait(timeout=2)  # the old runner ignored it: SIGKILL was the only way
    finally:
        process.kill()
        process.wait()
    assert code == 143 and b"SIGTERM" in process.stderr.read()
