"""Warm mode of the kubernetes runtime: a Deployment + Service per function version.

The Deployment's pods run the runner in HTTP mode (`runner --http :PORT`: GET /healthz is the
readiness probe, POST /invoke one request). The worker sends each invocation to a ready endpoint
of the version's Service, read from its EndpointSlices (list + watch, never polled), so a
scaled-up or restarted pod is used as soon as it is ready. Replicas follow the in-flight load of
this worker process, between KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS and ..._MAX_REPLICAS.

Scale-to-zero state lives in the cluster, not in a worker: every invocation stamps the
Deployment's `kubefunction.io/last-used` annotation (RFC 3339, UTC; a patch at most every
TOUCH_SECONDS per version and worker process, at the start and at the end of an invocation), with
`kubefunction.io/timeout-seconds`, the function's timeout. `scale_idle` (the beat task
`executions.scale_idle_warm`, in any worker process) lists the warm Deployments and scales down
to the minimum (zero by default) each one whose last use is older than
KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS, and older than its timeout plus TOUCH_SECONDS (an invocation
another worker started may still run until then), with the resourceVersion it read as a
precondition, so a use stamped meanwhile wins. The next invocation then scales up again and
waits for readiness (counted as cold).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import urllib3
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from kubernetes.client.rest import ApiException

from functions.specs import FunctionSpec

from ..base import InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable
from ..wire import FrameError, FrameReader, frame_outcome, late_outcome, runner_request
from .client import KubeClient, api_errors
from .manifests import (
    LAST_USED,
    MANAGED_BY,
    TIMEOUT,
    WARM_LABEL,
    parse_timestamp,
    usage_annotations,
    warm_manifests,
    warm_name,
)

logger = logging.getLogger(__name__)

TOUCH_SECONDS = 5.0  # a worker process stamps a version's last use at most this often
SCAN_SECONDS = 60.0  # and looks for idle Deployments on its own at most this often


def idle_at(deployment: dict, idle_seconds: float) -> float:
    """When the Deployment counts as idle (epoch seconds): `idle_seconds` after its last use
    (its creation when it carries no stamp), and not before its timeout plus TOUCH_SECONDS have
    passed, since an invocation that another worker started then may still be running."""
    meta = deployment["metadata"]
    annotations = meta.get("annotations") or {}
    used = parse_timestamp(annotations.get(LAST_USED))
    if used is None:
        used = parse_timestamp(meta.get("creationTimestamp")) or 0.0
    try:
        timeout = max(0.0, float(annotations.get(TIMEOUT) or 0))
    except ValueError:
        timeout = 0.0
    return used + max(float(idle_seconds), timeout + TOUCH_SECONDS)


class WarmDeployments:
    """The warm Deployments this worker process uses, with their in-flight counts."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.lock = threading.Lock()
        self.inflight: dict[str, int] = {}
        self.touched: dict[str, float] = {}  # name -> when this process last stamped its use
        self.scanned = time.monotonic()  # when this process last looked for idle Deployments
        self.http = urllib3.PoolManager(retries=False)

    # --- the Deployment ---------------------------------------------------------------

    def _deployment(self, spec: FunctionSpec, name: str, replicas: int) -> dict:
        """The version's Deployment, its use stamped (when due); created with its Service when
        missing (always the Service first: a Deployment never exists without it)."""
        apps, ns = self.kube.apps, self.kube.namespace
        with api_errors("read the warm Deployment"):
            try:
                stamped = self._stamp(spec, name)
                if stamped is not None:
                    return stamped
                return self.kube.read(apps.read_namespaced_deployment, name, ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return self._create(spec, name, replicas)

    def _create(self, spec: FunctionSpec, name: str, replicas: int) -> dict:
        deployment, service = warm_manifests(spec, name, replicas)
        ns = self.kube.namespace
        apps, core = self.kube.apps, self.kube.core
        with api_errors("create the warm Service"):
            try:
                core.create_namespaced_service(ns, service, _preload_content=False,
                                               _request_timeout=self.kube.timeout())
            except ApiException as exc:
                if exc.status != 409:
                    raise
        with api_errors("create the warm Deployment"):
            try:
                created = self.kube.read(apps.create_namespaced_deployment, ns, deployment)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                created = self.kube.read(apps.read_namespaced_deployment, name, ns)  # a peer's
        with self.lock:
            self.touched[name] = time.monotonic()  # created (or just made by a peer) = used
        return created

    def _stamp(self, spec: FunctionSpec, name: str) -> dict | None:
        """Patch the Deployment's last use to now, when this process last did so TOUCH_SECONDS
        ago or more; returns the patched Deployment, or None when it was not due. Raises
        ApiException."""
        started = time.monotonic()
        with self.lock:
            before = self.touched.get(name)
            if before is not None and started - before < TOUCH_SECONDS:
                return None
            self.touched[name] = started  # claimed: this process's other threads skip it
        try:
            return self.kube.read(self.kube.apps.patch_namespaced_deployment, name,
                              self.kube.namespace,
                              {"metadata": {"annotations": usage_annotations(spec, time.time())}})
        except BaseException:
            with self.lock:
                if self.touched.get(name) == started:
                    if before is None:
                        del self.touched[name]
                    else:
                        self.touched[name] = before
            raise

    def _scale(self, name: str, replicas: int) -> None:
        with api_errors("scale the warm Deployment"):
            self.kube.apps.patch_namespaced_deployment(
                name, self.kube.namespace, {"spec": {"replicas": replicas}},
                _preload_content=False, _request_timeout=self.kube.timeout())

    def _stamp_quietly(self, spec: FunctionSpec, name: str) -> None:
        """`_stamp` after an invocation: a failure is logged, the outcome stands."""
        try:
            with api_errors("stamp the warm Deployment's last use"):
                self._stamp(spec, name)
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            logger.warning("could not stamp the last use of %s: %s", name, exc)

    def _ready_endpoint(self, name: str, end: float) -> tuple[str, str] | None:
        """(address, pod name) of a ready endpoint of the Service, waiting (watch) until `end`
        (monotonic)."""
        discovery, ns = self.kube.discovery, self.kube.namespace
        selector = f"kubernetes.io/service-name={name}"
        while True:
            with api_errors("list the warm Service's endpoints"):
                listed = self.kube.read(discovery.list_namespaced_endpoint_slice, ns,
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
                for event in self.kube.watch(discovery.list_namespaced_endpoint_slice,
                                             "watch the warm Service's endpoints", seconds,
                                             label_selector=selector, resource_version=rv):
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
                if expired:
                    break  # list again

    # --- invoke --------------------------------------------------------------------------

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        budget = context.deadline - time.time()
        if budget <= 0:
            return late_outcome()
        request, nonce = runner_request(spec, payload, context)
        name = warm_name(spec)
        low = settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS
        high = max(1, settings.KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS)
        with self.lock:
            self.inflight[name] = self.inflight.get(name, 0) + 1
            wanted = min(high, max(low, self.inflight[name]))
            scan = time.monotonic() - self.scanned >= SCAN_SECONDS
            if scan:
                self.scanned = time.monotonic()
        deployment = None
        try:
            if scan:  # the beat task does this too; a busy worker need not wait for it
                self._scale_idle_quietly(keep=name)
            deployment = self._deployment(spec, name, wanted)
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
            if deployment is not None:  # the end of a long invocation is a use too
                self._stamp_quietly(spec, name)

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
        except SoftTimeLimitExceeded:
            # A cancel's kill (or the task's soft time limit): the pod is busy with a request
            # no one will read; recycle it like a timed-out one.
            self._delete_pod(pod)
            raise
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
        if not pod:
            return
        try:
            with api_errors("delete a timed-out or cancelled warm pod"):
                self.kube.core.delete_namespaced_pod(
                    pod, self.kube.namespace, grace_period_seconds=0, _preload_content=False,
                    _request_timeout=self.kube.timeout())
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            logger.warning("could not delete the warm pod %s: %s", pod, exc)

    # --- scaling down --------------------------------------------------------------------

    def scale_idle(self, keep: str = "") -> list[str]:
        """Scale every warm Deployment of the namespace that is idle (`idle_at`, from its
        annotations) and above KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS down to that minimum; returns
        their names. Any worker process scales any Deployment: the state is in the cluster.
        Raises RuntimeUnavailable / RuntimeFailure when the Deployments cannot be listed."""
        with self.lock:
            self.scanned = time.monotonic()
        managed = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
        with api_errors("list the warm Deployments"):
            listed = self.kube.read(self.kube.apps.list_namespaced_deployment,
                                self.kube.namespace, label_selector=f"{managed},{WARM_LABEL}")
        return [item["metadata"]["name"] for item in listed["items"]
                if item["metadata"]["name"] != keep and self._scale_down_if_idle(item)]

    def _scale_down_if_idle(self, deployment: dict) -> bool:
        """Scale `deployment` to the minimum if it is idle, with the resourceVersion read as a
        precondition: when a worker stamped a use meanwhile (409), look again, once."""
        low = settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS
        idle = settings.KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS
        apps, ns = self.kube.apps, self.kube.namespace
        name = deployment["metadata"]["name"]
        try:
            with api_errors("scale down the warm Deployment"):
                for attempt in range(2):
                    with self.lock:
                        busy = self.inflight.get(name, 0) > 0
                    if busy or int(deployment["spec"].get("replicas") or 0) <= low or \
                            time.time() < idle_at(deployment, idle):
                        return False
                    patch = {"metadata": {"resourceVersion":
                                          deployment["metadata"]["resourceVersion"]},
                             "spec": {"replicas": low}}
                    try:
                        apps.patch_namespaced_deployment(
                            name, ns, patch, _preload_content=False,
                            _request_timeout=self.kube.timeout())
                        logger.info("scaled the idle warm Deployment %s to %d", name, low)
                        return True
                    except ApiException as exc:
                        if exc.status == 404:
                            return False
                        if exc.status != 409 or attempt:
                            raise
                    try:
                        deployment = self.kube.read(apps.read_namespaced_deployment, name, ns)
                    except ApiException as exc:
                        if exc.status == 404:
                            return False
                        raise
        except (RuntimeUnavailable, RuntimeFailure) as exc:
            logger.warning("could not scale down %s: %s", name, exc)
        return False

    def _scale_idle_quietly(self, keep: str) -> None:
        try:
            self.scale_idle(keep=keep)
        except (RuntimeUnavailable, RuntimeFailure) as exc:
            logger.warning("could not look for idle warm Deployments: %s", exc)

    def release(self, spec: FunctionSpec) -> None:
        """Delete the version's Deployment and Service (its pods go with them)."""
        name = warm_name(spec)
        ns = self.kube.namespace
        for call in (self.kube.apps.delete_namespaced_deployment,
                     self.kube.core.delete_namespaced_service):
            try:
                with api_errors("delete a warm Deployment"):
                    call(name, ns, propagation_policy="Background", _preload_content=False,
                         _request_timeout=self.kube.timeout())
            except RuntimeFailure as exc:
                if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404):
                    raise
        with self.lock:
            self.touched.pop(name, None)

    def close(self) -> None:
        self.http.clear()


def _pick(slices: Any) -> tuple[str, str] | None:
    """A ready endpoint's address, chosen at random to spread the load over the replicas."""
    ready = [(endpoint["addresses"][0], (endpoint.get("targetRef") or {}).get("name", ""))
             for item in slices for endpoint in item.get("endpoints") or []
             if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("addresses")]
    return random.choice(ready) if ready else None
