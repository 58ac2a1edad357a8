"""Kubelets of the fake cluster: they take pods the API server stores and report their status.

`ScriptedKubelet` plays queued scripts (deterministic, no containers); `DockerKubelet` runs the
pod's image on the local Docker engine with the pod's command, args, env, memory limit, user and
read-only root, with no network, and reports the real exit code, OOMKilled and logs. A serving
pod's port (a Deployment's) is reached through a tunnel (`tests.kube.tunnel`) on a loopback pod IP,
and the pod turns Ready once its readinessProbe answers through it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions.runner
from functions.runner import frame_header

from .server import Cluster, now
from .tunnel import MOUNT_POINT as TUNNEL_MOUNT
from .tunnel import PodTunnel, agent_command, probe

REQUEST_ENV = "KUBEFUNCTION_REQUEST"
RUNNER = functions.runner.__file__
_IPS = itertools.count()


def _base_status(pod: dict) -> dict:
    container = pod["spec"]["containers"][0]
    return {"name": container["name"], "image": container["image"], "imageID": "",
            "ready": False, "restartCount": 0, "started": False,
            "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}}


def _conditions(ready: bool) -> list[dict]:
    stamp = now()
    flag = "True" if ready else "False"
    return [{"type": t, "status": s, "lastProbeTime": None, "lastTransitionTime": stamp}
            for t, s in (("PodScheduled", "True"), ("Initialized", "True"),
                         ("ContainersReady", flag), ("Ready", flag))]


def set_creating(pod: dict) -> None:
    pod["status"] = {"phase": "Pending", "hostIP": "10.0.0.1", "startTime": now(),
                     "qosClass": "Burstable", "conditions": _conditions(False),
                     "containerStatuses": [_base_status(pod)]}


def set_waiting(pod: dict, reason: str, message: str = "") -> None:
    status = pod["status"]["containerStatuses"][0]
    status["state"] = {"waiting": {"reason": reason, "message": message}}


def set_running(pod: dict, container_id: str = "") -> None:
    pod["status"]["phase"] = "Running"
    number = next(_IPS)
    pod["status"]["podIP"] = f"10.1.{number // 250 % 250}.{number % 250 + 2}"
    pod["status"]["conditions"] = _conditions(True)
    status = pod["status"]["containerStatuses"][0]
    status.update(ready=True, started=True,
                  imageID=f"docker-pullable://{status['image']}",
                  containerID=f"docker://{container_id or secrets.token_hex(32)}",
                  state={"running": {"startedAt": now()}})


def set_terminated(pod: dict, exit_code: int, reason: str = "") -> None:
    status = pod["status"]["containerStatuses"][0]
    started = (status["state"].get("running") or {}).get("startedAt", now())
    status.update(ready=False, started=False, state={"terminated": {
        "exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started, "finishedAt": now(),
        "containerID": status.get("containerID", f"docker://{secrets.token_hex(32)}")}})
    pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
    pod["status"]["conditions"] = _conditions(False)


def secret_volumes(cluster: Cluster, pod: dict) -> dict[str, dict[str, bytes]] | None:
    """{mountPath: {file name: content}} of the pod's Secret volumes, or None while one of the
    Secrets does not exist (a kubelet keeps such a pod ContainerCreating and retries)."""
    ns = pod["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    found: dict[str, dict[str, bytes]] = {}
    for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
        source = (volumes.get(mount["name"]) or {}).get("secret")
        if source is None:
            continue
        secret = cluster.find("secrets", ns, source["secretName"])
        if secret is None:
            if source.get("optional"):
                continue
            return None
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        items = source.get("items")
        found[mount["mountPath"]] = ({item["path"]: data[item["key"]] for item in items
                                      if item["key"] in data} if items else data)
    return found


def pod_env(cluster: Cluster | None, pod: dict) -> dict[str, str] | None:
    """The container's environment, secretKeyRef values resolved (None while one is missing)."""
    env: dict[str, str] = {}
    ns = pod["metadata"]["namespace"]
    for item in pod["spec"]["containers"][0].get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            env[item["name"]] = item.get("value", "")
            continue
        secret = cluster.find("secrets", ns, ref["name"]) if cluster is not None else None
        data = (secret or {}).get("data") or {}
        if ref["key"] not in data:
            if ref.get("optional"):
                continue
            return None
        env[item["name"]] = base64.b64decode(data[ref["key"]]).decode("utf-8", "replace")
    return env


def pod_request(pod: dict, cluster: Cluster | None = None) -> dict | None:
    """The runner request a pod carries (env, an argument, or a file of a Secret volume)."""
    container = pod["spec"]["containers"][0]
    candidates = list((pod_env(cluster, pod) or {}).values())
    candidates += list(container.get("args") or []) + list(container.get("command") or [])
    if cluster is not None:
        for files in (secret_volumes(cluster, pod) or {}).values():
            candidates += [data.decode("utf-8", "replace") for data in files.values()]
    for text in candidates:
        if text.lstrip().startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(text)
                if isinstance(value, dict) and "nonce" in value:
                    return value
    return None


def frame(nonce: str, answer: dict) -> bytes:
    payload = json.dumps(answer).encode()
    return frame_header(nonce, len(payload)) + payload + b"\n"


@dataclass
class Script:
    """What the scripted kubelet does with one pod.

    kind: "succeed" (a frame with `output`, or the event echoed), "fail" (a frame with
    ok false, `error_type`, `error`, exit `code`), "exit" (exit `code` with raw `logs`, no frame),
    "oom" (OOMKilled, exit 137), "waiting" (stays waiting with `reason`: ErrImagePull,
    ImagePullBackOff, ...), "crashloop" (restarts, waiting CrashLoopBackOff), "evict" (pod
    Failed, reason Evicted), "hang" or "serve" (runs, Ready, until deleted; the default for
    pods with restartPolicy Always). `delay`: seconds spent running. `on_sigterm`: what the
    pod's main process does when the pod is deleted: "exit" (at once, code 143) or "ignore"
    (as a busy PID 1 without a handler: it runs on until SIGKILL at the grace period, 137).
    """

    kind: str = "succeed"
    output: Any = None
    logs: str = ""
    code: int = 1
    reason: str = ""
    message: str = ""
    error_type: str = "ValueError"
    error: str = "scripted failure"
    delay: float = 0.02
    creating: float = 0.01
    on_sigterm: str = "exit"


class ScriptedKubelet:
    """Plays scripts; pods that serve (a Deployment's, with a container port) run the real
    runner (functions/runner.py) as a local process when `serve_root` names a folder holding
    the function's source: it listens on the pod's IP (a loopback address, 127.20.x.y) and
    port, and the pod turns Ready once GET /healthz answers, as a readiness probe would."""

    KINDS = ("succeed", "fail", "exit", "oom", "waiting", "crashloop", "evict", "hang", "serve")

    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.queue: collections.deque[Script] = collections.deque()
        self.pods: set[str] = set()
        self.lock = threading.Lock()
        self.serve_root: str | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.threads: list[threading.Thread] = []
        self.scripts: dict[str, Script] = {}  # pod uid -> what it plays

    def attach(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def script(self, kind: str = "succeed", **options: Any) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown script {kind!r}; one of {self.KINDS}")
        with self.lock:
            self.queue.append(Script(kind=kind, **options))

    def close(self) -> None:
        with self.lock:
            processes = list(self.processes.values())
            self.processes.clear()
            self.pods.clear()
            threads = list(self.threads)
        for process in processes:
            _stop(process)
        for thread in threads:
            thread.join(timeout=5)

    def forget(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            self.pods.discard(uid)
            self.scripts.pop(uid, None)
            process = self.processes.pop(uid, None)
        if process is not None:
            _stop(process)

    def terminate(self, pod: dict, grace: int, done: Any) -> None:
        """SIGTERM the pod's process; SIGKILL it after `grace` s; `done()` once it has ended."""
        cluster = self.cluster
        assert cluster is not None
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        with self.lock:
            running = uid in self.pods
            script = self.scripts.get(uid) or Script()
            process = self.processes.get(uid)
        if not running:
            cluster.schedule(0, done)
            return

        def ended(code: int) -> None:
            with self.lock:
                alive = uid in self.pods
                self.pods.discard(uid)
                self.processes.pop(uid, None)
            if not alive:
                done()
                return

            def end(p: dict) -> None:
                if "terminated" not in p["status"]["containerStatuses"][0]["state"]:
                    set_terminated(p, code)
            cluster.mutate("pods", ns, name, end)
            done()
        if process is None:
            ignore = script.on_sigterm == "ignore"
            cluster.schedule(float(grace) if ignore else 0.01,
                             lambda: ended(137 if ignore else 143))
            return

        def stop() -> None:  # a local runner (a serving pod): the real signals
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _stop(process)
            ended(128 - process.returncode if process.returncode < 0 else process.returncode)
        thread = threading.Thread(target=stop, daemon=True, name=f"fake-stop-{name}")
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _serve(self, pod: dict) -> None:
        """Run the pod's runner locally on the pod's IP and port; Ready once it answers."""
        cluster = self.cluster
        assert cluster is not None and self.serve_root
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        container = pod["spec"]["containers"][0]
        port = container["ports"][0]["containerPort"]
        number = next(_IPS)
        ip = f"127.20.{number // 250 % 250}.{number % 250 + 2}"
        mapping = {"python3": sys.executable, "/opt/kubefunction/runner.py": RUNNER,
                   "/opt/kubefunction/src": self.serve_root,
                   "/opt/kubefunction/deps": str(Path(self.serve_root) / ".deps")}
        command = [mapping.get(part, part) for part in container["command"]]
        command[command.index("--http") + 1] = f"{ip}:{port}"
        env = pod_env(cluster, pod) or {}
        with self.lock:
            if uid not in self.pods:
                return
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            self.processes[uid] = process

        def running(p: dict) -> None:
            set_running(p)
            p["status"]["podIP"] = ip
            p["status"]["conditions"] = _conditions(False)
            p["status"]["containerStatuses"][0]["ready"] = False
        cluster.mutate("pods", ns, name, running)

        def probe() -> None:
            import urllib.request

            while uid in self.pods and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://{ip}:{port}/healthz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.02)  # the probe's period
            else:
                return

            def ready(p: dict) -> None:
                p["status"]["conditions"] = _conditions(True)
                p["status"]["containerStatuses"][0]["ready"] = True
            cluster.mutate("pods", ns, name, ready)
        thread = threading.Thread(target=probe, daemon=True, name=f"fake-probe-{name}")
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def run(self, pod: dict) -> None:
        with self.lock:
            # pods that restart (a Deployment's) serve until deleted unless scripted otherwise
            default = "serve" if pod["spec"].get("restartPolicy") == "Always" else "succeed"
            script = self.queue.popleft() if self.queue else Script(kind=default)
        cluster = self.cluster
        assert cluster is not None
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        with self.lock:
            self.pods.add(uid)
            self.scripts[uid] = script
        cluster.mutate("pods", ns, name, set_creating)
        self._when_mounted(pod, lambda: self._play(pod, script))

    def _when_mounted(self, pod: dict, then: Any) -> None:
        """`then()` once the pod's Secrets exist (until then it stays ContainerCreating)."""
        cluster = self.cluster
        assert cluster is not None
        if pod["metadata"]["uid"] not in self.pods:
            return
        if secret_volumes(cluster, pod) is None or pod_env(cluster, pod) is None:
            cluster.schedule(0.05, lambda: self._when_mounted(pod, then))
            return
        then()

    def _play(self, pod: dict, script: Script) -> None:
        cluster = self.cluster
        assert cluster is not None
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]

        def step(delay: float, change: Any, logs: bytes = b"") -> None:
            def apply() -> None:
                if uid not in self.pods:
                    return
                if logs:
                    cluster.append_log(pod, logs)
                cluster.mutate("pods", ns, name, change)
            cluster.schedule(delay, apply)

        start = script.creating
        kind = script.kind
        if kind == "serve" and self.serve_root and pod["spec"]["containers"][0].get("ports"):
            cluster.schedule(start, lambda: self._serve(pod))
            return
        if kind == "waiting":
            reason = script.reason or "ErrImagePull"
            message = script.message or (f'failed to pull image "{pod["spec"]["containers"][0]}'
                                         f'["image"]": not found')
            step(start, lambda p: set_waiting(p, reason, message))
            return
        step(start, set_running)
        end = start + script.delay
        if kind in ("hang", "serve"):  # running (and Ready) until deleted
            return
        if kind == "succeed" or kind == "fail":
            request = pod_request(pod, cluster) or {"nonce": "none", "event": None}
            ok = kind == "succeed"
            answer = {"ok": ok, "output": (request.get("event") if script.output is None
                                           else script.output) if ok else None,
                      "logs": script.logs, "logs_truncated": False, "exit_code": 0 if ok else
                      script.code, "error_type": "" if ok else script.error_type,
                      "error": "" if ok else script.error, "cpu_seconds": 0.01,
                      "max_rss_bytes": 20 * 1024 * 1024}
            step(end, lambda p: set_terminated(p, answer["exit_code"]),
                 frame(request["nonce"], answer))
        elif kind == "exit":
            step(end, lambda p: set_terminated(p, script.code), script.logs.encode())
        elif kind == "oom":
            step(end, lambda p: set_terminated(p, 137, "OOMKilled"), script.logs.encode())
        elif kind == "crashloop":
            def crash(p: dict) -> None:
                status = p["status"]["containerStatuses"][0]
                status.update(restartCount=3, ready=False, started=False, lastState={
                    "terminated": {"exitCode": 1, "reason": "Error", "startedAt": now(),
                                   "finishedAt": now()}})
                status["state"] = {"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 40s restarting failed container"}}
            step(end, crash, script.logs.encode())
        elif kind == "evict":
            def evict(p: dict) -> None:
                set_terminated(p, 137)
                p["status"].update(phase="Failed", reason="Evicted", message=(
                    script.message or "The node was low on resource: memory. Threshold "
                                      "quantity: 100Mi, available: 50Mi."))
            step(end, evict)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait(timeout=10)


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
          "k": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}


def memory_bytes(quantity: str | None) -> int | None:
    if not quantity:
        return None
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"bad memory quantity {quantity!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class DockerKubelet:
    """Runs each pod's single container on the local Docker engine (SDK only, no CLI).

    A pod whose container declares a port (a warm Deployment's) serves: its pod IP is a loopback
    address of its own, tunnelled to the port inside the container (which has no network: see
    `tests.kube.tunnel`). The pod's command runs unchanged; the kubelet starts the tunnel's agent
    beside it (`docker exec`) and runs the container's httpGet readinessProbe through the
    tunnel, every PROBE_PERIOD seconds until it answers, then marks the pod Ready. It stays
    Ready until its container ends (no probing after that: a busy runner would fail it).
    """

    LABEL = "io.kubefunction.fake-kubelet"
    PROBE_PERIOD = 0.05  # faster than the manifest's periodSeconds: tests wait less

    def __init__(self) -> None:
        import docker

        self.client = docker.from_env(timeout=60)
        self.cluster: Cluster | None = None
        self.containers: dict[str, str] = {}  # pod uid -> container id
        self.tunnels: dict[str, PodTunnel] = {}  # pod uid -> its tunnel (serving pods)
        self.terminating: dict[str, Any] = {}  # pod uid -> done() once its container ended
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.closed = False
        self.marker = secrets.token_hex(6)
        self.folder = Path(tempfile.mkdtemp(prefix="kf-kubelet-"))

    def attach(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def script(self, kind: str = "succeed", **options: Any) -> None:
        raise RuntimeError("the docker kubelet runs real images; it takes no scripts")

    def run(self, pod: dict) -> None:
        self._start(threading.Thread(target=self._run, args=(pod,), daemon=True,
                                     name=f"fake-kubelet-{pod['metadata']['name']}"))

    def _start(self, thread: threading.Thread) -> None:
        """Start `thread` unless the kubelet is closed; `close()` joins the threads it started."""
        with self.lock:
            if self.closed:
                return
            self.threads.append(thread)
        thread.start()

    def forget(self, pod: dict) -> None:
        with self.lock:
            container_id = self.containers.pop(pod["metadata"]["uid"], None)
            tunnel = self.tunnels.pop(pod["metadata"]["uid"], None)
        if tunnel is not None:
            tunnel.close()
        if container_id:
            threading.Thread(target=self._remove, args=(container_id,), daemon=True).start()

    def _remove(self, container_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client.api.remove_container(container_id, force=True)

    def terminate(self, pod: dict, grace: int, done: Any) -> None:
        """What a kubelet does to a deleted pod: SIGTERM to the container's PID 1 (the pod's
        command: no init is added, as with containerd), SIGKILL after `grace` seconds (the
        engine's stop does both), the terminated status, then `done()`."""
        uid = pod["metadata"]["uid"]
        with self.lock:
            container_id = self.containers.get(uid)
            if container_id is not None:
                self.terminating[uid] = done
        if container_id is None:  # not started yet (or already ended): nothing to stop
            assert self.cluster is not None
            self.cluster.schedule(0, done)
            return

        def stop() -> None:
            with contextlib.suppress(Exception):
                self.client.api.stop(container_id, timeout=grace)
        threading.Thread(target=stop, daemon=True, name=f"fake-kubelet-stop-{uid}").start()

    def _ended(self, uid: str) -> None:
        with self.lock:
            done = self.terminating.pop(uid, None)
        if done is not None:
            done()

    def _secret_mounts(self, pod: dict) -> list | None:
        """Bind mounts (read-only) of the pod's Secret volumes, written to a host folder of the
        pod's own; None while a Secret is missing."""
        from docker.types import Mount

        assert self.cluster is not None
        volumes = secret_volumes(self.cluster, pod)
        if volumes is None:
            return None
        mounts = []
        for number, (path, files) in enumerate(sorted(volumes.items())):
            folder = self.folder / "secrets" / pod["metadata"]["uid"] / str(number)
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, data in files.items():
                target = folder / file_name
                target.write_bytes(data)
                target.chmod(0o444)
            folder.chmod(0o555)
            mounts.append(Mount(target=path, source=str(folder), type="bind", read_only=True))
        return mounts

    def _serve(self, pod: dict, container_id: str, tunnel: PodTunnel) -> None:
        """Start the tunnel's agent in the started container, report the pod Running (not
        Ready) on the tunnel's address, and probe its readiness in a thread."""
        from docker.errors import APIError

        cluster = self.cluster
        assert cluster is not None
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            exec_id = self.client.api.exec_create(container_id, agent_command(tunnel.port),
                                                  stdout=False, stderr=False)["Id"]
            self.client.api.exec_start(exec_id, detach=True)
        except APIError:
            return  # the container has already ended: wait() says how

        def running(p: dict) -> None:
            set_running(p, container_id)
            p["status"]["podIP"] = tunnel.address
            p["status"]["podIPs"] = [{"ip": tunnel.address}]
            p["status"]["conditions"] = _conditions(False)
            p["status"]["containerStatuses"][0]["ready"] = False
        cluster.mutate("pods", ns, name, running)
        self._start(threading.Thread(target=self._probe, args=(pod, tunnel), daemon=True,
                                     name=f"fake-kubelet-probe-{name}"))

    def _probe(self, pod: dict, tunnel: PodTunnel) -> None:
        """The readinessProbe (httpGet on the tunnelled port; none: Ready at once)."""
        cluster = self.cluster
        assert cluster is not None
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        readiness = pod["spec"]["containers"][0].get("readinessProbe") or {}
        http_get = readiness.get("httpGet")
        timeout = float(readiness.get("timeoutSeconds") or 1)
        while True:
            with self.lock:
                if self.closed or self.tunnels.get(uid) is not tunnel:
                    return  # the pod or its container is gone
            if http_get is None or probe(tunnel.address, tunnel.port,
                                         http_get.get("path") or "/", timeout):
                break
            time.sleep(self.PROBE_PERIOD)

        def ready(p: dict) -> None:
            status = p["status"]["containerStatuses"][0]
            if p["status"].get("phase") == "Running" and "running" in status["state"]:
                p["status"]["conditions"] = _conditions(True)
                status["ready"] = True
        cluster.mutate("pods", ns, name, ready)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            left = list(self.containers.values())
            self.containers.clear()
            tunnels = list(self.tunnels.values())
            self.tunnels.clear()
            threads = list(self.threads)
        for tunnel in tunnels:
            tunnel.close()
        for container_id in left:
            self._remove(container_id)
        for thread in threads:
            thread.join(timeout=30)
        self.client.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, pod: dict) -> None:
        from docker.errors import APIError, ImageNotFound, NotFound
        from docker.types import Mount

        cluster = self.cluster
        assert cluster is not None
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        api = self.client.api
        cluster.mutate("pods", ns, name, set_creating)
        spec = pod["spec"]
        container = spec["containers"][0]
        image = container["image"]
        try:
            try:
                api.inspect_image(image)
            except ImageNotFound:
                self.client.images.pull(image)
        except (APIError, NotFound) as exc:
            message = f'failed to pull image "{image}": {getattr(exc, "explanation", exc)}'
            cluster.mutate("pods", ns, name, lambda p: set_waiting(p, "ErrImagePull", message))
            return
        security = {**(spec.get("securityContext") or {}),
                    **(container.get("securityContext") or {})}
        limits = (container.get("resources") or {}).get("limits") or {}
        memory = memory_bytes(limits.get("memory"))
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts = {m["mountPath"]: "rw,nosuid,size=64m" for m in container.get("volumeMounts") or []
                  if "emptyDir" in (volumes.get(m["name"]) or {"emptyDir": {}})}
        while True:  # as a kubelet: ContainerCreating until the pod's Secrets exist
            secret_mounts, env = self._secret_mounts(pod), pod_env(cluster, pod)
            if secret_mounts is not None and env is not None:
                break
            current = cluster.find("pods", ns, name)
            if self.closed or current is None or current["metadata"]["uid"] != uid or \
                    current["metadata"].get("deletionTimestamp"):
                return
            time.sleep(0.05)
        user = security.get("runAsUser")
        group = security.get("runAsGroup", user)
        tunnel = None
        if container.get("ports"):  # a serving pod: its port is reached through a tunnel
            try:
                tunnel = PodTunnel(self.folder, int(container["ports"][0]["containerPort"]),
                                   uid=int(user or 0))
            except OSError as exc:
                message = f"cannot set up the pod's network: {exc}"
                cluster.mutate("pods", ns, name,
                               lambda p: set_waiting(p, "CreateContainerError", message))
                return
        try:
            host_config = api.create_host_config(
                network_mode="none", read_only=bool(security.get("readOnlyRootFilesystem")),
                tmpfs=mounts, cap_drop=["ALL"] if "ALL" in (
                    (security.get("capabilities") or {}).get("drop") or []) else None,
                security_opt=["no-new-privileges"] if security.get(
                    "allowPrivilegeEscalation") is False else None,
                mem_limit=memory, memswap_limit=memory,
                mounts=secret_mounts + ([Mount(target=TUNNEL_MOUNT, source=str(tunnel.folder),
                                               type="bind", read_only=True)] if tunnel else []))
            current = cluster.find("pods", ns, name)
            if self.closed or current is None or current["metadata"]["uid"] != uid:
                return  # stopped, or the pod was deleted while its image was pulled
            try:
                created = api.create_container(
                    image, entrypoint=container.get("command"), command=container.get("args"),
                    environment=env, user=f"{user}:{group}" if user is not None else None,
                    working_dir=container.get("workingDir"), host_config=host_config,
                    labels={self.LABEL: self.marker}, detach=True)
            except APIError as exc:
                message = str(getattr(exc, "explanation", exc))
                cluster.mutate("pods", ns, name,
                               lambda p: set_waiting(p, "CreateContainerError", message))
                return
            container_id = created["Id"]
            with self.lock:
                if self.closed:
                    self._remove(container_id)
                    return
                self.containers[uid] = container_id
                if tunnel is not None:
                    self.tunnels[uid] = tunnel
            current = cluster.find("pods", ns, name)
            if current is None or current["metadata"]["uid"] != uid or \
                    current["metadata"].get("deletionTimestamp"):  # deleted meanwhile
                self.forget(pod)
                self._ended(uid)
                return
            try:
                api.start(container_id)
                if tunnel is not None:
                    self._serve(pod, container_id, tunnel)
                else:
                    cluster.mutate("pods", ns, name, lambda p: set_running(p, container_id))
                api.wait(container_id, timeout=None)
                state = api.inspect_container(container_id)["State"]
                logs = api.logs(container_id, stdout=True, stderr=True)
            except (APIError, NotFound, Exception):  # killed (deleted pod) or the engine failed
                self._ended(uid)
                return
            finally:
                with self.lock:
                    self.containers.pop(uid, None)
                    self.tunnels.pop(uid, None)
                self._remove(container_id)
        finally:
            if tunnel is not None:
                tunnel.close()
        cluster.append_log(pod, logs)
        code = int(state.get("ExitCode") or 0)
        reason = "OOMKilled" if state.get("OOMKilled") else ""
        cluster.mutate("pods", ns, name, lambda p: set_terminated(p, code, reason))
        self._ended(uid)
