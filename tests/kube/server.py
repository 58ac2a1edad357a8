"""A fake Kubernetes API server for tests: real HTTP on 127.0.0.1, the official client talks to it.

It stores objects the way the API server does (uid, resourceVersion, creationTimestamp,
generation), answers errors with Status bodies, serves list + watch with a bounded resourceVersion
history (410 Gone when a client is too far behind), parses the whole label-selector grammar,
honours deletion propagation, and runs a minimal Job controller and a swappable kubelet (see
`tests.kube.kubelets`). Only what KubeFunction's runtime uses is implemented.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import copy
import heapq
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .selectors import SelectorError, matches, parse_fields, parse_labels

TOKEN = "fake-kube-token"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
SECRET_MAX_BYTES = 1024 * 1024  # the API server's limit on a Secret's data
DEFAULT_GRACE_SECONDS = 30  # a pod's terminationGracePeriodSeconds when its spec sets none
# How the Job controller reports activeDeadlineSeconds passing, relative to the pod's end:
#   failure-target      FailureTarget at once, the pods terminated (gracefully), then Failed
#                       once they are gone (Kubernetes 1.31 and later)
#   failed-first        Failed at once, then the pods terminated (older controllers)
#   pod-first           the pods terminated first; FailureTarget and Failed only once they
#                       are gone (a controller whose status write lags behind the kubelet)
#   without-pod-status  the pods removed at once, no terminated status ever reported, then
#                       Failed (a pod force-deleted, its node gone)
DEADLINE_ORDERS = ("failure-target", "failed-first", "pod-first", "without-pod-status")


@dataclass(frozen=True)
class Kind:
    prefix: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return self.prefix[len("/apis/"):] if self.prefix.startswith("/apis/") else "v1"


KINDS = {k.plural: k for k in (
    Kind("/api/v1", "namespaces", "Namespace", namespaced=False),
    Kind("/api/v1", "pods", "Pod"),
    Kind("/api/v1", "services", "Service"),
    Kind("/api/v1", "secrets", "Secret"),
    Kind("/apis/batch/v1", "jobs", "Job"),
    Kind("/apis/apps/v1", "deployments", "Deployment"),
    Kind("/apis/discovery.k8s.io/v1", "endpointslices", "EndpointSlice"),
)}
_PATH = re.compile(r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
                   r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """Becomes a Status body with this code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(kind: Kind, name: str) -> ApiError:
    group = kind.api_version.split("/")[0] if "/" in kind.api_version else ""
    resource = f"{kind.plural}.{group}" if group else kind.plural
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    {"name": name, "group": group, "kind": kind.plural})


@dataclass
class Event:
    rv: int
    plural: str
    type: str
    obj: dict
    old: dict | None


@dataclass
class Fault:
    verb: str
    resource: str
    code: int
    times: int


class Cluster:
    """The store, the event history, the controllers and the kubelet."""

    def __init__(self, *, kubelet: Any, history: int = 500,
                 namespace: str = "kubefunction-functions"):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[str, dict[tuple[str, str], dict]] = {p: {} for p in KINDS}
        self.rv = 1000
        self.history: collections.deque[Event] = collections.deque(maxlen=history)
        self.compacted = 0  # events at or below this resourceVersion are gone from the history
        self.logs: dict[tuple[str, str], bytearray] = {}
        self.api_calls: list[tuple[str, str]] = []  # (verb, resource) of each API call served
        # Every request received, whatever came of it (401, 404, a watch): (verb, path, query).
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # How often a watch that allows them gets a BOOKMARK (the API server: about a minute)
        self.bookmark_seconds = 1.0
        self.faults: list[Fault] = []
        # (plural, name, gracePeriodSeconds, propagationPolicy) of every DELETE served
        self.deletions: list[tuple[str, str, int | None, str | None]] = []
        self.deadline_order = "failure-target"
        self._deadline_passed: set[str] = set()  # Job uids whose deadline the controller saw
        self.stopping = False
        self.kubelet = kubelet
        self._tasks: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._work: collections.deque[Event] = collections.deque()
        self._controller = threading.Thread(target=self._run_controllers, daemon=True,
                                            name="fake-kube-controllers")
        self.create("namespaces", None, {"metadata": {"name": namespace}})
        self.create("namespaces", None, {"metadata": {"name": "default"}})

    def start(self) -> None:
        self.kubelet.attach(self)
        self._controller.start()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.changed.notify_all()
        self._controller.join(timeout=10)
        self.kubelet.close()

    # --- the store -------------------------------------------------------------------------

    def _record(self, plural: str, type_: str, obj: dict, old: dict | None = None) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0].rv
        event = Event(int(obj["metadata"]["resourceVersion"]), plural, type_,
                      copy.deepcopy(obj), copy.deepcopy(old))
        self.history.append(event)
        self._work.append(event)
        self.changed.notify_all()

    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def compact(self) -> None:
        """Forget the whole history (as etcd compaction does): older watches get 410."""
        with self.lock:
            self.compacted = self.rv
            self.history.clear()

    def _validate(self, kind: Kind, obj: dict) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes = []
        pattern, limit = ((_LABEL_NAME, 63) if kind.plural in ("jobs", "services", "namespaces")
                          else (_NAME, 253))
        if not pattern.match(name) or len(name) > limit:
            causes.append(("metadata.name", f"Invalid value: {name!r}: a lowercase RFC 1123 "
                                             f"name of at most {limit} characters is required"))
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not re.match(
                    r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", value):
                causes.append((f"metadata.labels[{key}]", f"Invalid value: {value!r}"))
        template = None
        if kind.plural == "pods":
            template = obj
        elif kind.plural in ("jobs", "deployments"):
            template = (obj.get("spec") or {}).get("template") or {}
        if template is not None:
            pod_spec = template.get("spec") or {}
            containers = pod_spec.get("containers") or []
            if not containers:
                causes.append(("spec.template.spec.containers", "Required value"))
            for i, container in enumerate(containers):
                if not container.get("name"):
                    causes.append((f"spec.containers[{i}].name", "Required value"))
                if not container.get("image"):
                    causes.append((f"spec.containers[{i}].image", "Required value"))
            if kind.plural == "jobs" and pod_spec.get("restartPolicy") not in ("Never",
                                                                              "OnFailure"):
                causes.append(("spec.template.spec.restartPolicy",
                               'Unsupported value: must be "OnFailure" or "Never"'))
        if kind.plural == "secrets":
            size = 0
            for key, value in (obj.get("data") or {}).items():
                if not _SECRET_KEY.match(str(key)):
                    causes.append((f"data[{key}]", "Invalid value: a valid config key must "
                                                   "consist of alphanumeric characters, '-', "
                                                   "'_' or '.'"))
                try:
                    size += len(base64.b64decode(str(value), validate=True))
                except (binascii.Error, ValueError):
                    causes.append((f"data[{key}]", "Invalid value: illegal base64 data"))
            if size > SECRET_MAX_BYTES:
                causes.append(("data", f"Too long: must have at most {SECRET_MAX_BYTES} bytes"))
        if causes:
            message = "; ".join(f"{field}: {text}" for field, text in causes)
            raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: {message}',
                           {"name": name, "kind": kind.kind, "causes": [
                               {"reason": "FieldValueInvalid", "message": text, "field": field}
                               for field, text in causes]})

    def _defaults(self, kind: Kind, obj: dict) -> None:
        obj.setdefault("spec", {})
        if kind.plural in ("jobs", "deployments"):
            template = obj["spec"].setdefault("template", {})
            self._pod_defaults(template.setdefault("spec", {}))
            template.setdefault("metadata", {})
        if kind.plural == "pods":
            self._pod_defaults(obj["spec"])
            obj["spec"].setdefault("nodeName", "fake-node")  # scheduled at once
            obj.setdefault("status", {"phase": "Pending", "qosClass": "Burstable"})
        if kind.plural == "jobs":
            spec = obj["spec"]
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            uid = obj["metadata"]["uid"]
            labels = {"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                      "batch.kubernetes.io/job-name": obj["metadata"]["name"],
                      "job-name": obj["metadata"]["name"]}
            spec.setdefault("selector",
                            {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
            tmeta = spec["template"]["metadata"]
            tmeta["labels"] = {**(tmeta.get("labels") or {}), **labels}
            obj.setdefault("status", {})
        if kind.plural == "deployments":
            obj["spec"].setdefault("replicas", 1)
            obj.setdefault("status", {})
        if kind.plural == "services":
            obj["spec"].setdefault("type", "ClusterIP")
            obj["spec"].setdefault("clusterIP", f"10.96.{secrets.randbelow(250)}."
                                                f"{secrets.randbelow(250) + 1}")
            obj.setdefault("status", {"loadBalancer": {}})
        if kind.plural == "namespaces":
            obj.setdefault("status", {"phase": "Active"})
        if kind.plural == "secrets":
            obj.pop("spec", None)
            obj.setdefault("type", "Opaque")

    @staticmethod
    def _pod_defaults(spec: dict) -> None:
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("securityContext", {})
        for container in spec.get("containers") or []:
            image = container.get("image", "")
            container.setdefault("imagePullPolicy",
                                 "Always" if image.endswith(":latest") or ":" not in
                                 image.rsplit("/", 1)[-1] and "@" not in image else
                                 "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})

    def create(self, plural: str, ns: str | None, body: dict) -> dict:
        kind = KINDS[plural]
        with self.lock:
            obj = copy.deepcopy(body)
            obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            if not meta.get("name"):
                raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: "
                                               "Required value: name or generateName is required",
                               {"kind": kind.kind})
            if kind.namespaced:
                if ns is None:
                    raise ApiError(400, "BadRequest", "the namespace of the object is required")
                if meta.get("namespace", ns) != ns:
                    raise ApiError(400, "BadRequest", "the namespace of the provided object "
                                                      "does not match the namespace sent on "
                                                      "the request")
                if ("", ns) not in self.objects["namespaces"]:
                    raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                                   {"name": ns, "kind": "namespaces"})
                meta["namespace"] = ns
            key = (ns or "", meta["name"])
            if plural == "secrets" and obj.get("stringData"):  # write-only, merged into data
                obj["data"] = {**(obj.get("data") or {}), **{
                    k: base64.b64encode(str(v).encode()).decode()
                    for k, v in obj.pop("stringData").items()}}
            self._validate(kind, obj)
            if key in self.objects[plural]:
                group = kind.api_version.split("/")[0] if "/" in kind.api_version else ""
                resource = f"{plural}.{group}" if group else plural
                raise ApiError(409, "AlreadyExists",
                               f'{resource} "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": group, "kind": plural})
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta["generation"] = 1
            meta.pop("resourceVersion", None)
            meta.pop("deletionTimestamp", None)
            self._defaults(kind, obj)
            self._bump(obj)
            self.objects[plural][key] = obj
            self._record(plural, "ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, plural: str, ns: str | None, name: str) -> dict:
        with self.lock:
            obj = self.objects[plural].get((ns or "", name))
            if obj is None:
                raise not_found(KINDS[plural], name)
            return copy.deepcopy(obj)

    def find(self, plural: str, ns: str | None, name: str) -> dict | None:
        try:
            return self.get(plural, ns, name)
        except ApiError:
            return None

    def update(self, plural: str, ns: str | None, name: str, body: dict, *,
               status: bool = False, check_rv: bool = True) -> dict:
        """Replace the object (or only its status), with optimistic concurrency on the rv."""
        kind = KINDS[plural]
        with self.lock:
            old = self.objects[plural].get((ns or "", name))
            if old is None:
                raise not_found(kind, name)
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            if check_rv and sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} '
                                                f'"{name}": the object has been modified; '
                                                'please apply your changes to the latest version '
                                                'and try again', {"name": name, "kind": plural})
            obj = copy.deepcopy(old)
            if status:
                obj["status"] = copy.deepcopy(body.get("status") or {})
            else:
                new = copy.deepcopy(body)
                new["metadata"] = {**old["metadata"], **{
                    k: v for k, v in (body.get("metadata") or {}).items()
                    if k in ("labels", "annotations", "ownerReferences", "finalizers")}}
                new["status"] = old.get("status", {})
                new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
                self._validate(kind, new)
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
                obj = new
            if obj == old:
                return copy.deepcopy(old)
            self._bump(obj)
            self.objects[plural][(ns or "", name)] = obj
            self._record(plural, "MODIFIED", obj, old)
            return copy.deepcopy(obj)

    def mutate(self, plural: str, ns: str | None, name: str,
               change: Callable[[dict], None], *, status: bool = True) -> dict | None:
        """Apply `change` to a copy of the object and store it (controllers and kubelets)."""
        with self.lock:
            current = self.objects[plural].get((ns or "", name))
            if current is None:
                return None
            obj = copy.deepcopy(current)
            change(obj)
            return self.update(plural, ns, name, obj, status=status, check_rv=False)

    def patch(self, plural: str, ns: str | None, name: str, patch: dict, *,
              status: bool = False) -> dict:
        """A merge patch; a metadata.resourceVersion in it is a precondition (409 Conflict when
        the object has changed since), as on the API server."""
        with self.lock:
            obj = self.get(plural, ns, name)
            merged = _merge(obj, patch)
            if not (patch.get("metadata") or {}).get("resourceVersion"):
                merged["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return self.update(plural, ns, name, merged, status=status)

    def delete(self, plural: str, ns: str | None, name: str,
               propagation: str | None = None, grace: int | None = None) -> dict:
        """Delete an object; a pod is deleted gracefully (see `terminate_pod`)."""
        kind = KINDS[plural]
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f"unsupported propagationPolicy {propagation!r}")
        if grace is not None and grace < 0:
            raise ApiError(422, "Invalid", "gracePeriodSeconds: Invalid value: must be >= 0")
        if plural == "pods":
            with self.lock:
                pod = self.terminate_pod(ns, name, grace)
            if pod is None:
                raise not_found(kind, name)
            return pod
        # batch/v1 Jobs orphan their pods unless told otherwise (kept for compatibility).
        policy = propagation or ("Orphan" if plural == "jobs" else "Background")
        with self.lock:
            obj = self.objects[plural].get((ns or "", name))
            if obj is None:
                raise not_found(kind, name)
            uid = obj["metadata"]["uid"]
            if policy == "Foreground":
                if obj["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(obj)
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                obj["metadata"]["finalizers"] = ["foregroundDeletion"]
                self._bump(obj)
                self.objects[plural][(ns or "", name)] = obj
                self._record(plural, "MODIFIED", obj)
                self.schedule(0, lambda: self._foreground(plural, ns, name, uid))
                return copy.deepcopy(obj)
            self._remove(plural, ns, name)
            if policy == "Background":
                self.schedule(0, lambda: self._delete_dependents(uid))
            else:
                self._orphan(uid)
            return copy.deepcopy(obj)

    def _remove(self, plural: str, ns: str | None, name: str) -> None:
        obj = self.objects[plural].pop((ns or "", name))
        obj = copy.deepcopy(obj)
        self._bump(obj)
        self._record(plural, "DELETED", obj)
        if plural == "pods":
            self.kubelet.forget(obj)

    def _dependents(self, uid: str) -> Iterator[tuple[str, dict]]:
        for plural, objects in self.objects.items():
            for obj in list(objects.values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs):
                    yield plural, obj

    def terminate_pod(self, ns: str | None, name: str, grace: int | None = None) -> dict | None:
        """Graceful pod deletion, as the API server and kubelet do it: the pod gets a
        deletionTimestamp and stays while its kubelet sends SIGTERM and, after `grace` seconds
        (the pod's terminationGracePeriodSeconds unless given; 30 when unset), SIGKILL; it is
        removed once its container is gone. A pod already ended, or `grace` 0, goes at once.
        A shorter grace than the one in force shortens it. Returns the pod, None if absent."""
        with self.lock:
            pod = self.objects["pods"].get((ns or "", name))
            if pod is None:
                return None
            meta = pod["metadata"]
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
            grace = max(0, int(grace))
            if grace == 0 or pod["status"].get("phase") in ("Succeeded", "Failed"):
                self._remove("pods", ns, name)
                return copy.deepcopy(pod)
            current = meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionTimestamp") and current is not None and grace >= current:
                return copy.deepcopy(pod)
            before, pod = pod, copy.deepcopy(pod)
            pod["metadata"]["deletionTimestamp"] = datetime.fromtimestamp(
                time.time() + grace, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            pod["metadata"]["deletionGracePeriodSeconds"] = grace
            self._bump(pod)
            self.objects["pods"][(ns or "", name)] = pod
            self._record("pods", "MODIFIED", pod, before)
            uid = pod["metadata"]["uid"]

            def gone() -> None:  # the kubelet saw the container end
                with self.lock:
                    left = self.objects["pods"].get((ns or "", name))
                    if left is not None and left["metadata"]["uid"] == uid:
                        self._remove("pods", ns, name)
            self.kubelet.terminate(copy.deepcopy(pod), grace, gone)
            return copy.deepcopy(pod)

    def _delete_dependents(self, uid: str) -> None:
        with self.lock:
            for plural, obj in list(self._dependents(uid)):
                meta = obj["metadata"]
                if (meta.get("namespace", ""), meta["name"]) in self.objects[plural]:
                    if plural == "pods":  # the garbage collector deletes pods gracefully
                        self.terminate_pod(meta.get("namespace"), meta["name"])
                    else:
                        self._remove(plural, meta.get("namespace"), meta["name"])
                    self._delete_dependents(meta["uid"])

    def _foreground(self, plural: str, ns: str | None, name: str, uid: str) -> None:
        """The owner goes once its dependents are gone (terminating pods included)."""
        with self.lock:
            self._delete_dependents(uid)
            if any(True for _ in self._dependents(uid)):
                self.schedule(0.05, lambda: self._foreground(plural, ns, name, uid))
                return
            current = self.objects[plural].get((ns or "", name))
            if current is not None and current["metadata"]["uid"] == uid:
                self._remove(plural, ns, name)

    def _orphan(self, uid: str) -> None:
        for plural, obj in list(self._dependents(uid)):
            def strip(o: dict) -> None:
                o["metadata"]["ownerReferences"] = [
                    r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            meta = obj["metadata"]
            self.mutate(plural, meta.get("namespace"), meta["name"], strip, status=False)

    def list(self, plural: str, ns: str | None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict], str]:
        labels, fields = parse_labels(label_selector), parse_fields(field_selector)
        with self.lock:
            items = [copy.deepcopy(obj) for (obj_ns, _), obj in sorted(self.objects[plural].items())
                     if (ns is None or obj_ns == ns) and matches(obj, labels, fields)]
            return items, str(self.rv)

    # --- logs ------------------------------------------------------------------------------

    def append_log(self, pod: dict, data: bytes) -> None:
        with self.lock:
            meta = pod["metadata"]
            self.logs.setdefault((meta["namespace"], meta["name"]), bytearray()).extend(data)
            self.changed.notify_all()

    # --- controllers -----------------------------------------------------------------------

    def schedule(self, delay: float, task: Callable[[], None]) -> None:
        with self.lock:
            heapq.heappush(self._tasks, (time.monotonic() + delay, next(self._counter), task))
            self.changed.notify_all()

    def _run_controllers(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and not self._work and not (
                        self._tasks and self._tasks[0][0] <= time.monotonic()):
                    wait = self._tasks[0][0] - time.monotonic() if self._tasks else 1.0
                    self.changed.wait(max(0.001, min(wait, 1.0)))
                if self.stopping:
                    return
                events = list(self._work)
                self._work.clear()
                due = []
                while self._tasks and self._tasks[0][0] <= time.monotonic():
                    due.append(heapq.heappop(self._tasks)[2])
            for event in events:
                self._react(event)
            for task in due:
                task()

    def _react(self, event: Event) -> None:
        obj = event.obj
        ns = obj["metadata"].get("namespace")
        if event.plural == "jobs" and event.type == "ADDED":
            self._job_added(obj)
        elif event.plural == "deployments" and event.type != "DELETED":
            self._reconcile_deployment(ns, obj["metadata"]["name"])
        elif event.plural == "services" and event.type != "DELETED":
            self._reconcile_endpoints(ns, obj["metadata"]["name"])
        elif event.plural == "pods":
            if event.type == "ADDED":
                self.kubelet.run(obj)
            elif event.type == "MODIFIED" and obj["status"].get("phase") in ("Succeeded",
                                                                             "Failed"):
                owner = _controller_of(obj, "Job")
                if owner:
                    self._job_pod_finished(ns, owner, obj)
            deployment = _controller_of(obj, "Deployment")
            if deployment:
                self._reconcile_deployment(ns, deployment)
            with self.lock:
                services = [name for (svc_ns, name), svc in self.objects["services"].items()
                            if svc_ns == ns and (svc["spec"].get("selector") or {})]
            for name in services:
                self._reconcile_endpoints(ns, name)

    # Deployment controller (no ReplicaSets): keeps spec.replicas live pods, reports readiness.

    def _reconcile_deployment(self, ns: str, name: str) -> None:
        with self.lock:
            deployment = self.objects["deployments"].get((ns, name))
            if deployment is None or deployment["metadata"].get("deletionTimestamp"):
                return
            uid = deployment["metadata"]["uid"]
            pods = sorted((p for _, p in self._dependents(uid) if p["kind"] == "Pod"
                           and p["status"].get("phase") not in ("Succeeded", "Failed")
                           and not p["metadata"].get("deletionTimestamp")),
                          key=lambda p: p["metadata"]["creationTimestamp"])
            for pod in [p for _, p in self._dependents(uid) if p["kind"] == "Pod"
                        and p["status"].get("phase") in ("Succeeded", "Failed")]:
                self._remove("pods", ns, pod["metadata"]["name"])  # replaced below
            want = int(deployment["spec"].get("replicas", 1))
            template = deployment["spec"].get("template") or {}
            for _ in range(want - len(pods)):
                pod = {"metadata": {**copy.deepcopy(template.get("metadata") or {}),
                                    "generateName": f"{name}-",
                                    "ownerReferences": [{
                                        "apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": name, "uid": uid, "controller": True,
                                        "blockOwnerDeletion": True}]},
                       "spec": copy.deepcopy(template.get("spec") or {})}
                pods.append(self.create("pods", ns, pod))
            for pod in pods[want:][::-1] if len(pods) > want else []:
                self.terminate_pod(ns, pod["metadata"]["name"])
            pods = pods[:want]
            ready = sum(1 for p in pods if "Ready" in _ready_conditions(p))
            generation = deployment["metadata"].get("generation", 1)

            def report(o: dict) -> None:
                o["status"] = {"observedGeneration": generation, "replicas": len(pods),
                               "updatedReplicas": len(pods), "readyReplicas": ready,
                               "availableReplicas": ready,
                               "unavailableReplicas": max(0, len(pods) - ready),
                               "conditions": [{"type": "Available",
                                               "status": "True" if ready >= want else "False",
                                               "reason": "MinimumReplicasAvailable"
                                               if ready >= want else
                                               "MinimumReplicasUnavailable",
                                               "message": f"{ready} of {want} ready"}]}
                for key in ("readyReplicas", "availableReplicas", "unavailableReplicas",
                            "replicas", "updatedReplicas"):
                    if not o["status"][key]:
                        del o["status"][key]
            self.mutate("deployments", ns, name, report)

    # EndpointSlice controller: one slice per Service with a selector, ready pods' IPs.

    def _reconcile_endpoints(self, ns: str, name: str) -> None:
        with self.lock:
            service = self.objects["services"].get((ns, name))
            selector = (service or {}).get("spec", {}).get("selector") or {}
            if service is None or not selector:
                return
            pods = [p for (pod_ns, _), p in sorted(self.objects["pods"].items())
                    if pod_ns == ns and all((p["metadata"].get("labels") or {}).get(k) == v
                                            for k, v in selector.items())
                    and p["status"].get("podIP")]
            slice_name = f"{name}-slice"
            body = {
                "metadata": {"name": slice_name, "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by":
                        "endpointslice-controller.k8s.io"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                         "uid": service["metadata"]["uid"], "controller": True,
                                         "blockOwnerDeletion": True}]},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {
                    "ready": "Ready" in _ready_conditions(p)
                    and not p["metadata"].get("deletionTimestamp"),
                    "serving": "Ready" in _ready_conditions(p),
                    "terminating": bool(p["metadata"].get("deletionTimestamp"))},
                    "targetRef": {"kind": "Pod", "name": p["metadata"]["name"],
                                  "namespace": ns, "uid": p["metadata"]["uid"]}}
                    for p in pods],
                "ports": [{"name": port.get("name", ""), "protocol": port.get("protocol", "TCP"),
                           "port": port.get("targetPort", port.get("port"))}
                          for port in service["spec"].get("ports") or []],
            }
            existing = self.objects["endpointslices"].get((ns, slice_name))
            if existing is None:
                self.create("endpointslices", ns, body)
            elif any(existing.get(k) != body[k] for k in ("endpoints", "ports")):
                self.update("endpointslices", ns, slice_name, {**existing, **{
                    k: body[k] for k in ("endpoints", "ports")}}, check_rv=False)

    # Job controller: one pod at a time, retries up to backoffLimit, deadline and TTL.

    def _job_added(self, job: dict) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]

        def start(o: dict) -> None:
            o["status"]["startTime"] = now()
        job = self.mutate("jobs", ns, name, start)
        if job is None:
            return
        self._job_pod(job)
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline:
            self.schedule(float(deadline), lambda: self._job_deadline(ns, name, meta["uid"]))

    def _job_pod(self, job: dict) -> None:
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        pod = {"metadata": {**template.get("metadata", {}),
                            "generateName": f"{meta['name']}-",
                            "ownerReferences": [{
                                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                "uid": meta["uid"], "controller": True,
                                "blockOwnerDeletion": True}]},
               "spec": template["spec"]}
        try:
            self.create("pods", meta["namespace"], pod)
        except ApiError:
            return

        def active(o: dict) -> None:
            o["status"]["active"] = o["status"].get("active", 0) + 1
        self.mutate("jobs", meta["namespace"], meta["name"], active)

    def _finish_job(self, ns: str, name: str, type_: str, reason: str, message: str,
                    change: Callable[[dict], None] | None = None) -> None:
        def finish(o: dict) -> None:
            status = o["status"]
            if any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                   for c in status.get("conditions") or []):
                return
            if change:
                change(o)
            stamp = now()
            status["conditions"] = [*(status.get("conditions") or []), {
                "type": type_, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": stamp, "lastTransitionTime": stamp}]
            if type_ == "Complete":
                status["completionTime"] = stamp
        job = self.mutate("jobs", ns, name, finish)
        if job is None:
            return
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            uid = job["metadata"]["uid"]
            self.schedule(float(ttl), lambda: self._job_ttl(ns, name, uid))

    def _job_pod_finished(self, ns: str, job_name: str, pod: dict) -> None:
        job = self.find("jobs", ns, job_name)
        if job is None or _job_finished(job) or job["metadata"]["uid"] in self._deadline_passed:
            return  # the deadline decides this Job's end
        succeeded = pod["status"]["phase"] == "Succeeded"

        def count(o: dict) -> None:
            status = o["status"]
            status["active"] = max(0, status.get("active", 0) - 1) or None
            if status["active"] is None:
                del status["active"]
            key = "succeeded" if succeeded else "failed"
            status[key] = status.get(key, 0) + 1
        if succeeded:
            self._finish_job(ns, job_name, "Complete", "CompletionsReached",
                             "Reached expected number of succeeded pods", count)
            return
        failed = (job["status"].get("failed") or 0) + 1
        if failed > job["spec"].get("backoffLimit", 6):
            self._finish_job(ns, job_name, "Failed", "BackoffLimitExceeded",
                             "Job has reached the specified backoff limit", count)
        else:
            self.mutate("jobs", ns, job_name, count)
            self._job_pod(self.get("jobs", ns, job_name))

    def _job_deadline(self, ns: str, name: str, uid: str) -> None:
        """activeDeadlineSeconds passed: end the Job's pods and fail it with DeadlineExceeded,
        in the order `deadline_order` says."""
        job = self.find("jobs", ns, name)
        if job is None or job["metadata"]["uid"] != uid or _job_finished(job):
            return
        order = self.deadline_order
        assert order in DEADLINE_ORDERS, order
        reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
        self._deadline_passed.add(uid)

        def count(o: dict) -> None:
            o["status"].pop("active", None)
            o["status"]["failed"] = o["status"].get("failed", 0) + 1

        def fail() -> None:
            if order == "pod-first":
                self._add_condition(ns, name, "FailureTarget", reason, message)
            self._finish_job(ns, name, "Failed", reason, message, count)
        if order == "failure-target":
            self._add_condition(ns, name, "FailureTarget", reason, message)
        elif order == "failed-first":
            fail()
        with self.lock:
            for _, pod in list(self._dependents(uid)):
                if pod["kind"] == "Pod" and pod["status"].get("phase") not in ("Succeeded",
                                                                               "Failed"):
                    if order == "without-pod-status":
                        self._remove("pods", ns, pod["metadata"]["name"])
                    else:
                        self.terminate_pod(ns, pod["metadata"]["name"])
        if order != "failed-first":  # as on a cluster: the status write trails a moment
            self._when_pods_gone(uid, lambda: self.schedule(0.05, fail))

    def _when_pods_gone(self, uid: str, then: Callable[[], None]) -> None:
        with self.lock:
            if any(obj["kind"] == "Pod" for _, obj in self._dependents(uid)):
                self.schedule(0.05, lambda: self._when_pods_gone(uid, then))
                return
        then()

    def _add_condition(self, ns: str, name: str, type_: str, reason: str, message: str) -> None:
        def add(o: dict) -> None:
            conditions = o["status"].get("conditions") or []
            if any(c["type"] == type_ for c in conditions):
                return
            stamp = now()
            o["status"]["conditions"] = [*conditions, {
                "type": type_, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": stamp, "lastTransitionTime": stamp}]
        self.mutate("jobs", ns, name, add)

    def _job_ttl(self, ns: str, name: str, uid: str) -> None:
        job = self.find("jobs", ns, name)
        if job is not None and job["metadata"]["uid"] == uid:
            try:
                self.delete("jobs", ns, name, "Background")
            except ApiError:
                pass


def _ready_conditions(pod: dict) -> set[str]:
    return {c.get("type", "") for c in (pod.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"}


def _controller_of(obj: dict, kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref["name"]
    return None


def _job_finished(job: dict) -> bool:
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge patches are treated the same way)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


# --- HTTP ------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # as a real API server: no 40 ms delayed-ACK stalls
    protocol_version = "HTTP/1.1"
    server: ApiHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base's name
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # ---

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _body(self) -> dict:
        raw = self._raw_body
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from exc

    def _handle(self, method: str) -> None:
        cluster = self.server.cluster
        # Read the whole body first: the connection is kept alive, even when we answer an error.
        length = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        match = _PATH.match(url.path)
        with cluster.lock:  # counted before anything can refuse it
            cluster.requests.append((self._verb(method, match["name"], query) if match
                                     else method.lower(), url.path, query))
        try:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if url.path in ("/version", "/version/"):
                self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake",
                                      "platform": "linux/amd64"})
                return
            if not match or match["plural"] not in KINDS or \
                    KINDS[match["plural"]].prefix != match["prefix"]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            kind = KINDS[match["plural"]]
            ns, name, sub = match["ns"], match["name"], match["sub"]
            if not kind.namespaced:
                ns = None
            verb = self._verb(method, name, query)
            resource = kind.plural + (f"/{sub}" if sub else "")
            self._expire = False
            with cluster.lock:
                cluster.api_calls.append((verb, resource))
                for fault in cluster.faults:
                    if fault.times and fault.verb in (verb, "*") and fault.resource in (
                            resource, "*"):
                        fault.times -= 1
                        if fault.code == 410 and verb == "watch":
                            self._expire = True  # as if the history was compacted
                            break
                        raise ApiError(fault.code, "InternalError",
                                       f"Internal error occurred: injected fault on {verb} "
                                       f"{resource}")
            self._dispatch(cluster, kind, method, verb, ns, name, sub, query)
        except ApiError as exc:
            self._send_json(exc.code, exc.status())
        except SelectorError as exc:
            self._send_json(400, ApiError(400, "BadRequest", str(exc)).status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    @staticmethod
    def _verb(method: str, name: str | None, query: dict) -> str:
        if method == "GET":
            if name:
                return "get"
            return "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]

    def _dispatch(self, cluster: Cluster, kind: Kind, method: str, verb: str, ns: str | None,
                  name: str | None, sub: str | None, query: dict) -> None:
        plural = kind.plural
        if sub == "log":
            if verb != "get" or plural != "pods":
                raise ApiError(405, "MethodNotAllowed", "method not allowed")
            self._log(cluster, ns, name or "", query)
            return
        if verb == "list":
            items, rv = cluster.list(plural, ns, query.get("labelSelector"),
                                     query.get("fieldSelector"))
            self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                  "metadata": {"resourceVersion": rv}, "items": items})
        elif verb == "watch":
            self._watch(cluster, kind, ns, query)
        elif verb == "get":
            self._send_json(200, cluster.get(plural, ns, name or ""))
        elif verb == "create":
            if name:
                raise ApiError(405, "MethodNotAllowed", "POST to a named object")
            self._send_json(201, cluster.create(plural, ns, self._body()))
        elif verb == "update":
            body = self._body()
            if (body.get("metadata") or {}).get("name") not in (None, name):
                raise ApiError(400, "BadRequest", "the name of the object does not match")
            self._send_json(200, cluster.update(plural, ns, name or "", body,
                                                status=sub == "status"))
        elif verb == "patch":
            body = self._body()
            if not isinstance(body, dict):
                raise ApiError(415, "UnsupportedMediaType", "only merge patches are supported")
            self._send_json(200, cluster.patch(plural, ns, name or "", body,
                                               status=sub == "status"))
        elif verb == "delete":
            body = self._body()
            policy = body.get("propagationPolicy") or query.get("propagationPolicy")
            if body.get("orphanDependents") is True:
                policy = "Orphan"
            grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
            try:
                grace = None if grace is None else int(grace)
            except (TypeError, ValueError) as exc:
                raise ApiError(400, "BadRequest", f"bad gracePeriodSeconds: {exc}") from exc
            with cluster.lock:
                cluster.deletions.append((plural, name or "", grace, policy))
            obj = cluster.delete(plural, ns, name or "", policy, grace)
            if obj["metadata"].get("deletionTimestamp"):
                self._send_json(202, obj)
            else:
                self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                      "status": "Success", "details": {
                                          "name": name, "group": kind.api_version.split("/")[0]
                                          if "/" in kind.api_version else "",
                                          "kind": plural, "uid": obj["metadata"]["uid"]}})
        else:  # deletecollection
            items, _ = cluster.list(plural, ns, query.get("labelSelector"),
                                    query.get("fieldSelector"))
            for item in items:
                try:
                    cluster.delete(plural, ns, item["metadata"]["name"],
                                   query.get("propagationPolicy"))
                except ApiError:
                    pass
            self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                  "metadata": {}, "items": items})

    def _watch(self, cluster: Cluster, kind: Kind, ns: str | None, query: dict) -> None:
        """Events from `resourceVersion` (the current state as ADDED events without one) until
        `timeoutSeconds`; with `allowWatchBookmarks`, a BOOKMARK every `bookmark_seconds` and one
        before the watch ends, carrying the resourceVersion it has got to. A watch from a
        resourceVersion older than the history answers one ERROR event (410 Expired)."""
        with self.server.connections_lock:
            self.server.watching.add(self.connection)
        try:
            self._stream_watch(cluster, kind, ns, query)
        finally:
            with self.server.connections_lock:
                self.server.watching.discard(self.connection)

    def _stream_watch(self, cluster: Cluster, kind: Kind, ns: str | None, query: dict) -> None:
        labels = parse_labels(query.get("labelSelector"))
        fields = parse_fields(query.get("fieldSelector"))
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        end = time.monotonic() + timeout
        rv_text = query.get("resourceVersion") or ""
        pending: list[dict] = []
        with cluster.lock:
            if rv_text in ("", "0"):
                items, rv = cluster.list(kind.plural, ns, query.get("labelSelector"),
                                         query.get("fieldSelector"))
                pending = [{"type": "ADDED", "object": item} for item in items]
                last = int(rv)
            else:
                if not rv_text.isdigit():
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")
                last = int(rv_text)
                if last < cluster.compacted or self._expire:
                    pending = [{"type": "ERROR", "object": ApiError(
                        410, "Expired", f"too old resource version: {last} "
                                        f"({cluster.compacted + 1})").status()}]
                    end = 0
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in pending:
            self._chunk(json.dumps(event).encode() + b"\n")
        bookmark = time.monotonic() + cluster.bookmark_seconds
        while time.monotonic() < end:
            with cluster.lock:
                with self.server.connections_lock:
                    if self.connection not in self.server.watching:
                        return  # dropped: the connection is gone
                fresh = [e for e in cluster.history if e.rv > last]
                if not fresh:
                    if cluster.stopping:
                        break
                    if not bookmarks or time.monotonic() < bookmark:
                        until = min(end, bookmark) if bookmarks else end
                        cluster.changed.wait(min(1.0, max(0.0, until - time.monotonic())))
                        continue
                else:
                    last = fresh[-1].rv
            if not fresh:  # a bookmark is due (written without the cluster's lock)
                bookmark = time.monotonic() + cluster.bookmark_seconds
                self._bookmark(kind, last)
                continue
            for event in fresh:
                out = self._watch_event(event, kind.plural, ns, labels, fields)
                if out:
                    self._chunk(json.dumps(out).encode() + b"\n")
        if bookmarks and end:  # timed out, not expired: where to resume from
            self._bookmark(kind, last)
        self._chunk(b"")

    def _bookmark(self, kind: Kind, rv: int) -> None:
        self._chunk(json.dumps({"type": "BOOKMARK", "object": {
            "kind": kind.kind, "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(rv)}}}).encode() + b"\n")

    @staticmethod
    def _watch_event(event: Event, plural: str, ns: str | None, labels: list,
                     fields: list) -> dict | None:
        if event.plural != plural:
            return None
        if ns is not None and event.obj["metadata"].get("namespace") != ns:
            return None
        now_matches = matches(event.obj, labels, fields)
        old_matched = event.old is not None and matches(event.old, labels, fields)
        if event.type == "MODIFIED" and not now_matches:
            return {"type": "DELETED", "object": event.obj} if old_matched else None
        if not now_matches:
            return None
        type_ = "ADDED" if event.type == "MODIFIED" and event.old is not None and \
            not old_matched else event.type
        return {"type": type_, "object": event.obj}

    def _log(self, cluster: Cluster, ns: str | None, name: str, query: dict) -> None:
        pod = cluster.get("pods", ns, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or (containers[0] if len(containers) == 1 else "")
        if container not in containers:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod "
                                              f"{name}, choose one of: {containers}")
        statuses = {s["name"]: s for s in pod["status"].get("containerStatuses") or []}
        state = (statuses.get(container) or {}).get("state") or {
            "waiting": {"reason": "ContainerCreating"}}
        if "waiting" in state:
            reason = state["waiting"].get("reason", "ContainerCreating")
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                                              f"waiting to start: {reason}")
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        if query.get("follow", "").lower() not in ("true", "1"):
            with cluster.lock:
                data = bytes(cluster.logs.get((ns or "", name), b""))
            self._send_text(data[:limit] if limit is not None else data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        while True:
            with cluster.lock:
                data = bytes(cluster.logs.get((ns or "", name), b""))[sent:]
                current = cluster.objects["pods"].get((ns or "", name))
                done = current is None or current["status"].get("phase") in (
                    "Succeeded", "Failed") or cluster.stopping
                if not data and not done:
                    cluster.changed.wait(1.0)
                    continue
            if limit is not None:
                data = data[: max(0, limit - sent)]
            if data:
                self._chunk(data)
                sent += len(data)
            if done or (limit is not None and sent >= limit):
                break
        self._chunk(b"")


class ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, cluster: Cluster):
        super().__init__(("127.0.0.1", 0), Handler)
        self.cluster = cluster
        self.connections: set[Any] = set()
        self.watching: set[Any] = set()  # the connections of watches in progress
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self, *, watches_only: bool = False) -> int:
        """Hang up on every client, or only on the watching ones (their handler threads then
        end); returns how many."""
        import socket

        with self.connections_lock:
            left = list(self.watching if watches_only else self.connections)
            self.watching.difference_update(left)
        for connection in left:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        with self.cluster.lock:  # the watches' handlers wake up and see they were dropped
            self.cluster.changed.notify_all()
        return len(left)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up (a watch it left early) is normal; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeKube:
    """The fake API server: `start()`, use `.kubeconfig_path` with the official client, `stop()`."""

    def __init__(self, kubelet: Any, directory: Path, *, namespace: str = "kubefunction-functions",
                 history: int = 500):
        self.namespace = namespace
        self.cluster = Cluster(kubelet=kubelet, history=history, namespace=namespace)
        self.kubelet = kubelet
        self.server = ApiHTTPServer(self.cluster)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig_path = directory / "kubeconfig"
        self.kubeconfig_path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}],
        }))
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="fake-kube-http", kwargs={"poll_interval": 0.05})

    def start(self) -> FakeKube:
        self.cluster.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.cluster.stop()
        self.server.shutdown()
        self.server.server_close()
        self.server.close_connections()
        self._thread.join(timeout=10)

    # --- for tests -------------------------------------------------------------------------

    @property
    def api_calls(self) -> list[tuple[str, str]]:
        with self.cluster.lock:
            return list(self.cluster.api_calls)

    def request_count(self) -> int:
        """How many requests the server has received, of any kind and outcome."""
        with self.cluster.lock:
            return len(self.cluster.requests)

    def requests(self, verb: str | None = None, path: str = "") -> list[dict[str, str]]:
        """The query of every request received with `verb` (any if None) on a path ending in
        `path` (e.g. "/endpointslices"), oldest first."""
        with self.cluster.lock:
            return [dict(query) for got, at, query in self.cluster.requests
                    if verb in (None, got) and at.endswith(path)]

    def drop_watches(self) -> int:
        """Hang up on every watch in progress (a load balancer or the API server restarting);
        returns how many."""
        return self.server.close_connections(watches_only=True)

    def script(self, kind: str = "succeed", **options: Any) -> None:
        """Queue what the scripted kubelet does with the next pod (see ScriptedKubelet)."""
        self.kubelet.script(kind, **options)

    def fail(self, verb: str, resource: str, *, code: int = 500, times: int = 1) -> None:
        """Answer the next `times` calls of `verb` on `resource` ("*" for any) with `code`
        (a Status body); code 410 on "watch" answers with an ERROR event (resourceVersion too
        old), as the API server does after compaction."""
        with self.cluster.lock:
            self.cluster.faults.append(Fault(verb, resource, code, times))

    def objects(self, plural: str, label_selector: str | None = None) -> list[dict]:
        return self.cluster.list(plural, None, label_selector)[0]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate()` holds after a store change (or the timeout)."""
        end = time.monotonic() + timeout
        cluster = self.cluster
        while True:
            with cluster.lock:
                seen = (cluster.rv, sum(len(log) for log in cluster.logs.values()))
            if predicate():  # without the lock: it may call the API
                return True
            with cluster.lock:
                while seen == (cluster.rv, sum(len(log) for log in cluster.logs.values())):
                    left = end - time.monotonic()
                    if left <= 0:
                        return False
                    cluster.changed.wait(min(left, 0.2))
