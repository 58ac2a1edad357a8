from tests.kube.fixtures import fake_kube  # noqa: F401 - the fixture for tests/kube
