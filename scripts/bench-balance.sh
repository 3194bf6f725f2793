#!/usr/bin/env bash
# Balancing over a slow and a fast upstream: the gateway with
# `upstream.balance = "round_robin"` and with `"p2c"` (the default), same
# run, same two demo upstreams (one with SLOW_LATENCY added to every
# answer). Prints wrk's req/s and latency percentiles against each gateway
# and the gateway's CPU per request.
#
# Usage: scripts/bench-balance.sh [duration=5s] [connections=32] [rounds=1]
# Env:   SLOW_LATENCY (default 20ms), PORT_BASE (default 18680).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-5s}
CONNS=${2:-32}
ROUNDS=${3:-1}
WRK_CPU=""
BASE=${PORT_BASE:-18680}
SLOW_LATENCY=${SLOW_LATENCY:-20ms}

WORK=$(mktemp -d /tmp/bench-balance.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

printf '[demo]\nlatency = "%s"\n' "$SLOW_LATENCY" >"$WORK/slow.toml"
start_gateway "" --demo-upstream-only --workers 1 --listen "127.0.0.1:$BASE" --config "$WORK/slow.toml"
start_gateway "" --demo-upstream-only --workers 1 --listen "127.0.0.1:$((BASE + 1))"
wait_port "$BASE"
wait_port "$((BASE + 1))"
UPS=(--upstream "http://127.0.0.1:$BASE" --upstream "http://127.0.0.1:$((BASE + 1))")

printf '[upstream]\nbalance = "round_robin"\n' >"$WORK/rr.toml"
printf '[upstream]\nbalance = "p2c"\n' >"$WORK/p2c.toml"
start_gateway "" --no-access-log --listen "127.0.0.1:$((BASE + 2))" "${UPS[@]}" --config "$WORK/rr.toml"
RR=$LAST_PID
start_gateway "" --no-access-log --listen "127.0.0.1:$((BASE + 3))" "${UPS[@]}" --config "$WORK/p2c.toml"
P2C=$LAST_PID
wait_port "$((BASE + 2))"
wait_port "$((BASE + 3))"

echo "two upstreams, one with $SLOW_LATENCY added; wrk -c$CONNS -d$DURATION, unpinned"
echo "$HEADER"
echo "$RULE"
for _ in $(seq 1 "$ROUNDS"); do
  run "round robin" "$((BASE + 2))" "$RR"
  run "p2c (pending)" "$((BASE + 3))" "$P2C"
done
