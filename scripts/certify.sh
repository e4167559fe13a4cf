#!/usr/bin/env bash
# Regenerates the README's guarantee certificate: `squall certify` against every backend, with
# the link cut and, where this script owns the broker or the broker has commands for it, a
# broker restart.
#
#   scripts/peers.sh up && scripts/certify.sh [README.md]
#
# What it runs, all on 127.0.0.1:
# - `squall serve` (fsync storage in a temporary directory) on 4471, killed with SIGKILL and
#   started again on its data for the restart;
# - a private `nats-server` with JetStream (file store in the temporary directory) on 14222 for
#   core NATS and JetStream, stopped with SIGTERM and started again (the machine's shared
#   nats-server on 4222 is left alone). Not SIGKILL: nats-server 2.9 writes a consumer's state
#   (delivery counts) asynchronously, so after a SIGKILL redeliveries may come as first
#   attempts, which the suite's restart case reports as a failure; NATS_STOP=KILL shows it;
# - the RabbitMQ of `scripts/peers.sh` (`SQUALL_AMQP_URL`), restarted with `rabbitmqctl
#   stop_app` / `start_app` (`start_app` runs again on exit whatever happened);
# - a private tansu (in-memory storage) listening on 19093 and advertising 19092, where
#   certify's `--front` proxy stands; no restart: its data lives in memory, so a restart would
#   measure the emulator's storage, not the protocol;
# - the moto of `scripts/peers.sh` (`SQUALL_SQS_URL`); no restart, for the same reason.
#
# Everything this script starts it stops on exit, by PID. Set SQUALL_BIN to use a built
# `squall` (it must have the `kafka` feature); otherwise a debug build is made.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
readme=${1:-}
work=$(mktemp -d /tmp/squall-certify.XXXXXX)
eval "$("$root/scripts/peers.sh" env)"

if [ -z "${SQUALL_BIN:-}" ]; then
    (cd "$root" && cargo build -q -p squall-cli --features kafka)
    SQUALL_BIN=${CARGO_TARGET_DIR:-$root/target}/debug/squall
fi
nats_server=${SQUALL_NATS_SERVER:-nats-server}
# The rabbitmqctl that reaches the RabbitMQ of peers.sh (the /usr/sbin wrapper switches to the
# broker's user and Erlang cookie; peers.sh may have started the node as squall@localhost).
ctl=${SQUALL_RABBITMQCTL:-}
if [ -z "$ctl" ]; then
    for c in /usr/sbin/rabbitmqctl rabbitmqctl /usr/lib/rabbitmq/bin/rabbitmqctl; do
        for n in "" " -n squall@localhost"; do
            if [ -z "$ctl" ] && timeout 60 $c$n -q status >/dev/null 2>&1; then ctl="$c$n"; fi
        done
    done
fi
: "${ctl:?no rabbitmqctl reaches RabbitMQ (set SQUALL_RABBITMQCTL)}"
: "${SQUALL_TANSU_BIN:?no tansu: run scripts/peers.sh up}"
: "${SQUALL_AMQP_URL:?no RabbitMQ: run scripts/peers.sh up}"
: "${SQUALL_SQS_URL:?no moto: run scripts/peers.sh up}"

# daemon NAME SIGNAL COMMAND...: writes $work/NAME.start (backgrounds COMMAND, its output to
# $work/NAME.log, its PID to $work/NAME.pid) and $work/NAME.stop (sends SIGNAL, then waits until
# the process is gone or a zombie: its sockets and files are released either way).
daemon() {
    local name=$1 signal=$2
    shift 2
    printf '%q ' "$@" >"$work/$name.cmd"
    printf '%s >>%q 2>&1 &\necho $! >%q\n' "$(cat "$work/$name.cmd")" "$work/$name.log" \
        "$work/$name.pid" >"$work/$name.start"
    cat >"$work/$name.stop" <<EOF
pid=\$(cat $work/$name.pid)
kill -$signal \$pid
while [ -e /proc/\$pid ] && ! grep -q '^State:.*Z' /proc/\$pid/status 2>/dev/null; do sleep 0.05; done
EOF
}

wait_port() {
    local i
    for i in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "certify.sh: nothing listens on 127.0.0.1:$1 (logs in $work)" >&2
    return 1
}

cleanup() {
    local f
    for f in "$work"/*.pid; do
        [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    $ctl -q start_app >/dev/null 2>&1 || true
}
trap cleanup EXIT

daemon serve KILL "$SQUALL_BIN" serve --sync fsync --admin off --listen 127.0.0.1:4471 \
    --data "$work/serve-data"
daemon nats "${NATS_STOP:-TERM}" "$nats_server" -a 127.0.0.1 -p 14222 -js -sd "$work/nats-store"
daemon tansu KILL "$SQUALL_TANSU_BIN" broker --listener-url tcp://127.0.0.1:19093 \
    --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/
for d in serve nats tansu; do sh "$work/$d.start"; done
wait_port 4471
wait_port 14222
wait_port 19093

amqp_addr=${SQUALL_AMQP_URL#*@}
amqp_addr=${amqp_addr%%/*}
"$SQUALL_BIN" certify ${readme:+--readme "$readme"} --json "$work/certificate.json" \
    --backend squall://127.0.0.1:4471 \
    --stop "127.0.0.1:4471=sh $work/serve.stop" --start "127.0.0.1:4471=sh $work/serve.start" \
    --backend nats://127.0.0.1:14222 --backend 'nats://127.0.0.1:14222?jetstream=1' \
    --stop "127.0.0.1:14222=sh $work/nats.stop" --start "127.0.0.1:14222=sh $work/nats.start" \
    --backend "$SQUALL_AMQP_URL" \
    --stop "$amqp_addr=$ctl -q stop_app" --start "$amqp_addr=$ctl -q start_app" \
    --backend 'kafka://127.0.0.1:19092?storage=memory&session_timeout=2s&heartbeat=200ms&metadata_refresh=500ms' \
    --front 127.0.0.1:19092=127.0.0.1:19093 \
    --backend "$SQUALL_SQS_URL"
echo "certify.sh: certificate JSON and logs in $work"
