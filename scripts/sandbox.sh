#!/usr/bin/env bash
# The local runtime's sandbox (docs/security.md, "Local runtime sandbox"): installs bubblewrap,
# util-linux's setpriv/nsenter, slirp4netns and iptables from apt when they are missing, then proves the box works by starting
# one the way the runtime does. Idempotent; exits non-zero, saying why, when no sandbox can be had
# (then the local runtime runs only superusers' functions). `make install` and `.ci/run` run it.
#
#   scripts/sandbox.sh    install what is missing, probe, print the mode
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/log
BWRAP=${KUBEFUNCTION_SANDBOX_BWRAP:-/usr/bin/bwrap}
SANDBOX_UID=${KUBEFUNCTION_SANDBOX_UID:-65534}
APT_LOG=var/log/apt-sandbox.log

missing=()
[ -x "$BWRAP" ] || missing+=(bubblewrap)
[ -x /usr/bin/setpriv ] && [ -x /usr/bin/nsenter ] || missing+=(util-linux)
# A box whose function may use the network (KUBEFUNCTION_LOCAL_ALLOW_NETWORK): slirp4netns gives
# it a user-mode network, iptables keeps the host's loopback and private addresses out of reach.
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v iptables-restore >/dev/null || [ -x /usr/sbin/iptables-restore ] || missing+=(iptables)
if ((${#missing[@]})); then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  echo "sandbox: installing ${missing[*]} (log: $APT_LOG)"
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
        "${missing[@]}" >"$APT_LOG" 2>&1; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update >>"$APT_LOG" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y \
          --no-install-recommends "${missing[@]}" >>"$APT_LOG" 2>&1; then
      echo "sandbox: FAILED: apt-get install ${missing[*]} failed (see $APT_LOG)." >&2
      echo "sandbox: install bubblewrap by hand, or on a trusted single-user machine set" \
           "KUBEFUNCTION_LOCAL_UNSANDBOXED_TRUSTED=true." >&2
      exit 1
    fi
  fi
fi

# The same isolation the runtime asks for (executions/runtimes/local/sandbox.py), with /usr only.
if [ "$(id -u)" -eq 0 ]; then
  box=(--unshare-ipc --unshare-pid --unshare-uts --unshare-net --cap-add CAP_SETUID
       --cap-add CAP_SETGID --cap-add CAP_SETPCAP)
  drop=(/usr/bin/setpriv --reuid "$SANDBOX_UID" --regid "$SANDBOX_UID" --clear-groups
        --inh-caps=-all --bounding-set=-all --)
else
  box=(--unshare-all --uid "$SANDBOX_UID" --gid "$SANDBOX_UID")
  drop=()
fi
links=()
for name in bin sbin lib lib64; do
  [ -L "/$name" ] && links+=(--symlink "$(readlink "/$name")" "/$name")
done
if ! seen=$("$BWRAP" "${box[@]}" --die-with-parent --new-session --clearenv \
      --ro-bind /usr /usr "${links[@]}" --proc /proc --dev /dev --tmpfs /tmp -- \
      "${drop[@]}" /usr/bin/id -u 2>&1); then
  echo "sandbox: FAILED: $BWRAP cannot start a sandbox here: $seen" >&2
  exit 1
fi
if [ "$seen" != "$SANDBOX_UID" ]; then
  echo "sandbox: FAILED: the boxed process ran as uid $seen, not $SANDBOX_UID" >&2
  exit 1
fi

# The runtime's own probe (the full command line, the interpreter, the mode), once installed.
if [ -x .venv/bin/python ]; then
  DJANGO_SETTINGS_MODULE=kubefunction.settings .venv/bin/python -c '
import sys, django
django.setup()
from executions.runtimes.local import sandbox
mode, detail, _ = sandbox.state()
print(f"sandbox: {detail}")
sys.exit(0 if mode == sandbox.SANDBOXED else 1)'
else
  echo "sandbox: ok ($("$BWRAP" --version), boxed uid $seen)"
fi
