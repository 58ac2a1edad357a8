"""The kubernetes runtime: each invocation as a Job in the functions namespace (cold mode), or
sent to a warm Deployment of the version (KUBEFUNCTION_KUBE_MODE=warm, see `kube_warm`).

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

Only the official `kubernetes` client is used; every call has a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from . import kube_outcomes
from .base import (
    FunctionSpec,
    InvocationContext,
    Outcome,
    PrepareResult,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
)
from .docker_container import FUNCTION_UID, runner_command
from .protocol import runner_request

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
CONTAINER = "function"
# The request Secret's volume in the function's container (read-only, the runner reads the file).
REQUEST_VOLUME = "request"
REQUEST_DIR = "/var/run/kubefunction/request"
REQUEST_KEY = "request.json"
# Once the pod runs, the runtime waits at most this long past the function's deadline for the
# Job to say how it ended; then it deletes the pod itself (gracePeriodSeconds 0) and reports
# timed_out. A Job's conditions may lag its pod's end by about this much on a busy cluster.
DEADLINE_MARGIN = 3.0
LABEL = "kubefunction.io"
# The functions namespace's default-deny NetworkPolicy (k8s/base) selects pods on
# io.kubefunction.managed=true: every function pod must carry it.
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubefunction", "io.kubefunction.managed": "true"}
_UNSAFE = re.compile(r"[^a-z0-9-]+")
# Every (verb, resource) the runtime calls in its namespace: what its Role must grant.
COLD_PERMISSIONS = frozenset({
    ("create", "jobs"), ("get", "jobs"), ("list", "jobs"), ("watch", "jobs"), ("delete", "jobs"),
    ("list", "pods"), ("watch", "pods"), ("get", "pods/log"), ("delete", "pods"),
    # the request Secret: created per Job, read when adopting, a stale one replaced
    ("create", "secrets"), ("get", "secrets"), ("delete", "secrets"),
})
WARM_PERMISSIONS = frozenset({
    ("create", "deployments"), ("get", "deployments"), ("patch", "deployments"),
    ("delete", "deployments"), ("create", "services"), ("delete", "services"),
    ("list", "deployments"), ("list", "endpointslices"), ("watch", "endpointslices"),
    ("delete", "pods"),
})
PERMISSIONS = COLD_PERMISSIONS | WARM_PERMISSIONS

def job_name(function_name: str, execution_id: str, attempt: int = 1) -> str:
    """`kf-<function>-<first 12 of the execution id>[-<attempt>]`, a valid DNS label of at most
    63. One name per attempt: a redelivery of the same attempt meets its Job (409, adopted); a
    retry gets a Job of its own, never the finished Job of the attempt before."""
    suffix = re.sub(r"[^a-z0-9]", "", execution_id.lower())[:12] or "x"
    if attempt > 1:
        suffix = f"{suffix}-{attempt}"
    room = 63 - len("kf-") - 1 - len(suffix)
    function = _UNSAFE.sub("-", function_name.lower()).strip("-")[:room].strip("-") or "fn"
    return f"kf-{function}-{suffix}"


def label_value(text: str) -> str:
    """`text` as a label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def labels(spec: FunctionSpec, execution_id: str) -> dict[str, str]:
    return {**MANAGED_BY, f"{LABEL}/function": label_value(spec.function_name),
            f"{LABEL}/version": str(spec.version_number),
            f"{LABEL}/execution": label_value(execution_id),
            # the default-deny NetworkPolicy of the functions namespace selects on this
            f"{LABEL}/network": "egress" if spec.network else "none"}


def pod_template(spec: FunctionSpec, pod_labels: dict[str, str],
                 command: list[str]) -> dict[str, Any]:
    """The hardened pod template every function pod (a Job's, a warm Deployment's) runs."""
    memory = f"{max(6, int(spec.memory_mb))}Mi"
    env = [{"name": str(key), "value": str(value)} for key, value in sorted(spec.env.items())
           if key != "LANG"]
    env += [{"name": "LANG", "value": "C.UTF-8"}]
    return {
        "metadata": {"labels": pod_labels},
        "spec": {
            "restartPolicy": "Never",
            # The runner as PID 1 exits on SIGTERM; this bounds a function that keeps it from
            # doing so (the default, 30 s, is what made a timed-out pod linger).
            "terminationGracePeriodSeconds": settings.KUBEFUNCTION_KUBE_GRACE_SECONDS,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": FUNCTION_UID,
                "runAsGroup": FUNCTION_UID, "seccompProfile": {"type": "RuntimeDefault"}},
            "imagePullSecrets": [{"name": secret} for secret in
                                 settings.KUBEFUNCTION_KUBE_IMAGE_PULL_SECRETS],
            "containers": [{
                "name": CONTAINER, "image": spec.image,
                "command": command,
                "workingDir": "/opt/kubefunction/src",
                "env": env,
                "resources": {
                    "requests": {"memory": memory,
                                 "cpu": settings.KUBEFUNCTION_KUBE_CPU_REQUEST},
                    "limits": {"memory": memory,
                               "cpu": settings.KUBEFUNCTION_KUBE_CPU_LIMIT}},
                "securityContext": {
                    "allowPrivilegeEscalation": False, "privileged": False,
                    "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                    "runAsUser": FUNCTION_UID, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


def job_manifest(spec: FunctionSpec, name: str, context: InvocationContext) -> dict[str, Any]:
    """The Job that runs the function once on the request its Secret (`request_secret`, of the
    same name) holds: the Job itself carries no payload."""
    pod_labels = labels(spec, context.execution_id)
    template = pod_template(spec, pod_labels, runner_command(
        spec, "--request-file", f"{REQUEST_DIR}/{REQUEST_KEY}"))
    pod = template["spec"]
    pod["containers"][0]["volumeMounts"].append(
        {"name": REQUEST_VOLUME, "mountPath": REQUEST_DIR, "readOnly": True})
    pod["volumes"].append({"name": REQUEST_VOLUME, "secret": {
        "secretName": name, "defaultMode": 0o444,
        "items": [{"key": REQUEST_KEY, "path": REQUEST_KEY}]}})
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": pod_labels,
                     "annotations": {f"{LABEL}/task-id": context.task_id,
                                     f"{LABEL}/execution-id": context.execution_id}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(spec.timeout_seconds)),
            "ttlSecondsAfterFinished": settings.KUBEFUNCTION_KUBE_JOB_TTL,
            "template": template,
        },
    }


def request_secret(job: dict, request: bytes) -> dict[str, Any]:
    """The Secret that carries a Job's request, owned by the Job (garbage-collected with it).
    No blockOwnerDeletion: that would need update on jobs/finalizers."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": meta["name"], "labels": dict(meta.get("labels") or {}),
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                          "name": meta["name"], "uid": meta["uid"]}]},
        "data": {REQUEST_KEY: base64.b64encode(request).decode("ascii")},
    }


@contextlib.contextmanager
def api_errors(action: str) -> Iterator[None]:
    """API failures as the runtime's errors: the server failing, throttling or not answering may
    pass (`RuntimeUnavailable`); a request it refuses will not (`RuntimeFailure`)."""
    try:
        yield
    except ApiException as exc:
        detail = _status_message(exc)
        if not exc.status or exc.status >= 500 or exc.status == 429:
            raise RuntimeUnavailable(f"the Kubernetes API failed to {action}: {detail}") from exc
        raise RuntimeFailure(f"the Kubernetes API refused to {action}: {detail}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise RuntimeUnavailable(f"the Kubernetes API did not answer ({action}): {exc}") from exc


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return f"{exc.status} {body.get('reason', '')}: {body.get('message', '')}"
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"


def _json(response: Any) -> dict:
    return json.loads(response.data)


def build_api_client() -> client.ApiClient:
    """A client for KUBEFUNCTION_KUBECONFIG, the in-cluster service account, or KUBECONFIG."""
    try:
        if settings.KUBEFUNCTION_KUBECONFIG:
            return config.new_client_from_config(config_file=settings.KUBEFUNCTION_KUBECONFIG)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config()
    except (ConfigException, OSError, ValueError) as exc:
        raise RuntimeFailure(f"no usable Kubernetes configuration: {exc} (set "
                             "KUBEFUNCTION_KUBECONFIG, or run in a cluster)") from exc


class KubernetesRuntime(Runtime):
    """Runs each invocation as a Kubernetes Job of the version's image (`spec.image`)."""

    name = "kubernetes"

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        """Cold mode adopts the execution's Job (409); warm mode has nothing to adopt."""
        return settings.KUBEFUNCTION_KUBE_MODE != "warm"

    def __init__(self) -> None:
        from .kube_warm import WarmDeployments

        self._api: client.ApiClient | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.warm = WarmDeployments(self)

    # --- the API -----------------------------------------------------------------------------

    def api_client(self) -> client.ApiClient:
        """The API client, built once per process (a forked worker child builds its own)."""
        pid = os.getpid()
        if self._api is None or self._pid != pid:
            with self._lock:
                if self._api is None or self._pid != pid:
                    self._api, self._pid = build_api_client(), pid
        return self._api

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client())

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client())

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client())

    @property
    def discovery(self) -> client.DiscoveryV1Api:
        return client.DiscoveryV1Api(self.api_client())

    @property
    def namespace(self) -> str:
        return settings.KUBEFUNCTION_KUBE_NAMESPACE

    @staticmethod
    def _timeout() -> tuple[int, int]:
        return (settings.KUBEFUNCTION_KUBE_TIMEOUT, settings.KUBEFUNCTION_KUBE_TIMEOUT)

    def close(self) -> None:
        self.warm.close()
        if self._api is not None and self._pid == os.getpid():
            self._api.close()
        self._api = None

    def release(self, spec: FunctionSpec) -> None:
        if settings.KUBEFUNCTION_KUBE_MODE == "warm":
            self.warm.release(spec)

    # --- the interface -----------------------------------------------------------------------

    def needs_prepare(self, spec: FunctionSpec) -> bool:
        return not spec.image

    def prepare(self, spec: FunctionSpec) -> PrepareResult:
        """Nothing to do beyond the image `functions.images` builds: the kubelet pulls it."""
        if not spec.image:
            return PrepareResult(ok=False, log=f"{spec.function_name} v{spec.version_number} "
                                               "has no image yet: build it first")
        return PrepareResult(ok=True, log=f"the cluster pulls {spec.image} when a pod starts")

    def health(self) -> tuple[bool, str]:
        try:
            with api_errors("list Jobs"):
                self.batch.list_namespaced_job(self.namespace, limit=1,
                                               _request_timeout=self._timeout())
            host = self.api_client().configuration.host
        except (RuntimeUnavailable, RuntimeFailure) as exc:
            return False, f"kubernetes runtime: {exc}"
        return True, f"kubernetes runtime: API at {host}, namespace {self.namespace}"

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        if not spec.image:
            raise RuntimeFailure(f"{spec.function_name} v{spec.version_number} has no image "
                                 "yet: build it for the kubernetes runtime first")
        if settings.KUBEFUNCTION_KUBE_MODE == "warm":
            return self.warm.invoke(spec, payload, context)
        budget = context.deadline - time.time()
        if budget <= 0:
            return Outcome(status="timed_out", error_type="Timeout",
                           error="the deadline passed before the function started")
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
        if verdict.state == kube_outcomes.UNAVAILABLE:  # the retry needs a new Job
            self._delete_job(name, uid)
            raise RuntimeUnavailable(verdict.error)
        log = self._read_log(pod) if pod is not None and verdict.read_log else None
        if verdict.state == kube_outcomes.TIMED_OUT:  # what outlives the deadline goes now
            self._kill_pods(uid)
        self._delete_job(name, uid)
        return kube_outcomes.outcome(verdict, log, nonce, memory_mb=spec.memory_mb,
                                     max_frame_bytes=self._max_frame())

    # --- cold mode ---------------------------------------------------------------------------

    @staticmethod
    def _max_frame() -> int:
        # JSON escaping can grow text up to 6x; anything beyond is not a runner's frame.
        return 8 * (settings.KUBEFUNCTION_MAX_OUTPUT_BYTES
                    + 2 * settings.KUBEFUNCTION_MAX_LOG_BYTES) + MIB

    def _deliver(self, job: dict, request: bytes, nonce: str) -> str:
        """Create the Job's request Secret; returns the nonce its pod answers with: ours, or
        that of the earlier attempt whose Secret this adopted Job already has."""
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        body = request_secret(job, request)
        for _ in range(2):
            with api_errors("create the function's request Secret"):
                try:
                    self.core.create_namespaced_secret(self.namespace, body,
                                                       _preload_content=False,
                                                       _request_timeout=self._timeout())
                    return nonce
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                existing = _json(self.core.read_namespaced_secret(
                    name, self.namespace, _preload_content=False,
                    _request_timeout=self._timeout()))
            owners = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []}
            if uid in owners:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    data = base64.b64decode(existing["data"][REQUEST_KEY])
                    return str(json.loads(data)["nonce"])
                raise RuntimeFailure(f"the request Secret {name} of the Job holds no request")
            # A Secret of an earlier Job of this name, not yet garbage-collected: replace it.
            with api_errors("replace a stale request Secret"):
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_secret(
                        name, self.namespace, body=client.V1DeleteOptions(
                            preconditions=client.V1Preconditions(
                                uid=existing["metadata"]["uid"])),
                        _preload_content=False, _request_timeout=self._timeout())
        raise RuntimeUnavailable(f"the request Secret {name} is held by another Job")

    def _create_or_adopt(self, manifest: dict, context: InvocationContext) -> dict:
        name = manifest["metadata"]["name"]
        try:
            with api_errors("create the function's Job"):
                try:
                    return _json(self.batch.create_namespaced_job(
                        self.namespace, manifest, _preload_content=False,
                        _request_timeout=self._timeout()))
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                existing = _json(self.batch.read_namespaced_job(
                    name, self.namespace, _preload_content=False,
                    _request_timeout=self._timeout()))
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
                job = _json(self.batch.read_namespaced_job(
                    name, self.namespace, _preload_content=False,
                    _request_timeout=self._timeout()))
        except RuntimeFailure as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise
        return job if job["metadata"]["uid"] == uid else None

    def _list_pods(self, selector: str) -> tuple[dict | None, str]:
        with api_errors("list the function's pods"):
            listed = _json(self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _preload_content=False,
                _request_timeout=self._timeout()))
        return _newest(listed["items"]), listed["metadata"]["resourceVersion"]

    def _follow(self, name: str, uid: str, job: dict | None, end: float,
                deadline: float) -> tuple[kube_outcomes.Verdict, dict | None]:
        """Watch the Job's pods (and, once its pod is gone, the Job) until a final verdict, or
        until `end` (monotonic) — which becomes `deadline` + DEADLINE_MARGIN once the pod has
        started: pulling and scheduling may take START_GRACE, the function may not."""
        selector = f"batch.kubernetes.io/controller-uid={uid}"
        pod, rv = self._list_pods(selector)
        pod_gone = False
        while True:
            if _started(pod):
                end = min(end, deadline + DEADLINE_MARGIN)
            verdict = kube_outcomes.classify(job, pod)
            if verdict.state not in (kube_outcomes.PENDING, kube_outcomes.TIMED_OUT) and \
                    _killed(pod, deadline) and not kube_outcomes.job_settled(job):
                # The pod was ended from outside (the deadline, most likely): the Job's
                # conditions say why, and may trail the pod's status by a moment.
                job = self._settle(name, uid, job, min(end, time.monotonic() + DEADLINE_MARGIN))
                verdict = kube_outcomes.classify(job, pod)
            if verdict.state != kube_outcomes.PENDING:
                return verdict, pod
            remaining = end - time.monotonic()
            if remaining <= 0:
                return kube_outcomes.Verdict(
                    kube_outcomes.TIMED_OUT, "Timeout",
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
                    if kube_outcomes.classify(job, pod).state != kube_outcomes.PENDING:
                        job = self._read_job(name, uid)  # the Job's word comes first
                        break
                    if obj["metadata"].get("deletionTimestamp") and not terminating:
                        # Being deleted (the deadline?): a pod that ignores SIGTERM would
                        # keep us waiting for its grace period; the Job may already say why.
                        job = self._read_job(name, uid)
                        if kube_outcomes.job_settled(job):
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
        while job is not None and not kube_outcomes.job_settled(job):
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
                listed = _json(self.core.list_namespaced_pod(
                    self.namespace, label_selector=f"batch.kubernetes.io/controller-uid={uid}",
                    _preload_content=False, _request_timeout=self._timeout()))
            for pod in listed["items"]:
                with api_errors("delete the function's pod"):
                    try:
                        self.core.delete_namespaced_pod(
                            pod["metadata"]["name"], self.namespace, grace_period_seconds=0,
                            _preload_content=False, _request_timeout=self._timeout())
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
                self.core.delete_namespaced_secret(
                    name, self.namespace, _preload_content=False,
                    _request_timeout=self._timeout())
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
        call = (self.core.list_namespaced_pod if kind == "pods"
                else self.batch.list_namespaced_job)
        options = {"field_selector" if field else "label_selector": selector}
        with api_errors(f"watch the function's {kind}"):
            response = call(self.namespace, watch=True, resource_version=rv,
                            timeout_seconds=seconds, allow_watch_bookmarks=False,
                            _preload_content=False,
                            _request_timeout=(settings.KUBEFUNCTION_KUBE_TIMEOUT,
                                              seconds + settings.KUBEFUNCTION_KUBE_TIMEOUT),
                            **options)
        try:
            with api_errors(f"watch the function's {kind}"):
                for line in iter_resp_lines(response):
                    if line:
                        yield json.loads(line)
        finally:  # a watch left early must not go back to the pool with unread data
            response.close()
            response.release_conn()

    def _read_log(self, pod: dict) -> bytes | None:
        """The pod's log (stdout and stderr as the kubelet keeps them), or None if it is gone."""
        try:
            with api_errors("read the function's log"):
                response = self.core.read_namespaced_pod_log(
                    pod["metadata"]["name"], self.namespace, container=CONTAINER,
                    limit_bytes=2 * self._max_frame(), _preload_content=False,
                    _request_timeout=self._timeout())
                return response.data
        except RuntimeFailure as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status in (400, 404):
                return None  # gone, or never started
            raise

    def _delete_job(self, name: str, uid: str) -> None:
        """Delete the Job and (Background propagation) its pods; the TTL covers a failure."""
        try:
            with api_errors("delete the function's Job"):
                self.batch.delete_namespaced_job(
                    name, self.namespace, body=client.V1DeleteOptions(
                        propagation_policy="Background", preconditions=client.V1Preconditions(
                            uid=uid)),
                    _preload_content=False, _request_timeout=self._timeout())
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
