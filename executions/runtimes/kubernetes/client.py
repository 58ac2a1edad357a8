"""The kubernetes runtime's API access: one client per worker process, the namespace it works
in, API failures as the runtime's errors, and every permission its Role must grant.

Only the official `kubernetes` client is used; every call has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import urllib3
from django.conf import settings
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from ..base import RuntimeFailure, RuntimeUnavailable

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
    # what each worker process's informer keeps (list, then watch); list: the idle scan too
    ("list", "deployments"), ("watch", "deployments"), ("list", "endpointslices"),
    ("watch", "endpointslices"),
    ("delete", "pods"),
})
PERMISSIONS = COLD_PERMISSIONS | WARM_PERMISSIONS

G = TypeVar("G")


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


class ApiGroup(Generic[G]):
    """`kube.batch`, `kube.core`, …: the official client's API class of one group and version
    (`client.BatchV1Api`, …) on the calling process's API client."""

    def __init__(self, api_class: type[G]) -> None:
        self.api_class = api_class

    def __get__(self, kube: KubeClient, owner: type) -> G:
        return self.api_class(kube.api_client())


class KubeClient:
    """The API client, built once per process (a forked worker child builds its own), and the
    functions namespace every call goes to."""

    def __init__(self) -> None:
        self._api: client.ApiClient | None = None
        self._pid = 0
        self._lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _fresh_lock(ref()))

    def api_client(self) -> client.ApiClient:
        pid = os.getpid()
        if self._api is None or self._pid != pid:
            with self._lock:
                if self._api is None or self._pid != pid:
                    self._api, self._pid = build_api_client(), pid
        return self._api

    batch = ApiGroup(client.BatchV1Api)
    core = ApiGroup(client.CoreV1Api)
    apps = ApiGroup(client.AppsV1Api)
    discovery = ApiGroup(client.DiscoveryV1Api)

    @property
    def namespace(self) -> str:
        return settings.KUBEFUNCTION_KUBE_NAMESPACE

    @staticmethod
    def timeout() -> tuple[int, int]:
        """(connect, read) seconds of one API call."""
        return (settings.KUBEFUNCTION_KUBE_TIMEOUT, settings.KUBEFUNCTION_KUBE_TIMEOUT)

    def read(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
        """`call(*args, **kwargs)` with the timeout, its answer as JSON. Raises ApiException."""
        response = call(*args, _preload_content=False, _request_timeout=self.timeout(), **kwargs)
        return json.loads(response.data)

    def watch(self, call: Callable[..., Any], action: str, seconds: int,
              **options: Any) -> Iterator[dict]:
        """The events of one watch request (`call` a list_namespaced_… of this namespace),
        ending after `seconds` at most; failures raised as the runtime's errors."""
        return self.events(self.open_watch(call, action, seconds, **options), action)

    def open_watch(self, call: Callable[..., Any], action: str, seconds: int,
                   **options: Any) -> urllib3.BaseHTTPResponse:
        """Start one watch request, ending after `seconds` at most (the server's
        timeoutSeconds; a silent connection is given up KUBEFUNCTION_KUBE_TIMEOUT later). Its
        `shutdown()` ends it from another thread."""
        with api_errors(action):
            return call(self.namespace, watch=True, timeout_seconds=seconds,
                        _preload_content=False,
                        _request_timeout=(settings.KUBEFUNCTION_KUBE_TIMEOUT,
                                          seconds + settings.KUBEFUNCTION_KUBE_TIMEOUT),
                        **options)

    @staticmethod
    def events(response: urllib3.BaseHTTPResponse, action: str) -> Iterator[dict]:
        """The events of a watch `open_watch` started, as JSON; a broken connection raised as
        RuntimeUnavailable."""
        try:
            with api_errors(action):
                for line in iter_resp_lines(response):
                    if line:
                        yield json.loads(line)
        finally:  # a watch left early must not go back to the pool with unread data
            response.close()
            response.release_conn()

    def close(self) -> None:
        if self._api is not None and self._pid == os.getpid():
            self._api.close()
        self._api = None


def _fresh_lock(kube: KubeClient | None) -> None:
    """In a forked child: a lock another thread of the parent held would never be released."""
    if kube is not None:
        kube._lock = threading.Lock()
