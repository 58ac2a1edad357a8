"""The local runtime's OS sandbox: the bubblewrap command line of a runner, and the probe that
says whether this host can have one.

The sandbox's root is an empty tmpfs holding only what `_allowed_mounts` lists, all read-only:
/usr (and the merged-/usr symlinks), the interpreter's prefix, a few certificate/time-zone files
of /etc, the runner module, the version's code and its dependencies. /proc is the sandbox's own
(a new PID namespace: the worker is not visible), /dev a minimal one, /tmp a private
size-limited tmpfs that is also HOME. The network namespace is always new and empty (loopback
only): this runtime gives no function a network, whatever it asks for. bubblewrap's options
travel in a memfd (`--args`), the function's environment in another one the box reads first.

The uid as the host sees it: bubblewrap started by root without a user namespace does not change
uid (`--uid` only maps inside a user namespace). So a worker running as root starts bubblewrap
privileged, with CAP_SETUID/CAP_SETGID/CAP_SETPCAP kept for `setpriv` (under the read-only /usr,
with an empty environment), which drops to KUBEFUNCTION_SANDBOX_UID/GID, clears every
capability and the bounding set, and execs the interpreter; bubblewrap already set
no_new_privs. A worker that is not root cannot change uid: it uses an unprivileged user
namespace, and the host sees the worker's own uid (doctor says so).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

SANDBOXED = "sandboxed"
UNSANDBOXED_TRUSTED = "unsandboxed-trusted"
REFUSING = "refusing"

CODE_DIR = "/function/code"
DEPS_DIR = "/function/deps"
RUNNER = "/function/runner.py"
HOME = "/tmp"
PROBE_TIMEOUT = 15.0
# Files of the host's /etc a runner may need (certificates for TLS, the time zone); nothing
# else of /etc (no passwd, no hosts of the platform, no credentials).
ETC_ALLOWED = ("/etc/ssl/certs", "/etc/ca-certificates", "/etc/localtime")
# Runs first in the box, as the sandbox uid: the function's environment is applied only here, so
# nothing it sets (LD_PRELOAD, locale paths, …) reaches bubblewrap or setpriv while they hold
# privileges, and it never appears on a command line other users of the host can read.
# It reads the environment ("KEY=VALUE\0"…) from an inherited memfd ({env}), closes every
# descriptor past stdio (bubblewrap's options included), then runs the runner as `python
# runner.py` would, in this same __main__: no module imported that the runner does not need.
BOOTSTRAP = (
    "import os, sys\n"
    "with open({env}, 'rb') as _f:\n"
    "    _env = _f.read()\n"
    "os.environ.clear()\n"
    "_item = _key = _value = b''\n"
    "for _item in filter(None, _env.split(b'\\0')):\n"
    "    _key, _, _value = _item.partition(b'=')\n"
    "    os.environb[_key] = _value\n"
    "os.closerange(3, 1 << 16)\n"
    f"sys.argv[0] = __file__ = {RUNNER!r}\n"
    f"with open({RUNNER!r}, 'rb') as _f:\n"
    f"    _code = compile(_f.read(), {RUNNER!r}, 'exec')\n"
    "del _f, _env, _item, _key, _value\n"
    "exec(_code)\n"
)
FIX = ("install bubblewrap (apt-get install bubblewrap, or scripts/sandbox.sh), or on a trusted "
       "single-user machine set KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED=true")


@dataclass(frozen=True)
class Sandbox:
    """How runners are boxed on this host; built from settings by `configured()`."""

    bwrap: str
    uid: int
    gid: int
    tmp_bytes: int
    version: str
    sized_tmp: bool  # it sizes a tmpfs itself (`--size`: bubblewrap ≥ 0.9, some builds before)
    writable: tuple[str, ...] = ()  # KUBEFUNCTION_SANDBOX_WRITABLE_DIRS, checked

    @property
    def privileged(self) -> bool:
        """Root starts bubblewrap without a user namespace and really drops to `uid`."""
        return os.geteuid() == 0

    def command(self, *, python: str, python_flags: tuple[str, ...], runner: str, code: Path,
                deps: list[Path], runner_args: list[str], env: dict[str, str],
                ) -> tuple[list[str], dict[str, bytes]]:
        """(argv, {"args": bubblewrap's options, "env": the runner's environment}) of one boxed
        runner; `materialize` puts them in memfds and their numbers in place."""
        args = ["--die-with-parent", "--new-session", "--clearenv"]
        if self.privileged:
            # No user namespace: it would only map uid 0, so the drop below could not happen.
            args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            args += ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
                     "--unshare-cgroup-try", "--uid", str(self.uid), "--gid", str(self.gid)]
        # Always a new, empty network namespace: a function that opted into the network does
        # not get one from this runtime (see docs/security.md).
        args.append("--unshare-net")
        made: set[str] = {"/", "/usr", HOME}
        args += _allowed_mounts(python, code, deps, made)
        args += ["--ro-bind", runner, RUNNER, "--dir", HOME]
        if self.sized_tmp:
            args += ["--perms", "1777", "--size", str(self.tmp_bytes)]
        args += ["--tmpfs", HOME]
        # After the private /tmp, which would otherwise hide a folder under /tmp; a bind is its
        # own mount, so the read-only remount of / below leaves it writable.
        for path in self.writable:
            args += [*_parents(path, made), "--bind", path, path]
        args += ["--remount-ro", "/", "--chdir", CODE_DIR]
        command = [python, *python_flags, "-c", BOOTSTRAP, *runner_args]
        if self.privileged:
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                     "--cap-add", "CAP_SETPCAP"]
            command = ["/usr/bin/setpriv", "--reuid", str(self.uid), "--regid", str(self.gid),
                       "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--",
                       *command]
        data = {"args": b"".join(arg.encode() + b"\0" for arg in args),
                "env": b"".join(f"{key}={value}".encode("utf-8", "surrogateescape") + b"\0"
                                for key, value in env.items())}
        # The command itself stays on the command line: bubblewrap reads only options from FD.
        return [self.bwrap, "--args", "{args}", "--", *command], data


def materialize(argv: list[str], data: dict[str, bytes]) -> tuple[list[str], list[int]]:
    """The argv of `Sandbox.command` with its memfds open: (argv, fds to pass and then close)."""
    fds: list[int] = []
    try:
        env = _memfd("env", data["env"])
        fds.append(env)
        options = _memfd("args", data["args"])
        fds.append(options)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return [part.replace("{args}", str(options)).replace("{env}", str(env))
            for part in argv], fds


def _memfd(name: str, content: bytes) -> int:
    fd = os.memfd_create(f"kubefunction-{name}")
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _allowed_mounts(python: str, code: Path, deps: list[Path], made: set[str]) -> list[str]:
    """The allow-list the sandbox's root is built from: read-only binds, nothing else."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    binds = [prefix for prefix in sorted({sys.base_prefix, sys.base_exec_prefix})
             if not _under(prefix, "/usr")]
    if not any(_under(python, prefix) for prefix in ("/usr", *binds)):
        binds.append(python)
    for path in binds:
        args += [*_parents(path, made), "--ro-bind", path, path]
    for path in ETC_ALLOWED:
        if os.path.exists(path):
            args += [*_parents(path, made), "--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", *_parents(f"{DEPS_DIR}/0", made),
             "--ro-bind", str(code), CODE_DIR]
    for index, path in enumerate(deps):
        args += ["--ro-bind", str(path), f"{DEPS_DIR}/{index}"]
    return args


def _parents(path: str, made: set[str]) -> list[str]:
    """Folders leading to a bind, made 0755: bubblewrap would make them 0700 (root's), which
    the sandbox uid could not enter (e.g. /root, parent of a pyenv interpreter)."""
    args = []
    for parent in reversed(Path(path).parents):
        if str(parent) not in made:
            made.add(str(parent))
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def interpreter() -> str:
    """The real interpreter behind the worker's (a virtualenv's python is a symlink to it);
    with -I -S the runner needs nothing of the virtualenv."""
    return os.path.realpath(sys.executable)


def sandbox_paths(deps: list[Path]) -> tuple[str, list[str]]:
    """Where the code and dependency folders appear inside the sandbox."""
    return CODE_DIR, [f"{DEPS_DIR}/{index}" for index in range(len(deps))]


def configured() -> Sandbox | None:
    """The sandbox settings ask for, or None when the bwrap binary is missing."""
    bwrap = settings.KUBEFUNCTION_SANDBOX_BWRAP
    if not (os.path.isfile(bwrap) and os.access(bwrap, os.X_OK)):
        return None
    return Sandbox(bwrap=bwrap, uid=settings.KUBEFUNCTION_SANDBOX_UID,
                   gid=settings.KUBEFUNCTION_SANDBOX_GID,
                   tmp_bytes=settings.KUBEFUNCTION_SANDBOX_TMP_MB * 1024 * 1024,
                   writable=tuple(os.path.realpath(path) for path
                                  in settings.KUBEFUNCTION_SANDBOX_WRITABLE_DIRS),
                   **_features(bwrap))


# Folders a writable bind may neither be nor hold: the host's system and the platform's state.
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64",
               "/libx32", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp",
               "/usr", "/var")
# Folders a writable bind may not lie inside either (/tmp and /home may hold a scratch folder).
CLOSED_TREES = ("/boot", "/dev", "/etc", "/proc", "/root", "/run", "/sys", "/usr", "/var",
                "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def writable_problem(paths: list[str]) -> str | None:
    """Why KUBEFUNCTION_SANDBOX_WRITABLE_DIRS cannot be bound read-write into every box, or None.

    A writable bind is shared by every function of every user, so it must be a scratch folder
    of its own: never the repository, the work dir (other users' sources), `var/`, the
    interpreter, a system folder, nor anything holding one of them."""
    platform = [os.path.realpath(path) for path in (
        settings.BASE_DIR, settings.KUBEFUNCTION_WORK_DIR, getattr(settings, "VAR_DIR", ""),
        sys.base_prefix, sys.base_exec_prefix) if str(path)]
    for path in paths:
        if not os.path.isabs(path):
            return f"KUBEFUNCTION_SANDBOX_WRITABLE_DIRS: {path!r} is not an absolute path"
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            return f"KUBEFUNCTION_SANDBOX_WRITABLE_DIRS: {path!r} is not a folder"
        for guarded in (*platform, *SYSTEM_DIRS):
            if _under(guarded, real):
                return (f"KUBEFUNCTION_SANDBOX_WRITABLE_DIRS: {path!r} is or holds {guarded}, "
                        "a platform or system folder")
        for guarded in (*platform, *CLOSED_TREES):
            if _under(real, guarded):
                return (f"KUBEFUNCTION_SANDBOX_WRITABLE_DIRS: {path!r} lies inside {guarded}, "
                        "a platform or system folder")
    return None


@functools.lru_cache(maxsize=8)
def _features(bwrap: str) -> dict:
    """Its version, and whether it has `--size` (Debian's 0.8.0 has it, upstream's since 0.9)."""
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                                 timeout=PROBE_TIMEOUT, check=False).stdout.strip()
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return {"version": "", "sized_tmp": False}
    return {"version": version.removeprefix("bubblewrap ") or "?",
            "sized_tmp": "--size" in usage.stdout + usage.stderr}


@functools.lru_cache(maxsize=8)
def probe(sandbox: Sandbox) -> tuple[bool, str]:
    """Start a real boxed interpreter once (per worker process and configuration) and check
    that it runs with the sandbox's uid, no capabilities and no view of the host's processes."""
    script = ("import os\n"
              "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
              "print(os.getuid(), caps[0], len([p for p in os.listdir('/proc') if p.isdigit()]),\n"
              "      os.environ.get('PROBE'))\n")
    with tempfile.NamedTemporaryFile("w", suffix=".py") as probe_runner:
        probe_runner.write(script)
        probe_runner.flush()
        os.chmod(probe_runner.name, 0o644)
        argv, data = sandbox.command(python=interpreter(), python_flags=("-I", "-S"),
                                     runner=probe_runner.name, code=Path("/usr"), deps=[],
                                     runner_args=[], env={"PROBE": "1"})
        argv, fds = materialize(argv, data)
        try:
            done = subprocess.run(argv, pass_fds=fds,
                                  capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                                  check=False, env={})
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"{sandbox.bwrap} could not start: {exc}"
        finally:
            for fd in fds:
                os.close(fd)
    if done.returncode != 0:
        return False, (f"{sandbox.bwrap} failed (exit {done.returncode}): "
                       f"{done.stderr.strip()[-500:]}")
    uid, caps, processes, env = (done.stdout.split() + ["", "", "", ""])[:4]
    if (uid, env) != (str(sandbox.uid), "1") or int(caps or "1", 16) != 0 \
            or processes not in ("1", "2"):
        return False, f"{sandbox.bwrap} ran but the box leaks: {done.stdout.strip()!r}"
    return True, f"bubblewrap {sandbox.version} at {sandbox.bwrap}"


def state() -> tuple[str, str, Sandbox | None]:
    """(mode, human-readable detail, the sandbox when the mode is `sandboxed`)."""
    sandbox = configured()
    problem = writable_problem(settings.KUBEFUNCTION_SANDBOX_WRITABLE_DIRS)
    if sandbox is None:
        why = f"bubblewrap not found at {settings.KUBEFUNCTION_SANDBOX_BWRAP}"
    elif problem:
        why = problem
    else:
        ok, why = probe(sandbox)
        if ok:
            uid = (f"uid {sandbox.uid}" if sandbox.privileged
                   else f"the worker's uid {os.geteuid()} (not root: a user namespace only)")
            tmp = (f"/tmp {sandbox.tmp_bytes // (1024 * 1024)} MiB"
                   if sandbox.privileged or sandbox.sized_tmp
                   else "/tmp unsized (bubblewrap < 0.9 without root)")
            shared = (f"; read-write {', '.join(sandbox.writable)}" if sandbox.writable
                      else "")
            return SANDBOXED, f"{SANDBOXED} ({why}; {uid}; {tmp}; no network{shared})", sandbox
    if settings.KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED:
        return UNSANDBOXED_TRUSTED, (f"{UNSANDBOXED_TRUSTED}: {why}; every function runs as the "
                                     "worker's user (KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED)"), None
    return REFUSING, (f"{REFUSING}: {why}; only staff users' functions run (unsandboxed). "
                      f"Fix: {FIX}"), None

