"""Warm mode's steady state: the informer's watches keep what an invocation needs, so a warm
invocation is one HTTP call to a pod and no API request; and that call is bounded in size and
in time. On the fake API server, whose every request is counted, with the scripted kubelet's
pods running the real runner as local processes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from executions.runtimes.kubernetes import warm as warm_module
from executions.runtimes.kubernetes.informer import SERVICE_LABEL
from executions.runtimes.kubernetes.manifests import warm_name
from executions.runtimes.wire import max_frame_bytes, runner_request
from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture
from tests.test_kubernetes_runtime import (  # noqa: F401 - runtime and warm: fixtures
    context,
    make_spec,
    runtime,
    warm,
)
from tests.waiting import wait_until


@pytest.fixture
def steady(warm, settings, monkeypatch):  # noqa: F811
    """The warm runtime with watches that outlast a test and stamps that wait for `close`."""
    settings.KUBEFUNCTION_KUBE_WATCH_SECONDS = 60
    monkeypatch.setattr(warm_module, "TOUCH_SECONDS", 3600.0)
    return warm


def serve_warm(runtime, spec) -> dict:  # noqa: F811
    """Invoke until warm (the first one scales up from zero); the pod's answer."""
    first = runtime.invoke(spec, {"n": 0}, context(seconds=10))
    assert first.status == "succeeded" and first.cold, first
    second = runtime.invoke(spec, {"n": 1}, context(seconds=10))
    assert second.status == "succeeded" and not second.cold, second
    return second.output


def endpoints(runtime, spec) -> list[tuple[str, str]]:  # noqa: F811
    return runtime.warm.cache.endpoints(warm_name(spec))[1]


def requests_during(fake, action) -> list[tuple[str, str]]:
    """(verb, path) of every request the fake API server received while `action()` ran."""
    before = fake.request_count()
    action()
    with fake.cluster.lock:
        return [(verb, path) for verb, path, _ in fake.cluster.requests[before:]]


def invoke_warm(runtime, spec, times: int = 1) -> list[dict]:  # noqa: F811
    outputs = []
    for n in range(times):
        outcome = runtime.invoke(spec, {"n": n}, context(seconds=10))
        assert outcome.status == "succeeded" and not outcome.cold, outcome
        outputs.append(outcome.output)
    return outputs


def test_steady_state_warm_invocations_make_no_api_request(fake_kube, steady):  # noqa: F811
    spec = make_spec(timeout_seconds=10)
    pid = serve_warm(steady, spec)["pid"]
    outputs = []
    made = requests_during(fake_kube, lambda: outputs.extend(invoke_warm(steady, spec, 30)))
    assert made == []
    assert {o["pid"] for o in outputs} == {pid}  # the same pod served every one
    # the uses were noted, not sent: one patch stamps them all when the runtime closes
    patches = len(fake_kube.requests("patch", f"/deployments/{warm_name(spec)}"))
    steady.close()
    assert len(fake_kube.requests("patch", f"/deployments/{warm_name(spec)}")) == patches + 1


def delete_pod(fake, name: str) -> None:
    fake.cluster.delete("pods", fake.namespace, name, grace=0)


def replaced(fake, runtime, spec, pod: str) -> str:  # noqa: F811
    """Wait for the cache to show the pod that replaced `pod` (and not `pod`); its name."""
    cache = runtime.warm.cache
    assert cache.wait_until(lambda: endpoints(runtime, spec) and pod not in {
        p for _, p in endpoints(runtime, spec)}, timeout=10), endpoints(runtime, spec)
    [(_, new)] = endpoints(runtime, spec)
    return new


def lists(fake) -> tuple[int, int]:
    return (len(fake.requests("list", "/deployments")),
            len(fake.requests("list", "/endpointslices")))


@contextlib.contextmanager
def watches_down(fake):
    """The informer's two watches hung up on, and refused (500) until the block ends; then
    back (after their backoff)."""
    fake.fail("watch", "*", times=1_000_000)
    assert fake.drop_watches() == 2
    try:
        yield
    finally:
        with fake.cluster.lock:
            fake.cluster.faults.clear()
    assert wait_until(lambda: len(fake.server.watching) == 2, 10)


def test_after_410_the_informer_lists_again_and_routes_to_the_new_pod(fake_kube,  # noqa: F811
                                                                      steady):
    spec = make_spec(timeout_seconds=10)
    old_pid = serve_warm(steady, spec)["pid"]
    [(_, old_pod)] = endpoints(steady, spec)
    listed = lists(fake_kube)
    with watches_down(fake_kube):
        delete_pod(fake_kube, old_pod)  # the Deployment replaces it meanwhile
        fake_kube.cluster.compact()  # and the history the watches would resume from is gone
    replaced(fake_kube, steady, spec, old_pod)  # after 410: listed again
    assert lists(fake_kube) == (listed[0] + 1, listed[1] + 1)  # one fresh list each
    outputs = []
    assert requests_during(fake_kube, lambda: outputs.extend(invoke_warm(steady, spec))) == []
    assert outputs[0]["pid"] != old_pid


def test_a_dropped_watch_resumes_from_its_resource_version(fake_kube, steady):  # noqa: F811
    spec = make_spec(timeout_seconds=10)
    old_pid = serve_warm(steady, spec)["pid"]
    [(_, old_pod)] = endpoints(steady, spec)
    listed = lists(fake_kube)
    watches = len(fake_kube.requests("watch", "/endpointslices"))
    with watches_down(fake_kube):
        delete_pod(fake_kube, old_pod)  # while the watches are down
    replaced(fake_kube, steady, spec, old_pod)
    assert lists(fake_kube) == listed  # resumed, not listed again
    resumed = fake_kube.requests("watch", "/endpointslices")[watches:]
    assert resumed and all(int(q["resourceVersion"]) > 0 and
                           q["allowWatchBookmarks"].lower() == "true" for q in resumed)
    outputs = []
    assert requests_during(fake_kube, lambda: outputs.extend(invoke_warm(steady, spec))) == []
    assert outputs[0]["pid"] != old_pid


def test_bookmarks_move_where_a_watch_resumes(fake_kube, steady):  # noqa: F811
    spec = make_spec(timeout_seconds=10)
    serve_warm(steady, spec)
    fake_kube.cluster.bookmark_seconds = 0.1
    fake_kube.drop_watches()  # the new watches get the short bookmark period
    for n in range(3):  # changes no watch of the informer selects
        fake_kube.cluster.create("secrets", fake_kube.namespace, {"metadata": {"name": f"s{n}"}})
    cache = steady.warm.cache
    latest = str(fake_kube.cluster.rv)
    assert cache.wait_until(lambda: cache.slices.rv == latest == cache.deployments.rv, 5)
    listed = lists(fake_kube)
    fake_kube.cluster.compact()  # everything before now is forgotten, the bookmarks' point kept
    fake_kube.drop_watches()
    watches = len(fake_kube.requests("watch"))
    assert wait_until(lambda: len(fake_kube.requests("watch")) >= watches + 2)
    time.sleep(0.3)  # a 410 would have been answered by a list by now
    assert lists(fake_kube) == listed
    assert requests_during(fake_kube, lambda: invoke_warm(steady, spec)) == []


@contextlib.contextmanager
def listener(address: str, port: int, serve=None):
    """A TCP server on `address:port`; yields the list of connections it accepted. `serve`
    (connection) answers each, else it is closed at once."""
    server = socket.create_server((address, port))
    server.settimeout(0.05)
    accepted: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            if serve is None:
                conn.close()
            else:
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_scaled_down_or_replaced_pod_is_not_called_once_its_endpoint_went(
        fake_kube, steady, settings):  # noqa: F811
    settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS = 2  # two pods from the start
    spec = make_spec(timeout_seconds=10)
    name = warm_name(spec)
    steady.invoke(spec, {}, context(seconds=10))
    cache = steady.warm.cache
    assert cache.wait_until(lambda: len(endpoints(steady, spec)) == 2, timeout=10)
    before = {address for address, _ in endpoints(steady, spec)}
    settings.KUBEFUNCTION_KUBE_WARM_MIN_REPLICAS = 1
    fake_kube.cluster.patch("deployments", fake_kube.namespace, name, {"spec": {"replicas": 1}})
    assert cache.wait_until(lambda: len(endpoints(steady, spec)) == 1, timeout=10)
    [(kept, kept_pod)] = endpoints(steady, spec)
    delete_pod(fake_kube, kept_pod)  # and the one left is replaced
    replaced(fake_kube, steady, spec, kept_pod)
    gone = before  # the scaled-down pod's address and the replaced one's
    assert fake_kube.wait_for(lambda: not any(
        p["status"].get("podIP") in gone for p in fake_kube.objects("pods")), timeout=10)
    port = settings.KUBEFUNCTION_KUBE_WARM_PORT
    with contextlib.ExitStack() as stack:  # what would answer a call there now: ours
        calls = [stack.enter_context(listener(address, port)) for address in gone]
        assert requests_during(fake_kube, lambda: invoke_warm(steady, spec, 5)) == []
    assert calls == [[], []]  # nothing tried where a pod used to be


def test_an_endpoint_refusing_connections_does_not_fail_the_invocation(fake_kube,  # noqa: F811
                                                                       steady):
    spec = make_spec(timeout_seconds=10)
    name = warm_name(spec)
    serve_warm(steady, spec)
    # The cluster says ready, nothing listens there (a pod gone, its endpoint not updated yet)
    fake_kube.cluster.create("endpointslices", fake_kube.namespace, {
        "metadata": {"name": f"{name}-stale", "labels": {SERVICE_LABEL: name}},
        "addressType": "IPv4", "endpoints": [{
            "addresses": ["127.20.250.250"], "conditions": {"ready": True},
            "targetRef": {"kind": "Pod", "name": "gone", "namespace": fake_kube.namespace}}]})
    cache = steady.warm.cache
    assert cache.wait_until(lambda: len(endpoints(steady, spec)) == 2, timeout=5)
    for _ in range(60):  # picked at random: until it has been tried
        if len(endpoints(steady, spec)) == 1:
            break
        assert invoke_warm(steady, spec)
    assert [a for a, _ in endpoints(steady, spec)] != ["127.20.250.250"]
    assert len(endpoints(steady, spec)) == 1  # dropped from the cache once it refused
    assert requests_during(fake_kube, lambda: invoke_warm(steady, spec, 5)) == []


def test_a_stale_cache_falls_back_to_one_fresh_list(fake_kube, steady):  # noqa: F811
    spec = make_spec(timeout_seconds=10)
    old_pid = serve_warm(steady, spec)["pid"]
    [(_, old_pod)] = endpoints(steady, spec)
    with watches_down(fake_kube):  # the cache cannot hear of what follows
        delete_pod(fake_kube, old_pod)  # its runner is killed: its address refuses connections
        assert fake_kube.wait_for(lambda: any(  # the replacement is ready in the cluster
            e["conditions"]["ready"] and e["targetRef"]["name"] != old_pod
            for s in fake_kube.objects("endpointslices") for e in s["endpoints"]), timeout=10)
        assert [p for _, p in endpoints(steady, spec)] == [old_pod]  # not in the cache
        outputs = []
        made = requests_during(fake_kube, lambda: outputs.extend(invoke_warm(steady, spec)))
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{fake_kube.namespace}/endpointslices"
    assert [r for r in made if r[0] != "watch"] == [("list", slices)]
    assert outputs[0]["pid"] != old_pid


# --- the pod's answer, bounded -------------------------------------------------------------


def pod_call(runtime, settings, serve, seconds: float = 1.0):  # noqa: F811
    """The runtime's call to a warm pod whose server is `serve(connection)`; (outcome or the
    exception raised, seconds it took)."""
    spec = make_spec(timeout_seconds=seconds)
    ctx = context(seconds=seconds)
    request, nonce = runner_request(spec, {}, ctx)
    address = "127.20.250.251"
    with listener(address, settings.KUBEFUNCTION_KUBE_WARM_PORT, serve):
        started = time.monotonic()
        try:
            result = runtime.warm._call(spec, (address, "no-such-pod"), request, nonce, ctx,
                                        cold=False)
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            result = exc
        return result, time.monotonic() - started


def read_request(conn) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)


def test_a_pod_trickling_its_answer_is_timed_out_at_the_deadline(fake_kube, steady,  # noqa: F811
                                                                 settings):
    def trickle(conn):
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
            end = time.monotonic() + 6
            with contextlib.suppress(OSError):
                while time.monotonic() < end:  # a byte at a time, each well within the timeout
                    conn.sendall(b"x")
                    time.sleep(0.1)

    outcome, seconds = pod_call(steady, settings, trickle, seconds=1.0)
    assert getattr(outcome, "status", outcome) == "timed_out", outcome
    assert seconds < 2.0  # the deadline bounds the whole answer, not each read


def test_an_answer_larger_than_any_frame_is_not_read_whole(fake_kube, steady,  # noqa: F811
                                                           settings):
    settings.KUBEFUNCTION_MAX_OUTPUT_BYTES = 1000
    settings.KUBEFUNCTION_MAX_LOG_BYTES = 1000
    limit = 2 * max_frame_bytes()

    def flood(conn, length: bool):
        with conn:
            read_request(conn)
            head = f"Content-Length: {limit + 1}\r\n" if length else ""
            conn.sendall(f"HTTP/1.0 200 OK\r\n{head}\r\n".encode())
            with contextlib.suppress(OSError):
                for _ in range(4 * limit // 65536):
                    conn.sendall(b"x" * 65536)

    for length in (True, False):  # declared too long, or streamed on and on
        outcome, _ = pod_call(steady, settings, lambda conn, length=length: flood(conn, length),
                              seconds=10)
        assert (getattr(outcome, "status", outcome), getattr(outcome, "error_type", "")) == (
            "failed", "ProtocolError"), outcome
        assert f"at most {limit}" in outcome.error


def test_a_forked_child_starts_watches_of_its_own(fake_kube, steady):  # noqa: F811
    """Celery's prefork pool: a child inherits no watch, thread or cached object of its parent;
    it lists and watches for itself, and the parent's watches go on serving the parent."""
    import multiprocessing

    spec = make_spec(timeout_seconds=10)
    pid = serve_warm(steady, spec)["pid"]
    deployments = steady.warm

    def watching() -> int:
        return sum(t.name.startswith("kubefunction-watch-") for t in threading.enumerate())

    def child(answers):
        try:
            inherited = (deployments.cache.version, len(deployments.cache.all_deployments()),
                         watching(), dict(deployments.upkeep.pending),
                         dict(deployments.inflight))
            outcome = steady.invoke(spec, {"n": 9}, context(seconds=10))
            answers.put((inherited, outcome.status, outcome.output["pid"], watching()))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answers.put(repr(exc))

    assert watching() == 2
    fork = multiprocessing.get_context("fork")
    answers = fork.Queue()
    watches = len(fake_kube.requests("watch"))
    process = fork.Process(target=child, args=(answers,))
    process.start()
    answer = answers.get(timeout=30)
    process.join(timeout=10)
    assert answer == ((0, 0, 0, {}, {}), "succeeded", pid, 2)
    assert len(fake_kube.requests("watch")) >= watches + 2  # the child's own two
    assert requests_during(fake_kube, lambda: invoke_warm(steady, spec)) == []
