"""A version's requirements: checked at upload, fetched as wheels, installed with no index.

A user's `requirements.txt` is data, never pip input as written: `check_requirements` accepts only
named requirements (a name, extras, a version specifier, a marker) and refuses anything pip would
follow elsewhere — `-r`/`-c` (files or URLs the worker can read, echoed into the build log), `-e`,
`--index-url` and every other option, paths, URLs and `name @ url`. pip then gets a file written
by us from the parsed requirements.

Fetching runs pip on the worker host, so it must never run a package's code: `pip download
--only-binary=:all:` resolves and saves wheels only (pip's resolver reads a wheel's metadata from
the wheel itself and, with that option, never considers an sdist, so no `setup.py` or build
backend runs), with `--isolated` (no user or site pip configuration, no PIP_* variables) and the
index from the operator's settings only. Installing is `pip install --no-index --find-links
<wheelhouse>`: no network, and installing a wheel only copies files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from .artifacts import SourceRejected
from .build_logs import cap_log

MAX_REQUIREMENTS = 500
MAX_LINE_CHARS = 1000
# pip's own comment rule: '#' at the start of a line or after whitespace.
COMMENT = re.compile(r"(^|\s+)#.*$")
# Names pip would take for a local file rather than a project on the index.
FILE_LIKE = re.compile(r"\.(whl|zip|tar|tgz|tar\.gz|tar\.bz2|tbz|tar\.xz|txz|tar\.lz|tlz)$", re.I)
# What pip may need from the worker's environment to reach the operator's index.
NETWORK_PASSTHROUGH = re.compile(
    r"^((?i:https?_proxy|no_proxy|all_proxy)|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE)$")
NO_WHEEL = re.compile(r"No matching distribution found for (\S+)")
WHEELS_ONLY = ("builds use wheels only and never build source distributions, so a package "
               "published only as an sdist (or with no wheel for {target}) cannot be used: pick "
               "a version or a package that has a wheel")


def _refuse(number: int, raw: str, why: str) -> SourceRejected:
    shown = raw.strip()
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    return SourceRejected(f"requirements.txt line {number} ({shown!r}): {why}")


def check_requirements(text: str) -> list[Requirement]:
    """The named requirements of a requirements.txt, or `SourceRejected` naming the first bad
    line (its number and text)."""
    found: list[Requirement] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = COMMENT.sub("", raw).strip()
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise _refuse(number, raw, f"longer than {MAX_LINE_CHARS} characters.")
        if line.endswith("\\"):
            raise _refuse(number, raw, "line continuations are not supported: one requirement "
                                       "per line.")
        if line.startswith("-"):
            raise _refuse(number, raw, "pip options (-r, -c, -e, --index-url, ...) are not "
                                       "allowed: list named requirements only, like "
                                       "'requests==2.32.3'; the package index is the operator's.")
        if "$" in line:
            raise _refuse(number, raw, "environment variables are not expanded here.")
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise _refuse(number, raw, "not a named requirement (a project name with optional "
                                       "extras, version and marker, like 'requests>=2.31'); "
                                       "paths, URLs and VCS links are not allowed.") from None
        if requirement.url:
            raise _refuse(number, raw, "'name @ url' requirements are not allowed: name the "
                                       "project and a version on the package index.")
        if FILE_LIKE.search(requirement.name):
            raise _refuse(number, raw, "this names a file, not a project: paths are not "
                                       "allowed.")
        found.append(requirement)
        if len(found) > MAX_REQUIREMENTS:
            raise _refuse(number, raw, f"more than {MAX_REQUIREMENTS} requirements.")
    return found


def pip_requirements_file(text: str, path: Path) -> None:
    """Write what pip reads: our rendering of the checked requirements, never the user's text."""
    lines = [str(requirement) for requirement in check_requirements(text)]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@dataclass(frozen=True)
class Target:
    """The interpreter wheels are chosen for, when it is not the one running pip (an image)."""

    python_version: str  # "3.11"
    glibc_version: str  # "2.36"
    machine: str  # "x86_64", "aarch64"

    def platforms(self) -> list[str]:
        major, minor = (int(part) for part in self.glibc_version.split(".")[:2])
        # pip does not widen a manylinux_2_N tag to the older ones a system with glibc 2.N runs.
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        tags += [f"manylinux2014_{self.machine}"]
        if self.machine in ("x86_64", "i686"):
            tags += [f"manylinux2010_{self.machine}", f"manylinux1_{self.machine}"]
        return tags

    def pip_args(self) -> list[str]:
        args = ["--python-version", self.python_version, "--implementation", "cp"]
        for tag in self.platforms():
            args += ["--platform", tag]
        return args

    def describe(self) -> str:
        return f"Python {self.python_version} on glibc {self.glibc_version} {self.machine}"


@dataclass(frozen=True)
class PipResult:
    ok: bool
    log: str
    wheels: tuple[str, ...] = ()  # file names in the wheelhouse


def installed_list(wheels: tuple[str, ...] | list[str]) -> str:
    """name==version lines of the wheels a build installed, sorted."""
    lines = set()
    for wheel in wheels:
        try:
            name, version, _, _ = parse_wheel_filename(wheel)
        except InvalidWheelFilename:
            continue
        lines.add(f"{name}=={version}")
    return "\n".join(sorted(lines))


def _index_args() -> list[str]:
    args = ["--index-url", settings.KUBEFUNCTION_PIP_INDEX_URL]
    for url in settings.KUBEFUNCTION_PIP_EXTRA_INDEX_URLS:
        args += ["--extra-index-url", url]
    return args


def _run_pip(args: list[str], *, workdir: Path, deadline: float) -> tuple[bool, str]:
    """Run `python -m pip <args>` isolated from the worker's environment and pip configuration,
    killed (with anything it started) at `deadline` (time.monotonic())."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    cwd = Path(tempfile.mkdtemp(prefix="cwd-", dir=workdir))  # empty: no local dir to pick up
    env = {key: value for key, value in os.environ.items() if NETWORK_PASSTHROUGH.match(key)}
    env.update(PATH=os.environ.get("PATH", os.defpath), LANG="C.UTF-8", HOME=str(home),
               PYTHONIOENCODING="utf-8", PYTHONNOUSERSITE="1")
    argv = [sys.executable, "-m", "pip", *args[:1], "--isolated", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", *args[1:]]
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        return False, build_timeout_message()
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=cwd, env=env,
                          start_new_session=True) as pip:
        try:
            output, _ = pip.communicate(timeout=timeout)
            failure = f"pip exited with code {pip.returncode}" if pip.returncode else ""
        except subprocess.TimeoutExpired:
            os.killpg(pip.pid, signal.SIGKILL)
            output, _ = pip.communicate()
            failure = build_timeout_message()
    log = cap_log(output.decode("utf-8", "replace"))
    return not failure, f"{log}\n{failure}".rstrip() if failure else log


def build_timeout_message() -> str:
    return (f"the build did not finish within {settings.KUBEFUNCTION_BUILD_TIMEOUT_SECONDS} s "
            "(KUBEFUNCTION_BUILD_TIMEOUT_SECONDS) and was stopped")


def build_deadline() -> float:
    return time.monotonic() + settings.KUBEFUNCTION_BUILD_TIMEOUT_SECONDS


def fetch_wheels(*, requirements: str, wheelhouse: Path, workdir: Path,
                 target: Target | None = None, deadline: float | None = None) -> PipResult:
    """Resolve the requirements and save their wheels (dependencies included) in `wheelhouse`,
    running no package code. `target`: the interpreter they are for, if not this one."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    requirements_file = workdir / "requirements.txt"
    try:
        pip_requirements_file(requirements, requirements_file)
    except SourceRejected as exc:  # a version stored before uploads were checked
        return PipResult(ok=False, log=f"refused before pip ran: {exc}")
    if not requirements_file.read_text(encoding="utf-8"):
        return PipResult(ok=True, log="requirements.txt names no package: nothing to fetch")
    ok, log = _run_pip(
        ["download", "--only-binary=:all:", "--dest", str(wheelhouse),
         "--cache-dir", str(Path(settings.KUBEFUNCTION_WORK_DIR) / "pip-cache"),
         *_index_args(), *(target.pip_args() if target else []), "-r", str(requirements_file)],
        workdir=workdir, deadline=deadline or build_deadline())
    if not ok:
        missing = NO_WHEEL.search(log)
        if missing:
            where = target.describe() if target else "this worker's Python"
            log += (f"\nno wheel of '{missing.group(1)}' was found on "
                    f"{settings.KUBEFUNCTION_PIP_INDEX_URL}: {WHEELS_ONLY.format(target=where)}.")
        return PipResult(ok=False, log=log)
    wheels = tuple(sorted(p.name for p in wheelhouse.iterdir() if p.suffix == ".whl"))
    return PipResult(ok=True, log=log, wheels=wheels)


def install_for_local(*, requirements: str, staging: Path) -> tuple[bool, str]:
    """For the local runtime: fetch the wheels into staging/wheels, then install them into
    staging/target with no index (so no network and no setup.py). Returns (ok, log)."""
    deadline = build_deadline()
    fetched = fetch_wheels(requirements=requirements, wheelhouse=staging / "wheels",
                           workdir=staging, deadline=deadline)
    if not fetched.ok:
        return False, fetched.log
    if not fetched.wheels:  # only comments: nothing to install
        return True, fetched.log
    ok, log = _run_pip(
        ["install", "--no-index", "--find-links", str(staging / "wheels"), "--only-binary=:all:",
         "--no-cache-dir", "--target", str(staging / "target"),
         "-r", str(staging / "requirements.txt")],
        workdir=staging, deadline=deadline)
    return ok, cap_log(f"{fetched.log}\n{log}")
