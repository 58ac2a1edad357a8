"""The pure mapping from a Job and its pod (API JSON) to an invocation's verdict and outcome."""

from __future__ import annotations

import json

import pytest

from executions.runtimes.kubernetes import outcomes as ko
from functions.runner import frame_header

NONCE = "0123456789abcdef0123456789abcdef"


def job(*conditions: tuple[str, str], deadline: int = 5) -> dict:
    return {"spec": {"activeDeadlineSeconds": deadline}, "status": {"conditions": [
        {"type": t, "status": "True", "reason": r, "message": f"{r} happened"}
        for t, r in conditions]}}


def pod(phase: str = "Running", state: dict | None = None, reason: str = "",
        last: dict | None = None, conditions: list | None = None) -> dict:
    status = {"phase": phase, "containerStatuses": [{
        "name": "function", "image": "reg/fn@sha256:1", "ready": False, "restartCount": 0,
        "imageID": "", "state": state or {"running": {}}, "lastState": last or {}}]}
    if reason:
        status.update(reason=reason, message="The node was low on resource: memory.")
    if conditions:
        status["conditions"] = conditions
    return {"metadata": {"name": "p"}, "status": status}


def waiting(reason: str, message: str = "") -> dict:
    return {"waiting": {"reason": reason, "message": message}}


def terminated(code: int, reason: str = "") -> dict:
    return {"terminated": {"exitCode": code, "reason": reason or ("Completed" if code == 0
                                                                   else "Error")}}


CASES = [
    # (job, pod) -> (state, error_type, exit_code, read_log)
    ("job just created", job(), None, ko.PENDING, "", None, False),
    ("container creating", job(), pod("Pending", waiting("ContainerCreating")), ko.PENDING, "",
     None, False),
    ("running", job(), pod(), ko.PENDING, "", None, False),
    ("succeeded", job(("Complete", "CompletionsReached")), pod("Succeeded", terminated(0)),
     ko.RAN, "", 0, True),
    ("exit code, job not updated yet", job(), pod("Failed", terminated(3)), ko.RAN, "", 3, True),
    ("exit code", job(("Failed", "BackoffLimitExceeded")), pod("Failed", terminated(1)),
     ko.RAN, "", 1, True),
    ("oom", job(("Failed", "BackoffLimitExceeded")), pod("Failed", terminated(137, "OOMKilled")),
     ko.FAILED, "MemoryError", 137, True),
    ("deadline, pod deleted", job(("Failed", "DeadlineExceeded")), None, ko.TIMED_OUT,
     "Timeout", None, False),
    ("deadline, pod still there", job(("Failed", "DeadlineExceeded")),
     pod("Failed", terminated(137)), ko.TIMED_OUT, "Timeout", None, True),
    # Kubernetes 1.31+: FailureTarget at once, Failed only once the pods are gone
    ("deadline as FailureTarget, pod killed", job(("FailureTarget", "DeadlineExceeded")),
     pod("Failed", terminated(143)), ko.TIMED_OUT, "Timeout", None, True),
    ("deadline as FailureTarget, pod still terminating",
     job(("FailureTarget", "DeadlineExceeded")), pod(), ko.TIMED_OUT, "Timeout", None, True),
    ("FailureTarget for another reason: the pod says why", job(("FailureTarget",
                                                                "BackoffLimitExceeded")),
     pod("Failed", terminated(3)), ko.RAN, "", 3, True),
    ("ErrImagePull", job(), pod("Pending", waiting("ErrImagePull", "not found")), ko.FAILED,
     "ImagePullError", None, False),
    ("ImagePullBackOff", job(), pod("Pending", waiting("ImagePullBackOff")), ko.FAILED,
     "ImagePullError", None, False),
    ("InvalidImageName", job(), pod("Pending", waiting("InvalidImageName")), ko.FAILED,
     "ImagePullError", None, False),
    ("config error", job(), pod("Pending", waiting("CreateContainerConfigError", "no secret")),
     ko.FAILED, "ContainerError", None, False),
    ("crash loop", job(), pod("Running", waiting("CrashLoopBackOff"),
                              last=terminated(2)), ko.FAILED, "CrashLoopBackOff", 2, True),
    ("evicted", job(("Failed", "BackoffLimitExceeded")), pod("Failed", terminated(137),
                                                              reason="Evicted"),
     ko.UNAVAILABLE, "PodEvicted", None, False),
    ("disruption target", job(), pod("Failed", terminated(137), conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
     ko.UNAVAILABLE, "PodEvicted", None, False),
    ("pod failed without a container status", job(),
     {"metadata": {}, "status": {"phase": "Failed", "reason": "UnexpectedError"}},
     ko.FAILED, "PodFailed", None, False),
    ("job failed, no pod", job(("Failed", "BackoffLimitExceeded")), None, ko.FAILED,
     "JobFailed", None, False),
    ("job complete, pod gone", job(("Complete", "CompletionsReached")), None, ko.UNAVAILABLE,
     "", None, False),
    ("job gone", None, None, ko.UNAVAILABLE, "", None, False),
    ("job false condition ignored", {"status": {"conditions": [
        {"type": "Failed", "status": "False", "reason": "DeadlineExceeded"}]}}, pod(),
     ko.PENDING, "", None, False),
]


@pytest.mark.parametrize("label, job_json, pod_json, state, error_type, exit_code, read_log",
                         CASES, ids=[c[0] for c in CASES])
def test_classify(label, job_json, pod_json, state, error_type, exit_code, read_log):
    verdict = ko.classify(job_json, pod_json)
    assert (verdict.state, verdict.error_type, verdict.exit_code, verdict.read_log) == (
        state, error_type, exit_code, read_log)


def test_job_settled():
    assert not ko.job_settled(None) and not ko.job_settled(job())
    for kind in ("Complete", "Failed", "FailureTarget"):
        assert ko.job_settled(job((kind, "X")))


def test_reasons_are_in_the_error():
    verdict = ko.classify(job(), pod("Pending", waiting("ErrImagePull", "manifest unknown")))
    assert "reg/fn@sha256:1" in verdict.error and "ErrImagePull: manifest unknown" in verdict.error
    evicted = ko.classify(job(), pod("Failed", terminated(137), reason="Evicted"))
    assert "Evicted" in evicted.error and "low on resource" in evicted.error
    timed_out = ko.classify(job(("Failed", "DeadlineExceeded"), deadline=7), None)
    assert "7 s" in timed_out.error


def framed(answer: dict) -> bytes:
    payload = json.dumps(answer).encode()
    return frame_header(NONCE, len(payload)) + payload + b"\n"


def test_outcome_from_a_frame_with_stray_output():
    log = b"stray line\n" + framed({"ok": True, "output": [1], "logs": "inside\n",
                                    "exit_code": 0}) + b"after\n"
    outcome = ko.outcome(ko.Verdict(ko.RAN, exit_code=0, read_log=True), log, NONCE,
                         memory_mb=64)
    assert outcome.status == "succeeded" and outcome.output == [1]
    assert outcome.logs.startswith("stray line") and "inside" in outcome.logs


def test_outcome_of_a_function_error_frame():
    log = framed({"ok": False, "error_type": "ValueError", "error": "bad", "exit_code": 1})
    outcome = ko.outcome(ko.Verdict(ko.RAN, exit_code=1, read_log=True), log, NONCE,
                         memory_mb=64)
    assert (outcome.status, outcome.error_type, outcome.exit_code) == ("failed", "ValueError", 1)


def test_a_forged_frame_is_not_a_result():
    forged = framed({"ok": True, "output": "forged"}).replace(NONCE.encode(), b"f" * 32)
    outcome = ko.outcome(ko.Verdict(ko.RAN, exit_code=0, read_log=True), forged, NONCE,
                         memory_mb=64)
    assert outcome.status == "failed" and outcome.error_type == "ProcessExited"


@pytest.mark.parametrize("verdict, log, status, error_type, needle", [
    (ko.Verdict(ko.RAN, exit_code=2, read_log=True), b"Traceback\n", "failed", "ProcessExited",
     "code 2"),
    (ko.Verdict(ko.FAILED, "MemoryError", exit_code=137, read_log=True), b"allocating\n",
     "failed", "MemoryError", "64 MiB"),
    (ko.Verdict(ko.TIMED_OUT, "Timeout", "function did not finish within 5 s"), None,
     "timed_out", "Timeout", "5 s"),
    (ko.Verdict(ko.FAILED, "ImagePullError", "the image x cannot be pulled: ErrImagePull"), None,
     "failed", "ImagePullError", "ErrImagePull"),
    (ko.Verdict(ko.RAN, exit_code=0, read_log=True),
     frame_header(NONCE, 5) + b"nojso\n", "failed", "ProtocolError", "not UTF-8 JSON"),
])
def test_outcome_without_a_result(verdict, log, status, error_type, needle):
    outcome = ko.outcome(verdict, log, NONCE, memory_mb=64)
    assert (outcome.status, outcome.error_type) == (status, error_type)
    assert needle in outcome.error
    if log and b"Traceback" in log:
        assert "Traceback" in outcome.logs
