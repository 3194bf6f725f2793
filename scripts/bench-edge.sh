#!/usr/bin/env bash
# Issue-11 comparison: the CPU per request of several gateway binaries on
# the same workload, in one run, interleaved round by round so machine noise
# hits them alike. Same method as bench-proxy.sh: one demo upstream and the
# gateway under test share one CPU (taskset), wrk runs on another, CPU time
# is utime+stime of the gateway from /proc/<pid>/stat over the requests wrk
# completed.
#
# MODE=callgrind instead counts instructions (steady on a busy machine):
# each gateway runs under valgrind --tool=callgrind, its counters are zeroed
# after a 2 s warm-up, wrk runs DURATION with CONNS connections, and the
# instructions of the whole gateway process are divided by the requests.
#
# Usage: scripts/bench-edge.sh NAME=BINARY... (e.g. before=/tmp/gw-3000b47 after=target/release/examples/gateway)
# Env:   MODE (cpu | callgrind), DURATION (3s), CONNS (64; callgrind 16),
#        ROUNDS (3), PROXY_CPU (1), WRK_CPU (0), PORT_BASE (18180), URL_PATH (/)
set -euo pipefail
DURATION=${DURATION:-3s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
BASE=${PORT_BASE:-18180}
URL_PATH=${URL_PATH:-/}
MODE=${MODE:-cpu}
[ $# -gt 0 ] || { echo "usage: $0 NAME=BINARY..." >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is required" >&2; exit 2; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
. "$(dirname "$0")/lib-serve.sh"
ticks() { local rest; rest=$(sed 's/.*) //' "/proc/$1/stat"); set -- $rest; echo $((${12} + ${13})); }
HZ=$(getconf CLK_TCK)

# One upstream for every candidate: the first binary in upstream-only mode.
first=${1#*=}
RUST_LOG=warn setsid taskset -c "$PROXY_CPU" "$first" --demo-upstream-only --workers 1 \
  --listen "127.0.0.1:$BASE" &
PIDS+=($!)
wait_port "$BASE"

if [ "$MODE" = callgrind ]; then
  command -v callgrind_control >/dev/null || { echo "valgrind is required" >&2; exit 2; }
  CONNS=${CONNS_CG:-16}
  CG=$(mktemp -d /tmp/bench-edge-cg.XXXXXX)
  echo "callgrind, wrk -t1 -c$CONNS -d$DURATION GET $URL_PATH after a 2 s warm-up; instructions of the whole gateway process per request"
  echo "| round | binary | requests | instructions | per request |"
  echo "|---|---|---:|---:|---:|"
  for r in $(seq 1 "$ROUNDS"); do
    i=1
    for arg in "$@"; do
      name=${arg%%=*}; bin=${arg#*=}; port=$((BASE + i))
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$CG/cg.$name.$r.out" \
        "$bin" --workers 1 --no-access-log --listen "127.0.0.1:$port" \
        --upstream "http://127.0.0.1:$BASE" >/dev/null 2>&1 &
      pid=$!
      for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
      wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port$URL_PATH" >/dev/null
      callgrind_control -z "$pid" >/dev/null
      out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port$URL_PATH")
      callgrind_control -d "$pid" >/dev/null
      for _ in $(seq 1 100); do ls "$CG/cg.$name.$r.out".* >/dev/null 2>&1 && break; sleep 0.1; done
      sleep 0.5
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      ir=$(awk '/^totals:/ {print $2}' "$(ls -t "$CG/cg.$name.$r.out".* | head -1)")
      echo "| $r | $name | $reqs | $ir | $(awk -v a="$ir" -v b="$reqs" 'BEGIN { printf "%.0f", a / b }') |"
      i=$((i + 1))
    done
  done
  rm -rf "$CG"
  exit 0
fi

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
