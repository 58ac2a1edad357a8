"""The `fake_kube` pytest fixture: a fake API server with a scripted (default) or docker kubelet.

    def test_x(fake_kube): ...                                    # scripted kubelet
    @pytest.mark.parametrize("fake_kube", ["docker"], indirect=True)
    def test_y(fake_kube): ...                                    # docker kubelet

Import it where it is needed (`from tests.kube.fixtures import fake_kube`); tests under
tests/kube get it from their conftest.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .kubelets import DockerKubelet, ScriptedKubelet
from .server import FakeKube


@contextlib.contextmanager
def running_fake_kube(directory: Path, kubelet: str = "scripted", **options) -> Iterator[FakeKube]:
    """A started fake API server, stopped (with its kubelet's containers) on exit."""
    before = set(threading.enumerate())
    worker = DockerKubelet() if kubelet == "docker" else ScriptedKubelet()
    fake = FakeKube(worker, directory, **options).start()
    try:
        yield fake
    finally:
        fake.stop()
        for thread in set(threading.enumerate()) - before:
            if thread.name.startswith("fake-"):
                thread.join(timeout=5)


@pytest.fixture
def fake_kube(request, tmp_path) -> Iterator[FakeKube]:
    kubelet = getattr(request, "param", "scripted")
    if kubelet == "docker":
        from tests.docker_engine import engine_problem

        problem = engine_problem()
        if problem:
            pytest.skip(problem)
    with running_fake_kube(tmp_path, kubelet) as fake:
        yield fake
