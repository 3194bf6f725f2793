#!/usr/bin/env bash
# Gateway CPU per request with the access log off, inline (a tracing event
# on the request path) and on the [access_log] pipeline. Same release
# binary, same demo upstream process, bounded wrk runs on loopback; the
# gateway and the upstream share PROXY_CPU, wrk runs on WRK_CPU. Logs go to
# /dev/null in both modes. CPU is utime+stime of the gateway process from
# /proc/<pid>/stat divided by the requests wrk completed.
#
# Usage: scripts/bench-access-log.sh [duration=5s] [connections=32] [rounds=2]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-5s}
CONNS=${2:-32}
ROUNDS=${3:-2}
PROXY_CPU=${PROXY_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
UP=19180
GW=19181
TARGET_DIR=${CARGO_TARGET_DIR:-target}
GATEWAY="$TARGET_DIR/release/examples/gateway"
[ -x "$GATEWAY" ] || cargo build --release --quiet --example gateway
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)"; exit 1; }
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/bench-access.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

. scripts/lib-serve.sh
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

taskset -c "$PROXY_CPU" "$GATEWAY" --demo-upstream-only --listen "127.0.0.1:$UP" --no-access-log >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP"

printf '[server]\nworkers = 1\n' > "$WORK/inline.toml"
printf '[server]\nworkers = 1\n[access_log]\npipeline = true\n' > "$WORK/pipeline.toml"
printf '[server]\nworkers = 1\n[log]\naccess_log = false\n' > "$WORK/off.toml"

echo "| mode | round | requests/s | CPU µs/request |"
echo "|------|-------|-----------:|---------------:|"
for round in $(seq "$ROUNDS"); do
  for mode in off inline pipeline; do
    taskset -c "$PROXY_CPU" "$GATEWAY" --config "$WORK/$mode.toml" --upstream "http://127.0.0.1:$UP" \
      --listen "127.0.0.1:$GW" >/dev/null 2>&1 &
    pid=$!
    wait_port "$GW"
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$GW/" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$GW/")
    after=$(cpu_ticks "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    us=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    echo "| $mode | $round | $rps | $us |"
  done
done
