#!/usr/bin/env bash
# Services for development and CI: a Docker engine, a registry on 127.0.0.1:5000 and the base
# image that function images are built FROM. Idempotent: run it as often as you like; a second run
# finds everything in place and changes nothing.
#
#   scripts/services.sh          install what is missing, start what is not running, build the base
#                                image when it is missing (also: `make services`)
#   scripts/services.sh status   what runs, with versions
#   scripts/services.sh stop     stop the dockerd and the registry that this script started
#                                (also: `make services-stop`)
#
# Network rules: dockerd runs with --bridge=none --iptables=false --ip-masq=false (containers run
# with network "none", builds with the host's network); the registry listens on 127.0.0.1 only.
# Details: docs/services.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VAR="$ROOT/var"
LOG_DIR="$VAR/log"
RUN_DIR="$VAR/run"
DOCKERD_LOG="$LOG_DIR/dockerd.log"
DOCKERD_PID="$RUN_DIR/dockerd.pid"
DOCKER_SOCK=/var/run/docker.sock
DOCKERD_FLAGS=(--bridge=none --iptables=false --ip-masq=false "--host=unix://$DOCKER_SOCK")
REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_URL="http://$REGISTRY_ADDR"
REGISTRY_CONFIG="$VAR/registry.yml"
REGISTRY_DATA="$VAR/registry"
REGISTRY_LOG="$LOG_DIR/registry.log"
REGISTRY_PID="$RUN_DIR/registry.pid"
REGISTRY_BIN=/usr/bin/docker-registry
BASE_LOG="$LOG_DIR/base-image.log"
DEFAULT_BASE_IMAGE=kubefunction/python-base:bookworm
SUITE=bookworm
START=$SECONDS

say() { printf '[services %3ds] %s\n' "$((SECONDS - START))" "$*"; }
warn() { printf '[services %3ds] WARNING: %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[services %3ds] ERROR: %s\n' "$((SECONDS - START))" "$*" >&2; exit 1; }

# Settings read here: the environment wins, then .env, then the defaults.
from_env_file() {  # from_env_file NAME: NAME's value, from the environment or else from .env
  if [ -n "${!1:-}" ] || [ ! -f .env ]; then printf '%s' "${!1:-}"; return; fi
  # shellcheck disable=SC1091  # .env is the user's own file, read as scripts/env.sh reads it
  (set +eu; set -a; . ./.env >/dev/null 2>&1; printf '%s' "${!1:-}")
}
IMAGE=$(from_env_file KUBEFUNCTION_BASE_IMAGE)
IMAGE=${IMAGE:-$DEFAULT_BASE_IMAGE}
DEBIAN_MIRROR=$(from_env_file KUBEFUNCTION_DEBIAN_MIRROR)

# --- helpers ---------------------------------------------------------------------------------

pid_alive() {  # pid_alive PIDFILE NAME: prints the pid when the file names a live NAME process
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc '0-9' <"$1")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
  printf '%s' "$pid"
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

engine_answers() { command -v docker >/dev/null && timeout 15 docker info >/dev/null 2>&1; }
registry_answers() { curl -fsS --max-time 5 -o /dev/null "$REGISTRY_URL/v2/" 2>/dev/null; }

APT_UPDATED=
apt_install() {  # apt_install PKG...: installs those not installed yet
  local missing=() p policy_rc=
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (run as root, or install them yourself)"
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    apt-get -qq -o DPkg::Lock::Timeout=300 update
    APT_UPDATED=1
  fi
  # Packages must not start their services (docker.io's and docker-registry's init scripts would
  # start a dockerd with a bridge and a registry on every interface): a policy-rc.d says no, and
  # only for the time of this install, unless the machine already has one.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_rc=1
  fi
  say "apt-get install ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       -o DPkg::Lock::Timeout=300 "${missing[@]}" >"$LOG_DIR/apt.log" 2>&1; then
    [ -n "$policy_rc" ] && rm -f /usr/sbin/policy-rc.d
    tail -n 20 "$LOG_DIR/apt.log" >&2
    die "apt-get install ${missing[*]} failed (full log: $LOG_DIR/apt.log)"
  fi
  [ -n "$policy_rc" ] && rm -f /usr/sbin/policy-rc.d
  INSTALLED+=("${missing[@]}")
}

# --- the Docker engine -----------------------------------------------------------------------

dockerd_pid_any() { pgrep -xo dockerd 2>/dev/null || true; }

engine_version() { docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?'; }

wait_engine() {  # wait_engine SECONDS [PID]: until `docker info` answers; fails early if PID dies
  local i
  for ((i = 0; i < $1; i++)); do
    engine_answers && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      die "dockerd exited while starting (log: $DOCKERD_LOG)"
    fi
    sleep 1
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "the Docker engine did not answer within $1 s (log: $DOCKERD_LOG)"
}

ensure_engine() {
  local pid other
  if ! command -v dockerd >/dev/null && ! engine_answers; then
    apt_install docker.io
  elif ! command -v docker >/dev/null; then
    apt_install docker.io
  fi

  # A dockerd that a package install just started (systemd or an init script) has a bridge and
  # iptables rules: stop it, and start ours.
  other=$(dockerd_pid_any)
  if [ -n "$other" ] && [[ " ${INSTALLED[*]} " == *" docker.io "* ]] \
     && ! cmdline "$other" | grep -q -- '--bridge=none'; then
    warn "the docker.io package started dockerd (pid $other) with its own flags: stopping it"
    if [ -d /run/systemd/system ]; then systemctl stop docker.service docker.socket || true; fi
    if [ -x /etc/init.d/docker ]; then /etc/init.d/docker stop >/dev/null 2>&1 || true; fi
    kill "$other" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$other" 2>/dev/null || break; sleep 1; done
  fi

  if engine_answers; then
    if pid=$(pid_alive "$DOCKERD_PID" dockerd); then
      DOCKERD_STATE="found running (started by this script, pid $pid)"
    else
      pid=$(dockerd_pid_any)
      DOCKERD_STATE="found running (not started by this script${pid:+, pid $pid})"
      if [ -n "$pid" ] && ! cmdline "$pid" | grep -q -- '--bridge=none'; then
        warn "the running dockerd was not started with --bridge=none: $(cmdline "$pid")"
        warn "containers still run with network 'none'; stop it to let this script start its own"
      fi
    fi
    say "Docker engine answers: $(engine_version)"
    return 0
  fi

  # Ours, or another dockerd, still starting: wait for it rather than start a second one.
  pid=$(pid_alive "$DOCKERD_PID" dockerd || dockerd_pid_any)
  if [ -n "$pid" ]; then
    say "dockerd (pid $pid) is running but does not answer yet: waiting"
    wait_engine 60 "$pid"
    DOCKERD_STATE="found running (pid $pid)"
    return 0
  fi

  say "starting dockerd ${DOCKERD_FLAGS[*]}"
  printf '\n=== %s scripts/services.sh starts dockerd\n' "$(date -Is)" >>"$DOCKERD_LOG"
  setsid nohup dockerd "${DOCKERD_FLAGS[@]}" </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$DOCKERD_PID"
  wait_engine 60 "$pid"
  # dockerd writes its own pid file; trust it over $! should setsid have forked.
  if [ -s /var/run/docker.pid ] && pid_alive /var/run/docker.pid dockerd >/dev/null; then
    cp /var/run/docker.pid "$DOCKERD_PID"
    pid=$(cat "$DOCKERD_PID")
  fi
  DOCKERD_STATE="started (pid $pid)"
  say "Docker engine answers: $(engine_version)"
}

# --- the registry ----------------------------------------------------------------------------

registry_version() { "$REGISTRY_BIN" --version 2>/dev/null | awk '{print $NF}' || echo '?'; }

write_registry_config() {
  local tmp="$REGISTRY_CONFIG.tmp"
  cat >"$tmp" <<EOF
# Written by scripts/services.sh (rewritten on every run): the development and CI registry.
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $REGISTRY_ADDR
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
  if cmp -s "$tmp" "$REGISTRY_CONFIG"; then rm -f "$tmp"; else mv "$tmp" "$REGISTRY_CONFIG"; fi
}

ensure_registry() {
  local pid i
  if registry_answers; then
    if pid=$(pid_alive "$REGISTRY_PID" docker-registry); then
      REGISTRY_STATE="found running (started by this script, pid $pid, data $REGISTRY_DATA)"
    else
      REGISTRY_STATE="found running (not started by this script from $ROOT)"
    fi
    say "registry answers on $REGISTRY_URL"
    return 0
  fi
  [ -x "$REGISTRY_BIN" ] || apt_install docker-registry
  [ -x "$REGISTRY_BIN" ] || die "$REGISTRY_BIN is missing after installing docker-registry"
  mkdir -p "$REGISTRY_DATA"
  write_registry_config
  if pid=$(pid_alive "$REGISTRY_PID" docker-registry); then
    say "registry (pid $pid) is running but does not answer: restarting it"
    kill "$pid" 2>/dev/null || true
    sleep 1
  fi
  say "starting the registry on $REGISTRY_ADDR (data $REGISTRY_DATA)"
  printf '\n=== %s scripts/services.sh starts the registry\n' "$(date -Is)" >>"$REGISTRY_LOG"
  setsid nohup "$REGISTRY_BIN" serve "$REGISTRY_CONFIG" </dev/null >>"$REGISTRY_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$REGISTRY_PID"
  for ((i = 0; i < 30; i++)); do
    registry_answers && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$REGISTRY_LOG" >&2 || true
      die "the registry exited while starting (log: $REGISTRY_LOG)"
    fi
    sleep 1
  done
  registry_answers || die "the registry did not answer on $REGISTRY_URL within 30 s (log: $REGISTRY_LOG)"
  REGISTRY_STATE="started (pid $pid, data $REGISTRY_DATA)"
  say "registry answers on $REGISTRY_URL"
}

# --- the base image --------------------------------------------------------------------------

# The machine's own Debian mirror for $SUITE, from its apt sources (deb822 *.sources first, then
# one-line *.list files); KUBEFUNCTION_DEBIAN_MIRROR (environment or .env) overrides it.
debian_mirror() {
  local f uri
  if [ -n "$DEBIAN_MIRROR" ]; then printf '%s' "$DEBIAN_MIRROR"; return; fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[ \t]*#/) continue
          key = tolower(line); sub(/:.*/, "", key)
          val = line; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "types") types = " " val " "
          else if (key == "uris") uris = val
          else if (key == "suites") suites = " " val " "
          else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled != "no" && types ~ / deb / && suites ~ (" " suite " ")) {
          split(uris, u, /[ \t]+/); print u[1]; exit
        }
      }' "$f")
    if [ -n "$uri" ]; then printf '%s' "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f")
    if [ -n "$uri" ]; then printf '%s' "$uri"; return; fi
  done
}

unmount_under() {  # unmount anything mounted below a folder (debootstrap mounts /proc and /sys)
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done \
    < <(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
}

cleanup_root() {  # delete the temporary root, never crossing into a mount
  local dir=$1
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  unmount_under "$dir"
  rm -rf --one-file-system "$dir"
}

build_base_image() {
  local mirror root t0=$SECONDS
  [ "$(id -u)" = 0 ] || die "building the base image needs root (debootstrap)"
  apt_install debootstrap debian-archive-keyring
  mirror=$(debian_mirror)
  case "$mirror" in
    http://* | https://*) ;;
    *) die "no http(s) Debian mirror for $SUITE in /etc/apt/sources.list(.d) (found '${mirror}');" \
           "set KUBEFUNCTION_DEBIAN_MIRROR=http://your.mirror/debian" ;;
  esac
  mkdir -p "$VAR/tmp"
  root=$(mktemp -d "$VAR/tmp/base-root.XXXXXX")
  BUILD_ROOT=$root
  trap 'cleanup_root "$BUILD_ROOT"' EXIT
  say "building $IMAGE: debootstrap --variant=minbase $SUITE from $mirror (log: $BASE_LOG; ~2-4 min)"
  printf '\n=== %s debootstrap %s %s\n' "$(date -Is)" "$SUITE" "$mirror" >>"$BASE_LOG"
  if ! debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
       "$SUITE" "$root" "$mirror" >>"$BASE_LOG" 2>&1; then
    tail -n 20 "$BASE_LOG" >&2
    die "debootstrap failed (log: $BASE_LOG)"
  fi
  say "debootstrap done in $((SECONDS - t0)) s; trimming the root"
  unmount_under "$root"
  # HTTPS from inside containers (pip during builds) verifies with this machine's CA bundle.
  if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  # Like python:3.11-slim: `python` and `pip` exist, and pip installs as root without
  # --break-system-packages (the image is the function's own environment, not a shared system).
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  # Bytecode for the whole standard library: function containers run with a read-only root and
  # PYTHONDONTWRITEBYTECODE, so without it every cold start recompiles json, re, enum… (~50 ms).
  chroot "$root" /usr/bin/python3 -m compileall -q /usr/lib/python3 /usr/lib/python3.11 >/dev/null 2>&1 || true
  # Keep it small: no package caches, lists, docs, man pages or translations.
  rm -rf --one-file-system "${root:?}"/var/cache/apt/* "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/debconf/*-old \
         "${root:?}"/var/log/* "${root:?}"/usr/share/doc/* "${root:?}"/usr/share/man/* "${root:?}"/usr/share/info/* \
         "${root:?}"/usr/share/locale/* "${root:?}"/usr/share/lintian/* "${root:?}"/tmp/* "${root:?}"/root/.cache \
         "${root:?}"/dev/* "${root:?}"/proc/* "${root:?}"/sys/* "${root:?}"/run/*
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
  say "importing the root as $IMAGE"
  if ! tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'LABEL org.opencontainers.image.title=kubefunction-python-base' \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with python3 and pip, built by scripts/services.sh\"" \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null; then die "docker import of the root as $IMAGE failed"; fi
  cleanup_root "$root"
  BUILD_ROOT=
  trap - EXIT
  say "checking $IMAGE"
  docker run --rm --network none "$IMAGE" python3 -c 'import ssl, json; print("ok")' | grep -qx ok \
    || die "$IMAGE was imported but python3 does not run in it"
  say "built $IMAGE in $((SECONDS - t0)) s"
}

ensure_base_image() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    BASE_STATE="present"
    say "base image $IMAGE is present"
  elif [ "$IMAGE" = "$DEFAULT_BASE_IMAGE" ]; then
    build_base_image
    BASE_STATE="built"
  else
    say "base image $IMAGE is missing: docker pull $IMAGE"
    docker pull "$IMAGE" || die "cannot pull $IMAGE (no registry with it reachable?). Pull or build" \
      "it yourself, or unset KUBEFUNCTION_BASE_IMAGE to use the locally built $DEFAULT_BASE_IMAGE"
    BASE_STATE="pulled"
  fi
}

# The base image in the local registry too, under the same name without any registry host:
# kubefunction/python-base:bookworm -> 127.0.0.1:5000/kubefunction/python-base:bookworm.
mirror_base_image() {
  local name tag repo remote
  if [[ "$IMAGE" == *@* ]]; then MIRROR_STATE="not pushed ($IMAGE is pinned by digest)"; return 0; fi
  name=$IMAGE
  case "${name%%/*}" in *.* | *:* | localhost) [[ "$name" == */* ]] && name=${name#*/} ;; esac
  if [[ "${name##*/}" == *:* ]]; then tag=${name##*:}; name=${name%:*}; else tag=latest; fi
  repo="$REGISTRY_ADDR/$name"
  MIRROR="$repo:$tag"
  remote=$(curl -fsS --max-time 10 -o /dev/null -D - \
             -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
             "$REGISTRY_URL/v2/$name/manifests/$tag" 2>/dev/null \
           | awk 'tolower($1) == "docker-content-digest:" { gsub(/\r/, "", $2); print $2 }' || true)
  if [ -n "$remote" ] && [ "$(docker image inspect -f '{{.Id}}' "$MIRROR" 2>/dev/null)" = \
                           "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] \
     && docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$IMAGE" | grep -qx "$repo@$remote"; then
    MIRROR_STATE="$MIRROR is up to date ($remote)"
    say "registry has $MIRROR"
    return 0
  fi
  say "pushing $MIRROR"
  docker tag "$IMAGE" "$MIRROR"
  docker push -q "$MIRROR" >/dev/null || die "docker push $MIRROR failed"
  MIRROR_STATE="$MIRROR pushed"
}

# --- subcommands -----------------------------------------------------------------------------

stop_one() {  # stop_one NAME PIDFILE PATTERN
  local pid i
  if ! pid=$(pid_alive "$2" "$3"); then
    rm -f "$2"
    echo "$1: not started by this script (no live pid in ${2#"$ROOT"/}); nothing to stop"
    return 0
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$2"
  echo "$1: stopped (pid $pid)"
}

cmd_stop() {
  stop_one registry "$REGISTRY_PID" docker-registry
  stop_one dockerd "$DOCKERD_PID" dockerd
}

cmd_status() {
  local ok=0 pid
  if engine_answers; then
    pid=$(pid_alive "$DOCKERD_PID" dockerd || dockerd_pid_any)
    echo "docker engine: running $(engine_version), pid ${pid:-?}, socket $DOCKER_SOCK"
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
      echo "base image:    $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
    else
      echo "base image:    $IMAGE missing"; ok=1
    fi
  else
    echo "docker engine: not answering"; ok=1
  fi
  if registry_answers; then
    pid=$(pid_alive "$REGISTRY_PID" docker-registry || true)
    echo "registry:      running on $REGISTRY_URL, pid ${pid:-? (not started from here)}," \
         "catalog $(curl -fsS --max-time 5 "$REGISTRY_URL/v2/_catalog" | tr -d '\n')"
  else
    echo "registry:      not answering on $REGISTRY_URL"; ok=1
  fi
  return $ok
}

cmd_start() {
  INSTALLED=()
  DOCKERD_STATE='' REGISTRY_STATE='' BASE_STATE='' MIRROR_STATE=''
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  exec 9>"$RUN_DIR/services.lock"
  flock -w 900 9 || die "another scripts/services.sh is still running"
  command -v curl >/dev/null || apt_install curl ca-certificates

  ensure_engine
  ensure_registry
  ensure_base_image
  mirror_base_image

  echo
  echo "Services ready in $((SECONDS - START)) s:"
  [ ${#INSTALLED[@]} -gt 0 ] && echo "  installed:     ${INSTALLED[*]}"
  echo "  docker engine: $DOCKERD_STATE; $(engine_version); unix://$DOCKER_SOCK; log ${DOCKERD_LOG#"$ROOT"/}"
  echo "  registry:      $REGISTRY_STATE; $REGISTRY_URL; docker-registry $(registry_version);" \
       "config ${REGISTRY_CONFIG#"$ROOT"/}; log ${REGISTRY_LOG#"$ROOT"/}"
  echo "  base image:    $IMAGE $BASE_STATE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'));" \
       "$MIRROR_STATE"
  echo "Stop what this script started: scripts/services.sh stop (or make services-stop); images stay in the engine"
}

case "${1:-start}" in
  start | up) cmd_start ;;
  stop | down) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "usage: $0 [start|status|stop]" >&2; exit 2 ;;
esac
