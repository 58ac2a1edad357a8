"""CI turns skips of the isolation tests into failures (tests/required_skips.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.processes import ROOT

PROBE = '''
import pytest

def test_needs_engine():
    pytest.skip("no Docker engine: run `make services` to enable the Docker tests")

def test_needs_cluster():
    pytest.skip("set KUBEFUNCTION_TEST_KUBECONFIG to run against a real cluster")
'''


def run_probe(tmp_path, require: str) -> subprocess.CompletedProcess:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "KUBEFUNCTION_TEST_REQUIRE_ISOLATION": require}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django",
         "-p", "tests.required_skips", "--rootdir", str(tmp_path), str(probe)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_isolation_skips_fail_when_required(tmp_path):
    result = run_probe(tmp_path, "1")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 skipped" in result.stdout, result.stdout
    assert "may not skip" in result.stdout


def test_isolation_skips_are_skips_otherwise(tmp_path):
    result = run_probe(tmp_path, "")
    assert result.returncode == 0, result.stdout
    assert "2 skipped" in result.stdout, result.stdout
