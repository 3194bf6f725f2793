#!/usr/bin/env bash
# Issue-11 comparison: the CPU per request of several gateway binaries on
# the same workload, in one run, interleaved round by round so machine noise
# hits them alike. Same method as bench-proxy.sh: one demo upstream and the
# gateway under test share one CPU (taskset), wrk runs on another, CPU time
# is utime+stime of the gateway from /proc/<pid>/stat over the requests wrk
# completed.
#
# Usage: scripts/bench-edge.sh NAME=BINARY... (e.g. before=/tmp/gw-3000b47 after=target/release/examples/gateway)
# Env:   DURATION (3s), CONNS (64), ROUNDS (3), PROXY_CPU (1), WRK_CPU (0),
#        PORT_BASE (18180), URL_PATH (/)
set -euo pipefail
DURATION=${DURATION:-3s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
BASE=${PORT_BASE:-18180}
URL_PATH=${URL_PATH:-/}
[ $# -gt 0 ] || { echo "usage: $0 NAME=BINARY..." >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is required" >&2; exit 2; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}
ticks() { local rest; rest=$(sed 's/.*) //' "/proc/$1/stat"); set -- $rest; echo $((${12} + ${13})); }
HZ=$(getconf CLK_TCK)

# One upstream for every candidate: the first binary in upstream-only mode.
first=${1#*=}
RUST_LOG=warn setsid taskset -c "$PROXY_CPU" "$first" --demo-upstream-only --workers 1 \
  --listen "127.0.0.1:$BASE" &
PIDS+=($!)
wait_port "$BASE"

names=(); ports=(); pids=()
i=1
for arg in "$@"; do
  name=${arg%%=*}; bin=${arg#*=}; port=$((BASE + i))
  RUST_LOG=warn setsid taskset -c "$PROXY_CPU" "$bin" --workers 1 --no-access-log \
    --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$BASE" &
  pid=$!; PIDS+=($pid)
  wait_port "$port"
  names+=("$name"); ports+=("$port"); pids+=("$pid")
  i=$((i + 1))
done

echo "wrk -t1 -c$CONNS -d$DURATION GET $URL_PATH; upstream + gateway on CPU $PROXY_CPU, wrk on CPU $WRK_CPU; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| round | binary | req/s | CPU µs/req |"
echo "|---|---|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  for k in "${!names[@]}"; do
    url="http://127.0.0.1:${ports[$k]}$URL_PATH"
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
    t0=$(ticks "${pids[$k]}")
    out=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "$url")
    t1=$(ticks "${pids[$k]}")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}')
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    echo "| $r | ${names[$k]} | $rps | $cpu |${errs:+ $errs}"
  done
done
