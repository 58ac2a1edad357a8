"""What warm mode needs to know of the cluster, kept per worker process by watches (informer
style), so that a warm invocation in steady state asks the API server nothing.

Two reflectors, one per resource of the functions namespace: the warm Deployments (selected by
the managed-by labels and `kubefunction.io/warm`: their replicas, ready state, annotations)
and the EndpointSlices of Services (`kubernetes.io/service-name`: which pod addresses are
ready). Each lists, then watches from the list's resourceVersion with allowWatchBookmarks and
timeoutSeconds (KUBEFUNCTION_KUBE_WATCH_SECONDS). A watch that ends (its timeout) or drops (a
broken connection, the API server restarting) is resumed from the last resourceVersion seen,
which events and BOOKMARKs move; 410 Gone (an ERROR event, or the HTTP status) is answered by a
fresh list that replaces the cache. Events arrive when they arrive, in no order relative to the
invocations: a reader that misses something asks the API itself (see `warm`), and an endpoint
that refuses connections is `drop`ped here until the cluster next says anything about it.

The first lists run on the thread of the first warm invocation of the process (`start`: their
failure is that invocation's); then each reflector watches on a daemon thread of its own —
the official client's watch is a blocking read, one stream per thread. Forked children (Celery's
prefork pool) start empty and start their own threads: nothing of the parent's is used or closed.
`close` ends the watches and joins the threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from django.conf import settings
from kubernetes.client.rest import ApiException

from ..base import RuntimeFailure, RuntimeUnavailable
from .client import KubeClient, api_errors
from .manifests import MANAGED_BY, WARM_LABEL

logger = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
BACKOFF_SECONDS = (0.05, 5.0)  # between failed watches: the first, and at most


class Expired(Exception):
    """The watch's resourceVersion is gone from the server's history (410): list again."""


def _gone(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ApiException) and cause.status == 410


def ready_endpoints(slices: list[dict]) -> list[tuple[str, str]]:
    """(address, pod name) of each ready endpoint of these EndpointSlices."""
    return [(endpoint["addresses"][0], (endpoint.get("targetRef") or {}).get("name", ""))
            for item in slices for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("addresses")]


class Reflector:
    """One resource's objects by name, kept by list + watch (see the module's docstring)."""

    def __init__(self, cache: WarmCache, plural: str, group: str, call: str,
                 selector: str) -> None:
        self.cache, self.plural, self.selector = cache, plural, selector
        self._list_call = lambda kube: getattr(getattr(kube, group), call)
        self.objects: dict[str, dict] = {}
        self.rv: str | None = None  # where the next watch starts; None: list first
        self.response = None  # the watch in progress, for `close` to end

    def relist(self) -> None:
        """A fresh list replaces what is kept. Raises RuntimeUnavailable / RuntimeFailure."""
        kube = self.cache.kube
        with api_errors(f"list the warm {self.plural}"):
            listed = kube.read(self._list_call(kube), kube.namespace,
                               label_selector=self.selector)
        with self.cache.changed:
            self.objects = {item["metadata"]["name"]: item for item in listed["items"]}
            self.rv = listed["metadata"]["resourceVersion"]
            self.cache.touch()

    def run(self, stop: threading.Event) -> None:
        """The thread's loop: watch, resume, list again after 410, back off while failing."""
        failures = 0
        while not stop.is_set():
            try:
                if self.rv is None:
                    self.relist()
                if self._watch(stop):
                    failures = 0
                    continue
            except Expired:
                self.rv = None
                continue
            except (RuntimeUnavailable, RuntimeFailure) as exc:
                if stop.is_set():
                    return
                if _gone(exc):  # some servers answer a too old watch with HTTP 410
                    self.rv = None
                    continue
                if not failures:
                    logger.info("the watch of warm %s ended: %s; resuming", self.plural, exc)
            except Exception:  # noqa: BLE001 - an answer it cannot read: start afresh
                if stop.is_set():
                    return
                logger.exception("the watch of warm %s failed; listing again", self.plural)
                self.rv = None
            failures += 1
            first, most = BACKOFF_SECONDS
            stop.wait(min(most, first * 2 ** (failures - 1)) if failures > 1 else 0)

    def _watch(self, stop: threading.Event) -> bool:
        """One watch request from `rv`; whether it went as a watch should (events, or the
        server's timeout): a watch that ends at once with nothing is a failure to back off
        from. Raises Expired, RuntimeUnavailable, RuntimeFailure."""
        kube = self.cache.kube
        action = f"watch the warm {self.plural}"
        seconds = max(1, int(settings.KUBEFUNCTION_KUBE_WATCH_SECONDS))
        started = time.monotonic()
        response = kube.open_watch(self._list_call(kube), action, seconds,
                                   label_selector=self.selector, resource_version=self.rv,
                                   allow_watch_bookmarks=True)
        self.response = response
        if stop.is_set():  # closed while it started
            self.shutdown()
        seen = False
        try:
            for event in kube.events(response, action):
                seen = True
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message", ""))
                    raise RuntimeUnavailable(f"the watch of warm {self.plural} failed: "
                                             f"{obj.get('code')} {obj.get('message', '')}")
                self._apply(kind, obj)
        finally:
            self.response = None
        return seen or time.monotonic() - started >= 1

    def _apply(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        with self.cache.changed:
            self.rv = meta["resourceVersion"]
            if kind == "BOOKMARK":  # no change, only how far the watch got
                return
            if kind == "DELETED":
                self.objects.pop(meta["name"], None)
            else:
                self.objects[meta["name"]] = obj
            self.cache.touch()

    def shutdown(self) -> None:
        """End the watch in progress, from any thread: its read sees the connection end."""
        response = self.response
        if response is not None:
            with contextlib.suppress(ValueError, RuntimeError, OSError):  # already over
                response.shutdown()


class WarmCache:
    """The warm Deployments and the ready endpoints of their Services, as this process's watches
    last saw them (see the module's docstring)."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget(ref()))

    def _reset(self) -> None:
        self.changed = threading.Condition()
        self.version = 0  # moves on each change kept
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid = 0
        managed = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
        self.deployments = Reflector(self, "deployments", "apps", "list_namespaced_deployment",
                                     f"{managed},{WARM_LABEL}")
        self.slices = Reflector(self, "endpointslices", "discovery",
                                "list_namespaced_endpoint_slice", SERVICE_LABEL)
        # service -> address -> the endpoint as it was when it refused a connection
        self._dropped: dict[str, dict[str, dict]] = {}

    def touch(self) -> None:
        """Under `changed`: something changed; wake the waiters."""
        self.version += 1
        self.changed.notify_all()

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """List both resources (on this thread: a failure is the caller's) and start watching
        them, once per process. Raises RuntimeUnavailable / RuntimeFailure."""
        if self._pid == os.getpid() and not self._stop.is_set():
            return
        with self._start_lock:
            if self._pid == os.getpid() and not self._stop.is_set():
                return
            if self._stop.is_set():  # closed, now used again
                self._stop = threading.Event()
            for reflector in (self.deployments, self.slices):
                reflector.relist()
            self._threads = [threading.Thread(target=reflector.run, args=(self._stop,),
                                              name=f"kubefunction-watch-{reflector.plural}",
                                              daemon=True)
                             for reflector in (self.deployments, self.slices)]
            for thread in self._threads:
                thread.start()
            self._pid = os.getpid()

    def close(self) -> None:
        """End the watches and their threads (a forked child has none of its own yet)."""
        if self._pid != os.getpid():
            return
        self._stop.set()
        for reflector in (self.deployments, self.slices):
            reflector.shutdown()
        for thread in self._threads:
            thread.join(timeout=settings.KUBEFUNCTION_KUBE_TIMEOUT)
        self._threads = []
        self._pid = 0

    # --- reading -----------------------------------------------------------------------------

    def deployment(self, name: str) -> dict | None:
        with self.changed:
            return self.deployments.objects.get(name)

    def all_deployments(self) -> list[dict]:
        with self.changed:
            return list(self.deployments.objects.values())

    def endpoints(self, service: str) -> tuple[int, list[tuple[str, str]]]:
        """The version of the cache and the ready endpoints of `service` (address, pod name) in
        it, less those dropped since the cluster last said anything of them."""
        with self.changed:
            slices = [s for s in self.slices.objects.values()
                      if (s["metadata"].get("labels") or {}).get(SERVICE_LABEL) == service]
            dropped = self._dropped.get(service)
            if dropped:
                current = {e["addresses"][0]: e for s in slices for e in s.get("endpoints") or []
                           if e.get("addresses")}
                for address, was in list(dropped.items()):
                    if current.get(address) != was:  # changed or gone: news of it
                        del dropped[address]
            ready = [e for e in ready_endpoints(slices) if not dropped or e[0] not in dropped]
            return self.version, ready

    def drop(self, service: str, address: str) -> None:
        """`address` refused a connection: leave it out until its endpoint changes."""
        with self.changed:
            for item in self.slices.objects.values():
                if (item["metadata"].get("labels") or {}).get(SERVICE_LABEL) != service:
                    continue
                for endpoint in item.get("endpoints") or []:
                    if (endpoint.get("addresses") or [None])[0] == address:
                        self._dropped.setdefault(service, {})[address] = endpoint

    def wait(self, seen: int, timeout: float) -> int:
        """Until the cache changes from version `seen`, or `timeout` seconds; the version."""
        end = time.monotonic() + timeout
        with self.changed:
            while self.version == seen:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return self.version

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until `predicate()` (called without the lock) holds, or `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            version = self.version
            if predicate():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.wait(version, left)


def _forget(cache: WarmCache | None) -> None:
    """In a forked child: the parent's watches, threads and locks are not this process's."""
    if cache is not None:
        cache._reset()
