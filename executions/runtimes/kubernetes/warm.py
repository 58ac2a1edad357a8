"""Warm mode of the kubernetes runtime: a Deployment + Service per function version.

The Deployment's pods run the runner in HTTP mode (`runner --http :PORT`: GET /healthz is the
readiness probe, POST /invoke one request). What the worker needs to know of them — each
Deployment's replicas and ready state, the ready endpoints of its Service's EndpointSlices —
comes from this process's watches (`informer.WarmCache`), so a warm invocation in steady state
is one HTTP call to a pod (`podcall`) and no API request. A scaled-up or restarted pod is used
as soon as its endpoint is ready; an endpoint that refuses the connection (the cache behind the
cluster: the pod is gone) is dropped and the invocation goes on with another, after one fresh
list of the Service's endpoints, or waits for one. Replicas follow the in-flight load of this
worker process, between KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS and ..._MAX_REPLICAS.

Scale-to-zero state lives in the cluster, not in a worker: each use is stamped on the
Deployment's `kubefunction.io/last-used` annotation (RFC 3339, UTC) with
`kubefunction.io/timeout-seconds`, the function's timeout — by this process's upkeep thread,
off the invocation path, at most one patch per Deployment every TOUCH_SECONDS carrying the
latest use it saw (at the start and at the end of each invocation), and the rest on `close`.
`scale_idle` (the beat task `executions.scale_idle_warm`, in any worker process) lists the warm
Deployments and scales down to the minimum (zero by default) each one whose last use is older
than KUBEFUNCTION_KUBE_WARM_IDLE_SECONDS, and older than its timeout plus TOUCH_SECONDS (an
invocation another worker started may still run until then), with the resourceVersion it read as
a precondition, so a use stamped meanwhile wins; the upkeep thread runs the same scan over the
cached Deployments at most once a minute while this process invokes. The next invocation then
scales up again and waits for readiness (counted as cold).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from kubernetes.client.rest import ApiException

from functions.specs import FunctionSpec

from ..base import InvocationContext, Outcome, RuntimeFailure, RuntimeUnavailable
from ..wire import (
    FrameError,
    FrameReader,
    frame_outcome,
    late_outcome,
    max_frame_bytes,
    runner_request,
    unreadable_outcome,
)
from . import podcall
from .client import KubeClient, api_errors
from .informer import SERVICE_LABEL, WarmCache, ready_endpoints
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
        self.cache = WarmCache(kube)
        self.lock = threading.Lock()
        self.inflight: dict[str, int] = {}
        self.touched: dict[str, float] = {}  # name -> when this process last stamped its use
        self.scanned = time.monotonic()  # when this process last looked for idle Deployments
        self.upkeep = Upkeep(self)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref()))

    # --- the Deployment ---------------------------------------------------------------

    def _deployment(self, spec: FunctionSpec, name: str, replicas: int) -> dict:
        """The version's Deployment as the API has it (the cache does not, or not yet);
        created with its Service when missing (always the Service first: a Deployment never
        exists without it)."""
        apps, ns = self.kube.apps, self.kube.namespace
        with api_errors("read the warm Deployment"):
            try:
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

    def _scale(self, name: str, replicas: int) -> None:
        with api_errors("scale the warm Deployment"):
            self.kube.apps.patch_namespaced_deployment(
                name, self.kube.namespace, {"spec": {"replicas": replicas}},
                _preload_content=False, _request_timeout=self.kube.timeout())

    def _list_endpoints(self, name: str) -> list[tuple[str, str]]:
        """The Service's ready endpoints as the API has them now (one list)."""
        with api_errors("list the warm Service's endpoints"):
            listed = self.kube.read(self.kube.discovery.list_namespaced_endpoint_slice,
                                    self.kube.namespace,
                                    label_selector=f"{SERVICE_LABEL}={name}")
        return ready_endpoints(listed["items"])

    def _ready_endpoint(self, name: str, end: float, refused: set[str], wanted: int,
                        answered: list[str]) -> tuple[tuple[str, str] | None, bool]:
        """A ready endpoint (address, pod name) of the Service that has not `refused` a
        connection, picked at random to spread the load over the replicas, and whether it had to
        be waited for (the invocation is cold then); waits for the cache to show one until `end`
        (monotonic): None then. While waiting, a Deployment the cache shows below `wanted`
        replicas (scaled down by a peer meanwhile) is scaled up again, once per version of it
        (`answered[0]`: the resourceVersion last answered so)."""
        waited = False
        while True:
            version, endpoints = self.cache.endpoints(name)
            endpoints = [e for e in endpoints if e[0] not in refused]
            if endpoints:
                return random.choice(endpoints), waited
            waited = True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None, waited
            deployment = self.cache.deployment(name)
            if deployment is not None and deployment["metadata"]["resourceVersion"] != \
                    answered[0] and int(deployment["spec"].get("replicas") or 0) < wanted:
                answered[0] = deployment["metadata"]["resourceVersion"]
                self._scale(name, wanted)
            self.cache.wait(version, remaining)

    # --- invoke --------------------------------------------------------------------------

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        budget = context.deadline - time.time()
        if budget <= 0:
            return late_outcome()
        request, nonce = runner_request(spec, payload, context)
        name = warm_name(spec)
        low = settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS
        high = max(1, settings.KUBEFUNCTION_KUBE_WARM_MAX_REPLICAS)
        self.cache.start()
        with self.lock:
            self.inflight[name] = self.inflight.get(name, 0) + 1
            wanted = min(high, max(low, self.inflight[name]))
            scan = time.monotonic() - self.scanned >= SCAN_SECONDS
            if scan:
                self.scanned = time.monotonic()
        try:
            self.upkeep.used(spec, name, scan=scan)
            deployment = self.cache.deployment(name) or self._deployment(spec, name, wanted)
            answered = [""]  # the Deployment's resourceVersion last scaled up from
            if int(deployment["spec"].get("replicas") or 0) < wanted:
                answered[0] = deployment["metadata"]["resourceVersion"]
                self._scale(name, wanted)
            end = time.monotonic() + budget + settings.KUBEFUNCTION_KUBE_START_GRACE
            return self._serve(spec, name, request, nonce, context, end, wanted, answered)
        finally:
            with self.lock:
                self.inflight[name] -= 1
            self.upkeep.used(spec, name)  # the end of a long invocation is a use too

    def _serve(self, spec: FunctionSpec, name: str, request: bytes, nonce: str,
               context: InvocationContext, end: float, wanted: int,
               answered: list[str]) -> Outcome:
        """Call a ready endpoint; one that refuses the connection is dropped from the cache,
        the Service's endpoints are listed afresh once, and another is tried."""
        refused: set[str] = set()
        fresh: list[tuple[str, str]] | None = None
        cold = False
        while True:
            if fresh:
                endpoint: tuple[str, str] | None = random.choice(fresh)
            else:
                endpoint, waited = self._ready_endpoint(name, end, refused, wanted, answered)
                cold = cold or waited
            if endpoint is None:
                return Outcome(status="timed_out", error_type="Timeout", cold=True,
                               error="no pod of the warm Deployment became ready in time")
            try:
                return self._call(spec, endpoint, request, nonce, context, cold)
            except podcall.Unreachable as exc:
                address = endpoint[0]
                logger.info("the warm pod %s at %s refused the request (%s): trying another",
                            endpoint[1], address, exc)
                refused.add(address)
                self.cache.drop(name, address)
                if fresh is None:  # the cache may be behind the cluster: ask it, once
                    fresh = [e for e in self._list_endpoints(name) if e[0] not in refused]
                else:
                    fresh = [e for e in fresh if e[0] not in refused]

    def _call(self, spec: FunctionSpec, endpoint: tuple[str, str], request: bytes, nonce: str,
              context: InvocationContext, cold: bool) -> Outcome:
        """POST the request to the pod: the whole answer by the deadline, at most twice the
        largest frame (see `podcall`). Raises podcall.Unreachable when the pod never got it."""
        address, pod = endpoint
        limit = 2 * max_frame_bytes()
        deadline = time.monotonic() + max(0.1, context.deadline - time.time())
        try:
            status, body = podcall.post_invoke(
                address, settings.KUBEFUNCTION_KUBE_WARM_PORT, request, deadline=deadline,
                connect_timeout=settings.KUBEFUNCTION_KUBE_TIMEOUT, limit=limit)
        except SoftTimeLimitExceeded:
            # A cancel's kill (or the task's soft time limit): the pod is busy with a request
            # no one will read; recycle it like a timed-out one.
            self._delete_pod(pod)
            raise
        except podcall.Late:
            self._delete_pod(pod)  # still busy with the function: its Deployment replaces it
            return Outcome(status="timed_out", error_type="Timeout", cold=cold,
                           error=f"function did not finish within {spec.timeout_seconds:g} s")
        except podcall.TooLong as exc:
            self._delete_pod(pod)  # not a runner's answer: this pod is not to be trusted
            return unreadable_outcome(str(exc), cold=cold)
        except podcall.BadAnswer as exc:
            raise RuntimeUnavailable(f"the warm pod at {address} did not answer: {exc}") from exc
        if status != 200:
            raise RuntimeFailure(f"the warm pod at {address} refused the request: "
                                 f"{status} {body[:200]!r}")
        reader = FrameReader(nonce, settings.KUBEFUNCTION_MAX_LOG_BYTES, max_frame_bytes())
        try:
            reader.feed(body)
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

    def scale_idle(self) -> list[str]:
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
                if self._scale_down_if_idle(item)]

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

    def scale_idle_cached(self) -> list[str]:
        """`scale_idle` over the Deployments as this process's watches see them (no list):
        what a busy worker does at most once a minute, on its upkeep thread."""
        with self.lock:
            self.scanned = time.monotonic()
        return [item["metadata"]["name"] for item in self.cache.all_deployments()
                if self._scale_down_if_idle(item)]

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
        self.upkeep.forget(name)
        with self.lock:
            self.touched.pop(name, None)

    def close(self) -> None:
        """Stamp the uses not stamped yet, then end the watches and the upkeep thread."""
        self.upkeep.close()
        self.cache.close()


def _after_fork(warm: WarmDeployments | None) -> None:
    """In a forked child (Celery's prefork pool): none of the parent's invocations, stamps or
    threads are this process's, and a lock another thread held at the fork would never be
    released."""
    if warm is not None:
        warm.lock = threading.Lock()
        warm.inflight = {}
        warm.touched = {}
        warm.upkeep = Upkeep(warm)


class Upkeep:
    """This process's warm-mode work off the invocation path, on one daemon thread started with
    the first use: the last-use stamps (at most one patch per Deployment every TOUCH_SECONDS,
    carrying the latest use noted; what is left is stamped on `close`) and, when an invocation
    asks for it, the idle scan over the cached Deployments."""

    def __init__(self, warm: WarmDeployments) -> None:
        self.warm = warm
        self.wake = threading.Condition()
        self.pending: dict[str, tuple[float, FunctionSpec]] = {}  # name -> (last use, spec)
        self.scan = False
        self.wake_at = float("inf")  # when the thread means to look again (monotonic)
        self.stopping = False
        self.thread: threading.Thread | None = None

    def used(self, spec: FunctionSpec, name: str, *, scan: bool = False) -> None:
        """Note a use of `name` now (stamped when due), and ask for an idle scan."""
        moment = time.time()
        with self.wake:
            self.pending[name] = (moment, spec)
            self.scan = self.scan or scan
            due = self.warm.touched.get(name, -TOUCH_SECONDS) + TOUCH_SECONDS
            if scan or due < self.wake_at:
                self.wake.notify()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="kubefunction-warm-upkeep")
                self.thread.start()

    def forget(self, name: str) -> None:
        with self.wake:
            self.pending.pop(name, None)

    def close(self) -> None:
        """End the thread, then stamp what is pending, due or not."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
            thread = self.thread
        if thread is not None:
            thread.join(timeout=settings.KUBEFUNCTION_KUBE_TIMEOUT)
        self._stamp(force=True)
        with self.wake:
            self.thread, self.stopping = None, False

    def _run(self) -> None:
        while True:
            with self.wake:
                if self.stopping:
                    return
                scan, self.scan = self.scan, False
            if scan:
                try:
                    self.warm.scale_idle_cached()
                except Exception:  # noqa: BLE001 - the thread must live on; logged
                    logger.exception("the idle scan of the warm Deployments failed")
            self._stamp()
            with self.wake:  # `used` changes `pending` under this lock: no wake-up is lost
                if self.stopping or self.scan:
                    continue
                touched = self.warm.touched
                self.wake_at = min((touched.get(name, -TOUCH_SECONDS) + TOUCH_SECONDS
                                    for name in self.pending), default=float("inf"))
                left = self.wake_at - time.monotonic()
                if left > 0:
                    self.wake.wait(None if self.wake_at == float("inf") else left)
                self.wake_at = float("inf")

    def _stamp(self, force: bool = False) -> None:
        """Patch the last use of each pending Deployment last stamped TOUCH_SECONDS ago or more
        (all of them when `force`): one patch each, with the latest use noted. One that fails
        is kept for the next round; one that is gone (404) is forgotten."""
        now = time.monotonic()
        touched = self.warm.touched
        with self.wake:
            due = {name: use for name, use in self.pending.items()
                   if force or now - touched.get(name, -TOUCH_SECONDS) >= TOUCH_SECONDS}
        for name, (moment, spec) in due.items():
            touched[name] = time.monotonic()  # tried: the next one in TOUCH_SECONDS
            try:
                with api_errors("stamp the warm Deployment's last use"):
                    self.warm.kube.apps.patch_namespaced_deployment(
                        name, self.warm.kube.namespace,
                        {"metadata": {"annotations": usage_annotations(spec, moment)}},
                        _preload_content=False, _request_timeout=self.warm.kube.timeout())
            except (RuntimeFailure, RuntimeUnavailable) as exc:
                cause = exc.__cause__
                if not (isinstance(cause, ApiException) and cause.status == 404):
                    logger.warning("could not stamp the last use of %s: %s", name, exc)
                    continue
            with self.wake:
                if self.pending.get(name, (None,))[0] == moment:  # no use since
                    del self.pending[name]
