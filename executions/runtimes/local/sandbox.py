"""The local runtime's OS sandbox: the bubblewrap command line of a runner, and the probe that
says whether this host can have one.

The sandbox's root is an empty tmpfs holding only what `_allowed_mounts` lists, all read-only:
/usr (and the merged-/usr symlinks), the interpreter's prefix, a few certificate/time-zone files
of /etc, the runner module, the version's code and its dependencies. /proc is the sandbox's own
(a new PID namespace: the worker is not visible), /dev a minimal one, /tmp a private
size-limited tmpfs that is also HOME. The network namespace is always new: empty (loopback
only), or, for a function that asks for network where the operator allows it
(KUBEFUNCTION_LOCAL_ALLOW_NETWORK), given a user-mode NAT by slirp4netns (`Network`), whose
namespace's firewall rejects the host's own and every private address. bubblewrap's options
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
import json
import os
import select
import socket
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
CONVENTIONS = "/function/conventions"  # functions/conventions, which the runner loads by path
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
SLIRP4NETNS = "/usr/bin/slirp4netns"
NSENTER = "/usr/bin/nsenter"
IPTABLES_RESTORE = "/usr/sbin/iptables-restore"
# slirp4netns's own DNS forwarder, the one private address a networked box may reach (port 53).
SLIRP_DNS = "10.0.2.3"
# Reached through slirp's NAT these would be the host's and its neighbours' services.
PRIVATE_V4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
              "224.0.0.0/3")
NETWORK_TIMEOUT = 10.0
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
                network: bool = False) -> tuple[list[str], dict[str, bytes]]:
        """(argv, {"args": bubblewrap's options, "env": the runner's environment}) of one boxed
        runner; `materialize` puts them in memfds and their numbers in place. With `network`
        the argv has `{info}` and `{block}` for `Network.start`'s pipes."""
        args = ["--die-with-parent", "--new-session", "--clearenv"]
        if self.privileged:
            # No user namespace: it would only map uid 0, so the drop below could not happen.
            args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            args += ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
                     "--unshare-cgroup-try", "--uid", str(self.uid), "--gid", str(self.gid)]
        # Always a new network namespace: empty, or with slirp4netns's NAT (`Network`).
        args.append("--unshare-net")
        made: set[str] = {"/", "/usr", HOME}
        args += _allowed_mounts(python, code, deps, made)
        args += ["--ro-bind", runner, RUNNER,
                 "--ro-bind-try", str(Path(runner).with_name("conventions")), CONVENTIONS,
                 "--dir", HOME]
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
        # bubblewrap waits on {block} until `Network.start` has wired and walled the namespace.
        wait = ["--info-fd", "{info}", "--block-fd", "{block}"] if network else []
        return [self.bwrap, *wait, "--args", "{args}", "--", *command], data


def network_refusal(sandbox: Sandbox) -> str | None:
    """Why a function that asks for network cannot have it in this box, or None."""
    if not settings.KUBEFUNCTION_LOCAL_ALLOW_NETWORK:
        return ("the function asks for network, and the local runtime gives none unless the "
                "operator sets KUBEFUNCTION_LOCAL_ALLOW_NETWORK=true (or use the docker runtime)")
    if not sandbox.privileged:
        return ("the function asks for network, which a local box has only when the worker "
                "runs as root (its firewall is set from outside the box)")
    for tool in (SLIRP4NETNS, NSENTER, IPTABLES_RESTORE):
        if not os.access(tool, os.X_OK):
            return f"the function asks for network, and {tool} is missing (apt-get install " \
                   "slirp4netns iptables)"
    return None


def firewall_rules(host_addresses: list[str]) -> str:
    """iptables-restore input for a networked box: the outside only (slirp's NAT), never the
    host's own addresses nor any private range; DNS through slirp's forwarder."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
             "-A OUTPUT -o lo -j ACCEPT",
             f"-A OUTPUT -d {SLIRP_DNS}/32 -p udp --dport 53 -j ACCEPT",
             f"-A OUTPUT -d {SLIRP_DNS}/32 -p tcp --dport 53 -j ACCEPT"]
    for target in (*PRIVATE_V4, *(f"{address}/32" for address in host_addresses)):
        lines.append(f"-A OUTPUT -d {target} -j REJECT --reject-with icmp-admin-prohibited")
    return "\n".join([*lines, "COMMIT", ""])


def host_ipv4_addresses() -> list[str]:
    import psutil  # only a networked box needs it

    return sorted({address.address for addresses in psutil.net_if_addrs().values()
                   for address in addresses if address.family == socket.AF_INET})


class Network:
    """The slirp4netns of one networked box: started once bubblewrap made the namespace, before
    the box may go on; it ends when `close()` closes its exit pipe (or the worker dies)."""

    def __init__(self) -> None:
        self.info_r, self.info_w = os.pipe()
        self.block_r, self.block_w = os.pipe()
        self.exit_r, self.exit_w = os.pipe()
        self.slirp: subprocess.Popen | None = None

    def child_fds(self) -> dict[str, int]:
        return {"info": self.info_w, "block": self.block_r}

    def start(self) -> None:
        """After bubblewrap started (its ends of the pipes closed here): wire, wall, release.
        Raises OSError when any step fails (the caller kills the box)."""
        for fd in (self.info_w, self.block_r):
            os.close(fd)
        self.info_w = self.block_r = -1
        pid = self._child_pid()
        ready_r, ready_w = os.pipe()
        try:
            self.slirp = subprocess.Popen(
                [SLIRP4NETNS, "--configure", "--mtu=65520", "--disable-host-loopback",
                 "--enable-sandbox", "--enable-seccomp", "--ready-fd", str(ready_w),
                 "--exit-fd", str(self.exit_r), str(pid), "tap0"],
                pass_fds=(ready_w, self.exit_r), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={},
                start_new_session=True)
            os.close(ready_w)
            ready_w = -1
            if not select.select([ready_r], [], [], NETWORK_TIMEOUT)[0] \
                    or os.read(ready_r, 1) != b"1":
                raise OSError("slirp4netns did not get ready")
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
        walled = subprocess.run([NSENTER, "-t", str(pid), "-n", IPTABLES_RESTORE],
                                input=firewall_rules(host_ipv4_addresses()), text=True,
                                capture_output=True, timeout=NETWORK_TIMEOUT, env={})
        if walled.returncode != 0:
            raise OSError(f"the box's firewall could not be set: {walled.stderr.strip()[-300:]}")
        os.write(self.block_w, b"1")

    def _child_pid(self) -> int:
        data = b""
        deadline = NETWORK_TIMEOUT
        while select.select([self.info_r], [], [], deadline)[0]:
            chunk = os.read(self.info_r, 4096)
            if not chunk:
                break
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except (ValueError, KeyError):
                continue
        raise OSError(f"bubblewrap did not report its child: {data[:200]!r}")

    def close(self) -> None:
        for name in ("info_r", "info_w", "block_r", "block_w", "exit_r", "exit_w"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        if self.slirp is not None:
            try:
                self.slirp.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.slirp.kill()
                self.slirp.wait()


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
            net = ("network (slirp4netns) for functions asking for it"
                   if settings.KUBEFUNCTION_LOCAL_ALLOW_NETWORK else "no network")
            return SANDBOXED, f"{SANDBOXED} ({why}; {uid}; {tmp}; {net}{shared})", sandbox
    if settings.KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED:
        return UNSANDBOXED_TRUSTED, (f"{UNSANDBOXED_TRUSTED}: {why}; every function runs as the "
                                     "worker's user (KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED)"), None
    return REFUSING, (f"{REFUSING}: {why}; only superusers' functions run (unsandboxed). "
                      f"Fix: {FIX}"), None

