#!/usr/bin/env bash
# mynacard set-up and entry point.
#
#   ./setup.sh serve [mynacard serve options]   run a card visible to PC/SC (foreground)
#   ./setup.sh test  [pytest options]           run the test suite (default: all, -q)
#
# `test` without options also runs the lint and type checks (tox -e lint,type), as CI does.
# Both install what is missing (Debian packages, .venv), make sure pcscd runs with the
# vsmartcard vpcd driver, then run.  Needs root for apt-get and pcscd; re-runs itself
# with sudo otherwise.  A pcscd started here logs to .run/pcscd.log, its pid is in
# .run/pcscd.pid; `test` stops it again at the end, `serve` leaves it running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

APT_PACKAGES=(pcscd vsmartcard-vpcd libpcsclite-dev opensc python3-venv gcc python3-dev fonts-ipaexfont-gothic redis-server graphviz)
VPCD_PORT_HEX=8C7B # 35963, reader 'Virtual PCD 00 00'
RUN_DIR=$ROOT/.run
PID_FILE=$RUN_DIR/pcscd.pid
VENV=$ROOT/.venv
STAMP=$VENV/.mynacard-installed

say() { printf 'setup.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: ./setup.sh serve [mynacard serve options]   serve a card to PC/SC (foreground)
       ./setup.sh test  [pytest options]           run the test suite
EOF
  exit 2
}

ensure_root() {
  [[ $(id -u) -eq 0 ]] && return
  command -v sudo >/dev/null || die "must run as root (and sudo is not installed)"
  say "re-running with sudo (apt-get and pcscd need root)"
  exec sudo --preserve-env=CI,PYTEST_ADDOPTS,XDG_STATE_HOME -- "$0" "$@"
}

ensure_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
}

ensure_venv() {
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
  elif [[ -f $STAMP && $(<"$STAMP") == "$want" ]]; then
    return
  fi
  say "installing mynacard into $VENV"
  "$VENV/bin/python" -m pip install -q -e '.[test]' 'tox>=4'
  echo "$want" >"$STAMP"
}

# Is $1 a pcscd in our mount and network namespaces?  (One run under `unshare -m -n`
# for an isolated test run is visible in /proc but has its own socket and ports.)
is_our_pcscd() {
  [[ $(cat "/proc/$1/comm" 2>/dev/null) == pcscd ]] &&
    [[ $(readlink "/proc/$1/ns/mnt") == "$(readlink /proc/self/ns/mnt)" ]] &&
    [[ $(readlink "/proc/$1/ns/net") == "$(readlink /proc/self/ns/net)" ]]
}

# Pid of the running pcscd, or nothing.  Its pid file ends in a NUL byte.
pcscd_pid() {
  local pid="" dir
  [[ -r /run/pcscd/pcscd.pid ]] && pid=$(tr -d '\0 \n' </run/pcscd/pcscd.pid)
  if [[ -n $pid ]] && is_our_pcscd "$pid"; then
    echo "$pid"
    return
  fi
  for dir in /proc/[0-9]*; do
    if is_our_pcscd "${dir#/proc/}" 2>/dev/null; then
      echo "${dir#/proc/}"
      return
    fi
  done
}

# Is vpcd listening?  Read /proc/net/tcp: connecting to the port would insert a card.
vpcd_listening() {
  local tables=() table
  for table in /proc/net/tcp /proc/net/tcp6; do
    [[ -r $table ]] && tables+=("$table")
  done
  awk -v port=":$VPCD_PORT_HEX" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == port { found = 1 }
    END { exit !found }' "${tables[@]}"
}

# Pid of the pcscd this repository started (.run/pcscd.pid), if it still runs.
owned_pid() {
  local pid=""
  [[ -f $PID_FILE ]] && pid=$(tr -d '\0 \n' <"$PID_FILE")
  if [[ -n $pid ]] && is_our_pcscd "$pid"; then
    echo "$pid"
  fi
  return 0
}

# Start pcscd; sets STARTED_PCSCD=1 unless another pcscd won a race to start.
STARTED_PCSCD=0
start_pcscd() {
  local pid
  mkdir -p "$RUN_DIR"
  say "starting pcscd (log: .run/pcscd.log)"
  # Own session: a Ctrl-C on `serve` must not reach pcscd.  Never --auto-exit.
  setsid pcscd --foreground >>"$RUN_DIR/pcscd.log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 50); do
    if ! kill -0 "$pid" 2>/dev/null; then
      [[ -n $(pcscd_pid) ]] && vpcd_listening && return # someone else's pcscd
      break
    fi
    if vpcd_listening; then
      echo "$pid" >"$PID_FILE"
      STARTED_PCSCD=1
      return
    fi
    sleep 0.1
  done
  tail -n 20 "$RUN_DIR/pcscd.log" >&2 || true
  die "pcscd did not open the vpcd port 35963 (see .run/pcscd.log)"
}

stop_pcscd() {
  local pid
  pid=$(owned_pid)
  if [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 50); do # pcscd takes ~1.75 s to exit
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
}

# Make sure pcscd runs with vpcd, (re)starting it if needed and allowed.
ensure_pcscd() {
  local pid
  pid=$(pcscd_pid)
  if [[ -n $pid ]]; then
    vpcd_listening && return
    if [[ $pid == "$(owned_pid)" ]]; then
      say "pcscd (pid $pid) runs without the vpcd reader; restarting it"
      stop_pcscd
    else
      die "pcscd (pid $pid) runs without the vpcd reader (it was started before vsmartcard-vpcd" \
        "was installed?). Restart it: kill $pid; then run this again"
    fi
  fi
  start_pcscd
}

[[ $# -ge 1 ]] || usage
ensure_root "$@"
command=$1
shift
case $command in
  serve)
    ensure_packages
    ensure_venv
    ensure_pcscd
    exec "$VENV/bin/mynacard" serve "$@"
    ;;
  test)
    ensure_packages
    ensure_venv
    ensure_pcscd
    checks=0
    [[ $# -gt 0 ]] || { checks=1; set -- -q; }
    rc=0
    "$VENV/bin/pytest" "$@" || rc=$?
    [[ $STARTED_PCSCD -eq 1 ]] && stop_pcscd
    [[ $rc -eq 5 ]] && say "pytest collected no tests: that is a failure"
    if [[ $checks -eq 1 ]]; then
      say "lint and type checks (tox -e lint,type)"
      "$VENV/bin/tox" -q -e lint,type || rc=$((rc ? rc : 1))
    fi
    exit "$rc"
    ;;
  *)
    usage
    ;;
esac
