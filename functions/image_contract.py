"""The contract between a function's container image and the runtimes that run it.

`functions.images` builds every image to this layout (templates/functions/Dockerfile): the
runner at RUNNER, the function's source in SOURCE_DIR (the working directory), its requirements
installed in DEPS_DIR, and the unprivileged user FUNCTION_UID. The docker runtime's containers
and the kubernetes runtime's pods run it as that user with the command `runner_command` makes.
"""

from __future__ import annotations

from .specs import FunctionSpec

FUNCTION_UID = 10001
FUNCTION_USER = f"{FUNCTION_UID}:{FUNCTION_UID}"
RUNNER = "/opt/kubefunction/runner.py"
CONVENTIONS = "/opt/kubefunction/conventions"  # functions/conventions, loaded by the runner
SOURCE_DIR = "/opt/kubefunction/src"
DEPS_DIR = "/opt/kubefunction/deps"


def runner_command(spec: FunctionSpec, *mode: str) -> list[str]:
    """The image's whole command: the runner for `spec`, in `mode` (e.g. "--socket", PATH)."""
    return ["python3", "-I", "-S", RUNNER, "--root", SOURCE_DIR, "--path", DEPS_DIR,
            "--handler", spec.handler, "--mode", spec.mode, *convention_args(spec), *mode]


def convention_args(spec: FunctionSpec) -> list[str]:
    """The runner's `--convention` option, none for the default convention."""
    return ["--convention", spec.convention] if spec.convention else []
