"""What the kubernetes runtime creates, as plain manifests: the hardened pod every function pod
runs, the Job (and its request Secret) of a cold invocation, the Deployment and Service of a warm
version, and the names and labels they carry. No API call here.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from functions.image_contract import FUNCTION_UID, SOURCE_DIR, runner_command
from functions.specs import FunctionSpec

from ..base import InvocationContext

CONTAINER = "function"
# The request Secret's volume in the function's container (read-only, the runner reads the file).
REQUEST_VOLUME = "request"
REQUEST_DIR = "/var/run/kubefunction/request"
REQUEST_KEY = "request.json"
LABEL = "kubefunction.io"
# The functions namespace's default-deny NetworkPolicy (k8s/base) selects pods on
# io.kubefunction.managed=true: every function pod must carry it.
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubefunction", "io.kubefunction.managed": "true"}
_UNSAFE = re.compile(r"[^a-z0-9-]+")
# A warm Deployment's own label (its selector), and its annotations: when it was last used, and
# the function's timeout (see `warm`).
WARM_LABEL = "kubefunction.io/warm"
LAST_USED = "kubefunction.io/last-used"
TIMEOUT = "kubefunction.io/timeout-seconds"


def job_name(function_name: str, execution_id: str, attempt: int = 1) -> str:
    """`kf-<function>-<first 12 of the execution id>[-<attempt>]`, a valid DNS label of at most
    63. One name per attempt: a redelivery of the same attempt meets its Job (409, adopted); a
    retry gets a Job of its own, never the finished Job of the attempt before."""
    suffix = re.sub(r"[^a-z0-9]", "", execution_id.lower())[:12] or "x"
    if attempt > 1:
        suffix = f"{suffix}-{attempt}"
    return f"kf-{_name_part(function_name, 63 - len('kf-') - 1 - len(suffix))}-{suffix}"


def _name_part(function_name: str, room: int) -> str:
    """The function's name as part of a DNS label, in at most `room` characters."""
    return _UNSAFE.sub("-", function_name.lower()).strip("-")[:room].strip("-") or "fn"


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
                "workingDir": SOURCE_DIR,
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


def timestamp(moment: float) -> str:
    """`moment` (epoch seconds) as RFC 3339 in UTC, to the millisecond."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_timestamp(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time, or None when it is missing or unreadable."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def usage_annotations(spec: FunctionSpec, moment: float) -> dict[str, str]:
    return {LAST_USED: timestamp(moment), TIMEOUT: str(math.ceil(spec.timeout_seconds))}


def warm_name(spec: FunctionSpec) -> str:
    """`kfw-<function>-v<n>-<digest>`: one per version and shape (image, handler, limits, env)."""
    shape = (spec.version_id, spec.image, spec.handler, spec.mode, spec.memory_mb,
             spec.network, sorted(spec.env.items()))
    # A convention only where there is one: the default's names stay as they were.
    key = repr((*shape, spec.convention) if spec.convention else shape)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    suffix = f"-v{spec.version_number}-{digest}"
    return f"kfw-{_name_part(spec.function_name, 63 - len('kfw-') - len(suffix))}{suffix}"


def warm_manifests(spec: FunctionSpec, name: str, replicas: int) -> tuple[dict, dict]:
    """The Deployment and the Service of a warm version."""
    port = settings.KUBEFUNCTION_KUBE_WARM_PORT
    pod_labels = {**labels(spec, "warm"), WARM_LABEL: name}
    del pod_labels["kubefunction.io/execution"]
    # Requests travel in POST /invoke bodies: nothing of a payload is in these specs.
    pod = pod_template(spec, pod_labels, runner_command(spec, "--http", f"0.0.0.0:{port}"))
    pod["spec"]["restartPolicy"] = "Always"
    container = pod["spec"]["containers"][0]
    container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": port},
                                   "periodSeconds": 2, "failureThreshold": 1}
    selector = {WARM_LABEL: name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": pod_labels,
                     "annotations": usage_annotations(spec, time.time())},
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector}, "template": pod},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port,
                                                  "targetPort": port, "protocol": "TCP"}]},
    }
    return deployment, service
