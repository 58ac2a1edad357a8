"""The kubernetes runtime: each invocation as a Job in the functions namespace (cold mode, see
`jobs`), or sent to a warm Deployment of the version (KUBEFUNCTION_KUBE_MODE=warm, see `warm`).

Both modes share this worker process's API client (`client.KubeClient`) and build their objects
from `manifests`; a Job's end is read by `outcomes`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from functions.specs import FunctionSpec, PrepareResult

from ..base import InvocationContext, Outcome, Runtime, RuntimeFailure, RuntimeUnavailable
from .client import KubeClient, api_errors
from .jobs import Jobs
from .warm import WarmDeployments


class KubernetesRuntime(Runtime):
    """Runs each invocation in a pod of the version's image (`spec.image`): a Job's, or a warm
    Deployment's."""

    name = "kubernetes"
    runs_images = True

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        """Cold mode adopts the execution's Job (409); warm mode has nothing to adopt."""
        return settings.KUBEFUNCTION_KUBE_MODE != "warm"

    def __init__(self) -> None:
        self.kube = KubeClient()
        self.jobs = Jobs(self.kube)
        self.warm = WarmDeployments(self.kube)

    def needs_prepare(self, spec: FunctionSpec) -> bool:
        return not spec.image

    def prepare(self, spec: FunctionSpec) -> PrepareResult:
        """Nothing to do beyond the image `functions.images` builds: the kubelet pulls it."""
        if not spec.image:
            return PrepareResult(ok=False, log=f"{spec.function_name} v{spec.version_number} "
                                               "has no image yet: build it first")
        return PrepareResult(ok=True, log=f"the cluster pulls {spec.image} when a pod starts")

    def invoke(self, spec: FunctionSpec, payload: Any, context: InvocationContext) -> Outcome:
        if not spec.image:
            raise RuntimeFailure(f"{spec.function_name} v{spec.version_number} has no image "
                                 "yet: build it for the kubernetes runtime first")
        if settings.KUBEFUNCTION_KUBE_MODE == "warm":
            return self.warm.invoke(spec, payload, context)
        return self.jobs.invoke(spec, payload, context)

    def release(self, spec: FunctionSpec) -> None:
        if settings.KUBEFUNCTION_KUBE_MODE == "warm":
            self.warm.release(spec)

    def scale_idle(self) -> list[str]:
        """Scale the idle warm Deployments of the namespace down (whoever used them)."""
        return self.warm.scale_idle()

    def close(self) -> None:
        self.warm.close()
        self.kube.close()

    def health(self) -> tuple[bool, str]:
        try:
            with api_errors("list Jobs"):
                self.kube.batch.list_namespaced_job(self.kube.namespace, limit=1,
                                                    _request_timeout=self.kube.timeout())
            host = self.kube.api_client().configuration.host
        except (RuntimeUnavailable, RuntimeFailure) as exc:
            return False, f"kubernetes runtime: {exc}"
        return True, f"kubernetes runtime: API at {host}, namespace {self.kube.namespace}"
