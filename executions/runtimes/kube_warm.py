"""Warm mode of the kubernetes runtime: a Deployment + Service per function version.

The Deployment's pods run the runner in HTTP mode (`runner --http :PORT`: GET /healthz is the
readiness probe, POST /invoke one request). The worker sends each invocation to a ready endpoint
of the version's Service, read from its EndpointSlices (list + watch, never polled), so a
scaled-up or restarted pod is used as soon as it is ready. Replicas follow the in-flight load of
this worker process, between KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS and ..._MAX_REPLICAS, and drop
to the minimum (zero by default) after KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS without invocations;
the next invocation then scales up again and waits for readiness (counted as cold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import urllib3
from django.conf import settings
from kubernetes.client.rest import ApiException

from .base import FunctionSpec, InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable
from .docker_container import runner_command
from .framing import FrameError, FrameReader
from .protocol import frame_outcome, runner_request

if TYPE_CHECKING:
    from .kubernetes import KubernetesRuntime

logger = logging.getLogger(__name__)


def warm_name(spec: FunctionSpec) -> str:
    """`kfw-<function>-v<n>-<digest>`: one per version and shape (image, handler, limits, env)."""
    from .kubernetes import _UNSAFE

    key = repr((spec.version_id, spec.image, spec.handler, spec.mode, spec.memory_mb,
                spec.network, sorted(spec.env.items())))
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    suffix = f"-v{spec.version_number}-{digest}"
    room = 63 - len("kfw-") - len(suffix)
    function = _UNSAFE.sub("-", spec.function_name.lower()).strip("-")[:room].strip("-") or "fn"
    return f"kfw-{function}{suffix}"


def manifests(spec: FunctionSpec, name: str, replicas: int) -> tuple[dict, dict]:
    """The Deployment and the Service of a warm version."""
    from .kubernetes import job_manifest, labels

    port = settings.KUBEFUNCTION_KUBE_WARM_PORT
    context = InvocationContext(execution_id="warm", task_id="", deadline=0)
    pod = job_manifest(spec, name, b"{}", context)["spec"]["template"]
    pod_labels = {**labels(spec, "warm"), "kubefunction.io/warm": name}
    del pod_labels["kubefunction.io/execution"]
    pod["metadata"] = {"labels": pod_labels}
    pod["spec"]["restartPolicy"] = "Always"
    container = pod["spec"]["containers"][0]
    container["command"] = runner_command(spec, "--http", f"0.0.0.0:{port}")
    container["env"] = [e for e in container["env"] if e["name"] != "KUBEFUNCTION_REQUEST"]
    container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": port},
                                   "periodSeconds": 2, "failureThreshold": 1}
    selector = {"kubefunction.io/warm": name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector}, "template": pod},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port,
                                                  "targetPort": port, "protocol": "TCP"}]},
    }
    return deployment, service


class WarmDeployments:
    """The warm Deployments this worker process uses, with their in-flight counts."""

    def __init__(self, runtime: KubernetesRuntime) -> None:
        self.runtime = runtime
        self.lock = threading.Lock()
        self.inflight: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.http = urllib3.PoolManager(retries=False)

    # --- API helpers ---------------------------------------------------------------------

    def _read(self, call: Any, *args: Any, **kwargs: Any) -> dict:
        response = call(*args, _preload_content=False,
                        _request_timeout=self.runtime._timeout(), **kwargs)
        return json.loads(response.data)

    def _ensure(self, spec: FunctionSpec, name: str, replicas: int) -> dict:
        from .kubernetes import api_errors

        deployment, service = manifests(spec, name, replicas)
        ns = self.runtime.namespace
        apps, core = self.runtime.apps, self.runtime.core
        with api_errors("create the warm Service"):
            try:
                core.create_namespaced_service(ns, service, _preload_content=False,
                                               _request_timeout=self.runtime._timeout())
            except ApiException as exc:
                if exc.status != 409:
                    raise
        with api_errors("create the warm Deployment"):
            try:
                return self._read(apps.create_namespaced_deployment, ns, deployment)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            return self._read(apps.read_namespaced_deployment, name, ns)

    def _scale(self, name: str, replicas: int) -> None:
        from .kubernetes import api_errors

        with api_errors("scale the warm Deployment"):
            self.runtime.apps.patch_namespaced_deployment(
                name, self.runtime.namespace, {"spec": {"replicas": replicas}},
                _preload_content=False, _request_timeout=self.runtime._timeout())

    def _ready_endpoint(self, name: str, end: float) -> tuple[str, str] | None:
        """(address, pod name) of a ready endpoint of the Service, waiting (watch) until `end`
        (monotonic)."""
        from .kubernetes import api_errors

        discovery, ns = self.runtime.discovery, self.runtime.namespace
        selector = f"kubernetes.io/service-name={name}"
        while True:
            with api_errors("list the warm Service's endpoints"):
                listed = self._read(discovery.list_namespaced_endpoint_slice, ns,
                                    label_selector=selector)
            slices = {s["metadata"]["name"]: s for s in listed["items"]}
            rv = listed["metadata"]["resourceVersion"]
            while True:
                address = _pick(slices.values())
                if address:
                    return address
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                seconds = max(1, min(int(remaining), settings.KUBEFUNCTION_KUBE_WATCH_SECONDS))
                expired = False
                with api_errors("watch the warm Service's endpoints"):
                    response = discovery.list_namespaced_endpoint_slice(
                        ns, label_selector=selector, watch=True, resource_version=rv,
                        timeout_seconds=seconds, _preload_content=False,
                        _request_timeout=(settings.KUBEFUNCTION_KUBE_TIMEOUT,
                                          seconds + settings.KUBEFUNCTION_KUBE_TIMEOUT))
                    try:
                        from kubernetes.watch.watch import iter_resp_lines

                        for line in iter_resp_lines(response):
                            event = json.loads(line)
                            if event["type"] == "ERROR":
                                expired = True
                                break
                            obj = event["object"]
                            rv = obj["metadata"]["resourceVersion"]
                            if event["type"] == "DELETED":
                                slices.pop(obj["metadata"]["name"], None)
                            else:
                                slices[obj["metadata"]["name"]] = obj
                            if _pick(slices.values()):
                                break
                    finally:
                        response.close()
                        response.release_conn()
                if expired:
                    break  # list again

    # --- invoke --------------------------------------------------------------------------

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        budget = context.deadline - time.time()
        if budget <= 0:
            return Outcome(status="timed_out", error_type="Timeout",
                           error="the deadline passed before the function started")
        request, nonce = runner_request(spec, payload, context)
        name = warm_name(spec)
        low = settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS
        high = max(1, settings.KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS)
        with self.lock:
            self.inflight[name] = self.inflight.get(name, 0) + 1
            wanted = min(high, max(low, self.inflight[name]))
        try:
            self.scale_idle(keep=name)
            deployment = self._ensure(spec, name, wanted)
            cold = int(deployment["spec"].get("replicas") or 0) == 0 or not (
                deployment.get("status") or {}).get("readyReplicas")
            if int(deployment["spec"].get("replicas") or 0) < wanted:
                self._scale(name, wanted)
            end = time.monotonic() + budget + settings.KUBEFUNCTION_KUBE_START_GRACE
            endpoint = self._ready_endpoint(name, end)
            if endpoint is None:
                return Outcome(status="timed_out", error_type="Timeout", cold=True,
                               error="no pod of the warm Deployment became ready in time")
            return self._call(spec, endpoint, request, nonce, context, cold)
        finally:
            with self.lock:
                self.inflight[name] -= 1
                self.last_used[name] = time.monotonic()

    def _call(self, spec: FunctionSpec, endpoint: tuple[str, str], request: bytes, nonce: str,
              context: InvocationContext, cold: bool) -> Outcome:
        address, pod = endpoint
        port = settings.KUBEFUNCTION_KUBE_WARM_PORT
        remaining = max(0.1, context.deadline - time.time())
        host = f"[{address}]" if ":" in address else address
        try:
            response = self.http.request(
                "POST", f"http://{host}:{port}/invoke", body=request,
                headers={"Content-Type": "application/json"},
                timeout=urllib3.Timeout(connect=settings.KUBEFUNCTION_KUBE_TIMEOUT,
                                        read=remaining))
        except urllib3.exceptions.ReadTimeoutError:
            self._delete_pod(pod)  # still busy with the function: its Deployment replaces it
            return Outcome(status="timed_out", error_type="Timeout", cold=cold,
                           error=f"function did not finish within {spec.timeout_seconds:g} s")
        except urllib3.exceptions.HTTPError as exc:
            raise RuntimeUnavailable(f"the warm pod at {address} did not answer: {exc}") from exc
        if response.status != 200:
            raise RuntimeFailure(f"the warm pod at {address} refused the request: "
                                 f"{response.status} {response.data[:200]!r}")
        reader = FrameReader(nonce, settings.KUBEFUNCTION_MAX_LOG_BYTES)
        try:
            reader.feed(response.data)
            frame = reader.result()
        except FrameError as exc:
            raise RuntimeUnavailable(f"the warm pod's answer could not be read: {exc}") from exc
        return frame_outcome(frame, reader.stray.text(), reader.stray.truncated, cold=cold)

    def _delete_pod(self, pod: str) -> None:
        from .kubernetes import api_errors

        if not pod:
            return
        try:
            with api_errors("delete a timed-out warm pod"):
                self.runtime.core.delete_namespaced_pod(
                    pod, self.runtime.namespace, grace_period_seconds=0, _preload_content=False,
                    _request_timeout=self.runtime._timeout())
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            logger.warning("could not delete the warm pod %s: %s", pod, exc)

    # --- scaling down --------------------------------------------------------------------

    def scale_idle(self, keep: str = "") -> list[str]:
        """Scale the Deployments idle for KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS down to the
        minimum; returns their names."""
        idle = settings.KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS
        now = time.monotonic()
        with self.lock:
            names = [n for n, used in self.last_used.items() if n != keep
                     and not self.inflight.get(n) and now - used >= idle]
            for n in names:
                del self.last_used[n]
        for n in names:
            try:
                self._scale(n, settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS)
            except (RuntimeUnavailable, RuntimeFailure) as exc:
                logger.warning("could not scale down %s: %s", n, exc)
        return names

    def release(self, spec: FunctionSpec) -> None:
        """Delete the version's Deployment and Service (its pods go with them)."""
        from .kubernetes import api_errors

        name = warm_name(spec)
        ns = self.runtime.namespace
        for call in (self.runtime.apps.delete_namespaced_deployment,
                     self.runtime.core.delete_namespaced_service):
            try:
                with api_errors("delete a warm Deployment"):
                    call(name, ns, propagation_policy="Background", _preload_content=False,
                         _request_timeout=self.runtime._timeout())
            except RuntimeFailure as exc:
                if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404):
                    raise
        with self.lock:
            self.last_used.pop(name, None)

    def close(self) -> None:
        self.http.clear()


def _pick(slices: Any) -> tuple[str, str] | None:
    """A ready endpoint's address, chosen at random to spread the load over the replicas."""
    ready = [(endpoint["addresses"][0], (endpoint.get("targetRef") or {}).get("name", ""))
             for item in slices for endpoint in item.get("endpoints") or []
             if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("addresses")]
    return random.choice(ready) if ready else None
