"""Cold mode of the kubernetes runtime: each invocation as a Job in the functions namespace.

One Job per execution, named from the execution id, so a redelivered task that meets 409 adopts
the Job its first attempt created instead of running the function twice. The pod is hardened
(non-root user 10001, read-only root with an emptyDir /tmp, no privilege escalation, no
capabilities, RuntimeDefault seccomp, no service-account token, no service links) and limited
(memory from the function, CPU from settings, activeDeadlineSeconds from the timeout,
backoffLimit 0, a short terminationGracePeriodSeconds). The request (the payload) never enters
the Job or pod spec, which `kubectl get job` shows and etcd keeps: it travels in a Secret named
like the Job, created right after it with an ownerReference to the Job's uid (so the garbage
collector removes it with the Job), mounted read-only as a file (`runner --request-file`); the
pod stays ContainerCreating until the Secret exists. The result comes back framed in the pod's
log. Completion is followed with watches that keep their resourceVersion (a 410 Gone is
answered by a fresh list), never by polling; the Job is read again whenever its pod ends, so its
conditions (DeadlineExceeded, as FailureTarget or Failed) win over the pod's exit code. Once the
pod runs, the runtime waits at most DEADLINE_MARGIN past the deadline, then deletes the pod
itself (gracePeriodSeconds 0). The Job is deleted with propagationPolicy=Background once its
outcome is read; ttlSecondsAfterFinished is the backstop. A cancel (the pool process raising
SoftTimeLimitExceeded inside `invoke`) deletes the pods (gracePeriodSeconds 0), the Job and its
Secret on the way out instead of leaving them to the deadline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from kubernetes import client
from kubernetes.client.rest import ApiException

from functions.specs import FunctionSpec

from ..base import InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable
from ..wire import late_outcome, max_frame_bytes, runner_request
from . import outcomes
from .client import KubeClient, api_errors
from .manifests import CONTAINER, LABEL, REQUEST_KEY, job_manifest, job_name, request_secret

logger = logging.getLogger(__name__)

# Once the pod runs, the runtime waits at most this long past the function's deadline for the
# Job to say how it ended; then it deletes the pod itself (gracePeriodSeconds 0) and reports
# timed_out. A Job's conditions may lag its pod's end by about this much on a busy cluster.
DEADLINE_MARGIN = 3.0


class Jobs:
    """Cold mode: one Job per execution attempt (see the module's docstring)."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        budget = context.deadline - time.time()
        if budget <= 0:
            return late_outcome()
        request, nonce = runner_request(spec, payload, context)
        name = job_name(spec.function_name, context.execution_id, context.attempt)
        job = self._create_or_adopt(job_manifest(spec, name, context), context)
        uid = job["metadata"]["uid"]
        try:
            try:
                nonce = self._deliver(job, request, nonce)
            except RuntimeFailure:  # refused for good: the Job would wait for its Secret forever
                self._delete_job(name, uid)
                raise
            now = time.monotonic()
            deadline = now + budget
            # When the API fails on the way (RuntimeUnavailable), the Job is left running: the
            # retried task adopts it and reads its answer. Its deadline and TTL bound it
            # otherwise.
            verdict, pod = self._follow(name, uid, job, now + budget + settings.
                                        KUBEFUNCTION_KUBE_START_GRACE, deadline)
        except SoftTimeLimitExceeded:
            # A cancel's kill (revoke terminate, SIGUSR1) or the task's soft time limit: no one
            # will read this Job, so nothing of it may run on until its deadline.
            self._abandon(name, uid)
            raise
        if verdict.state == outcomes.UNAVAILABLE:  # the retry needs a new Job
            self._delete_job(name, uid)
            raise RuntimeUnavailable(verdict.error)
        log = self._read_log(pod) if pod is not None and verdict.read_log else None
        if verdict.state == outcomes.TIMED_OUT:  # what outlives the deadline goes now
            self._kill_pods(uid)
        self._delete_job(name, uid)
        return outcomes.outcome(verdict, log, nonce, memory_mb=spec.memory_mb,
                                max_frame_bytes=max_frame_bytes())

    def _deliver(self, job: dict, request: bytes, nonce: str) -> str:
        """Create the Job's request Secret; returns the nonce its pod answers with: ours, or
        that of the earlier attempt whose Secret this adopted Job already has."""
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        body = request_secret(job, request)
        for _ in range(2):
            with api_errors("create the function's request Secret"):
                try:
                    self.kube.core.create_namespaced_secret(
                        self.kube.namespace, body, _preload_content=False,
                        _request_timeout=self.kube.timeout())
                    return nonce
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                existing = self.kube.read(self.kube.core.read_namespaced_secret,
                                          name, self.kube.namespace)
            owners = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []}
            if uid in owners:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    data = base64.b64decode(existing["data"][REQUEST_KEY])
                    return str(json.loads(data)["nonce"])
                raise RuntimeFailure(f"the request Secret {name} of the Job holds no request")
            # A Secret of an earlier Job of this name, not yet garbage-collected: replace it.
            with api_errors("replace a stale request Secret"):
                with contextlib.suppress(ApiException):
                    self.kube.core.delete_namespaced_secret(
                        name, self.kube.namespace, body=client.V1DeleteOptions(
                            preconditions=client.V1Preconditions(
                                uid=existing["metadata"]["uid"])),
                        _preload_content=False, _request_timeout=self.kube.timeout())
        raise RuntimeUnavailable(f"the request Secret {name} is held by another Job")

    def _create_or_adopt(self, manifest: dict, context: InvocationContext) -> dict:
        name = manifest["metadata"]["name"]
        try:
            with api_errors("create the function's Job"):
                try:
                    return self.kube.read(self.kube.batch.create_namespaced_job,
                                          self.kube.namespace, manifest)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                existing = self.kube.read(self.kube.batch.read_namespaced_job,
                                          name, self.kube.namespace)
        except RuntimeFailure as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                raise RuntimeUnavailable(f"the Job {name} vanished while adopting it") from exc
            raise
        meta = existing["metadata"]
        owner = (meta.get("annotations") or {}).get(f"{LABEL}/execution-id")
        if owner != context.execution_id:
            raise RuntimeFailure(f"the Job {name} belongs to another execution ({owner})")
        if meta.get("deletionTimestamp"):
            raise RuntimeUnavailable(f"the Job {name} of an earlier attempt is being deleted")
        logger.info("adopting the Job %s of an earlier attempt of execution %s", name,
                    context.execution_id)
        return existing

    def _read_job(self, name: str, uid: str) -> dict | None:
        try:
            with api_errors("read the function's Job"):
                job = self.kube.read(self.kube.batch.read_namespaced_job, name, self.kube.namespace)
        except RuntimeFailure as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise
        return job if job["metadata"]["uid"] == uid else None

    def _list_pods(self, selector: str) -> tuple[dict | None, str]:
        with api_errors("list the function's pods"):
            listed = self.kube.read(self.kube.core.list_namespaced_pod,
                                    self.kube.namespace, label_selector=selector)
        return _newest(listed["items"]), listed["metadata"]["resourceVersion"]

    def _follow(self, name: str, uid: str, job: dict | None, end: float,
                deadline: float) -> tuple[outcomes.Verdict, dict | None]:
        """Watch the Job's pods (and, once its pod is gone, the Job) until a final verdict, or
        until `end` (monotonic) — which becomes `deadline` + DEADLINE_MARGIN once the pod has
        started: pulling and scheduling may take START_GRACE, the function may not."""
        selector = f"batch.kubernetes.io/controller-uid={uid}"
        pod, rv = self._list_pods(selector)
        pod_gone = False
        while True:
            if _started(pod):
                end = min(end, deadline + DEADLINE_MARGIN)
            verdict = outcomes.classify(job, pod)
            if verdict.state not in (outcomes.PENDING, outcomes.TIMED_OUT) and \
                    _killed(pod, deadline) and not outcomes.job_settled(job):
                # The pod was ended from outside (the deadline, most likely): the Job's
                # conditions say why, and may trail the pod's status by a moment.
                job = self._settle(name, uid, job, min(end, time.monotonic() + DEADLINE_MARGIN))
                verdict = outcomes.classify(job, pod)
            if verdict.state != outcomes.PENDING:
                return verdict, pod
            remaining = end - time.monotonic()
            if remaining <= 0:
                return outcomes.Verdict(
                    outcomes.TIMED_OUT, "Timeout",
                    "the function's Job did not finish in time (its pod did not start or "
                    "end before the deadline)", read_log=pod is not None), pod
            seconds = max(1, min(math.ceil(remaining), settings.KUBEFUNCTION_KUBE_WATCH_SECONDS))
            if pod_gone:  # the pod was deleted (e.g. the deadline): the Job tells the rest
                job, rv = self._watch_job(name, uid, job, seconds)
                continue
            expired = False
            was_started = _started(pod)
            try:
                for event in self._watch("pods", selector, rv, seconds):
                    if event["type"] == "ERROR":  # 410 Gone (history compacted) or worse
                        expired = True
                        break
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        pod, pod_gone = None, True
                        job = self._read_job(name, uid)
                        if job is not None:
                            rv = job["metadata"]["resourceVersion"]
                        break
                    terminating = pod is not None and bool(
                        pod["metadata"].get("deletionTimestamp"))
                    pod = obj
                    if outcomes.classify(job, pod).state != outcomes.PENDING:
                        job = self._read_job(name, uid)  # the Job's word comes first
                        break
                    if obj["metadata"].get("deletionTimestamp") and not terminating:
                        # Being deleted (the deadline?): a pod that ignores SIGTERM would
                        # keep us waiting for its grace period; the Job may already say why.
                        job = self._read_job(name, uid)
                        if outcomes.job_settled(job):
                            break
                    if _started(pod) and not was_started:
                        break  # the wait just got shorter: watch again with its timeout
                else:  # the watch timed out: refresh the Job (a deadline may pass quietly)
                    job = self._read_job(name, uid)
            except RuntimeFailure as exc:  # some servers answer a too old watch with HTTP 410
                if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 410):
                    raise
                expired = True
            if expired:  # start again from a fresh list
                pod, rv = self._list_pods(selector)
                job = self._read_job(name, uid)

    def _settle(self, name: str, uid: str, job: dict | None, until: float) -> dict | None:
        """The Job once it carries a final condition (or FailureTarget), or at `until`."""
        while job is not None and not outcomes.job_settled(job):
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            job, _ = self._watch_job(name, uid, job, max(1, math.ceil(remaining)))
        return job

    def _kill_pods(self, uid: str) -> None:
        """Delete the Job's pods at once (gracePeriodSeconds 0): past its deadline a function
        gets no grace period, whatever it does with SIGTERM."""
        try:
            with api_errors("list the function's pods"):
                listed = self.kube.read(
                    self.kube.core.list_namespaced_pod, self.kube.namespace,
                    label_selector=f"batch.kubernetes.io/controller-uid={uid}")
            for pod in listed["items"]:
                with api_errors("delete the function's pod"):
                    try:
                        self.kube.core.delete_namespaced_pod(
                            pod["metadata"]["name"], self.kube.namespace, grace_period_seconds=0,
                            _preload_content=False, _request_timeout=self.kube.timeout())
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            logger.warning("could not delete the pods of the Job %s: %s", uid, exc)

    def _abandon(self, name: str, uid: str) -> None:
        """Stop a Job whose run was given up (cancelled): its pods at once (gracePeriodSeconds
        0), the Job (Background), and its request Secret now rather than when the garbage
        collector gets to it."""
        self._kill_pods(uid)
        self._delete_job(name, uid)
        try:
            with api_errors("delete the function's request Secret"):
                # By name: it is this execution attempt's (job_name), like the Job.
                self.kube.core.delete_namespaced_secret(
                    name, self.kube.namespace, _preload_content=False,
                    _request_timeout=self.kube.timeout())
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404):
                logger.warning("could not delete the request Secret %s: %s", name, exc)
        logger.info("stopped the Job %s of a cancelled run", name)

    def _watch_job(self, name: str, uid: str, job: dict | None,
                   seconds: int) -> tuple[dict | None, str]:
        """The Job after it next changes (or `seconds` pass)."""
        rv = job["metadata"]["resourceVersion"] if job else ""
        if job is None:
            return None, rv
        for event in self._watch("jobs", f"metadata.name={name}", rv, seconds, field=True):
            if event["type"] == "ERROR":
                break
            if event["type"] == "DELETED":
                return None, rv
            if event["object"]["metadata"]["uid"] == uid:
                return event["object"], event["object"]["metadata"]["resourceVersion"]
        fresh = self._read_job(name, uid)
        return fresh, fresh["metadata"]["resourceVersion"] if fresh else rv

    def _watch(self, kind: str, selector: str, rv: str, seconds: int,
               field: bool = False) -> Iterator[dict]:
        """Events of one watch request from `rv`, ending after `seconds` at most."""
        call = (self.kube.core.list_namespaced_pod if kind == "pods"
                else self.kube.batch.list_namespaced_job)
        options = {"field_selector" if field else "label_selector": selector}
        return self.kube.watch(call, f"watch the function's {kind}", seconds,
                               resource_version=rv, allow_watch_bookmarks=False, **options)

    def _read_log(self, pod: dict) -> bytes | None:
        """The pod's log (stdout and stderr as the kubelet keeps them), or None if it is gone."""
        try:
            with api_errors("read the function's log"):
                response = self.kube.core.read_namespaced_pod_log(
                    pod["metadata"]["name"], self.kube.namespace, container=CONTAINER,
                    limit_bytes=2 * max_frame_bytes(), _preload_content=False,
                    _request_timeout=self.kube.timeout())
                return response.data
        except RuntimeFailure as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status in (400, 404):
                return None  # gone, or never started
            raise

    def _delete_job(self, name: str, uid: str) -> None:
        """Delete the Job and (Background propagation) its pods; the TTL covers a failure."""
        try:
            with api_errors("delete the function's Job"):
                self.kube.batch.delete_namespaced_job(
                    name, self.kube.namespace, body=client.V1DeleteOptions(
                        propagation_policy="Background", preconditions=client.V1Preconditions(
                            uid=uid)),
                    _preload_content=False, _request_timeout=self.kube.timeout())
        except RuntimeFailure as exc:
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status in (404,
                                                                                         409)):
                logger.warning("could not delete the Job %s: %s", name, exc)
        except RuntimeUnavailable as exc:
            logger.warning("could not delete the Job %s (its TTL will): %s", name, exc)


def _started(pod: dict | None) -> bool:
    """The pod's container has started (it runs or has run): the function's clock is on."""
    if pod is None:
        return False
    state = (((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {})
    return "running" in state or "terminated" in state


def _killed(pod: dict | None, deadline: float) -> bool:
    """The pod ended because something ended it: it is being deleted, or it is past the
    deadline (the Job controller's doing)."""
    return pod is not None and (bool(pod["metadata"].get("deletionTimestamp"))
                                or time.monotonic() >= deadline)


def _newest(pods: list[dict]) -> dict | None:
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""),
                                    int(p["metadata"].get("resourceVersion", "0"))),
               default=None)
