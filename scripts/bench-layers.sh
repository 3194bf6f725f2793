#!/usr/bin/env bash
# Per-layer cost of the gateway: the bare forwarder (`--bare`), the stack
# with no optional layer (`[stack] layers = []`: error mapping, upstream
# choice, upstream timeout with the body bounds, proxy), each pattern on
# alone, and the full stack, all forwarding GET / to the same demo upstream.
#
# MODE=callgrind (default): user-space instructions per request, steady on a
# busy machine. Each target runs under `valgrind --tool=callgrind`; after a
# warm-up of WARMUP the counters are zeroed (callgrind_control -z), wrk runs
# for DURATION, the counters are dumped (callgrind_control -d) and their
# total is divided by the requests wrk completed.
# MODE=wrk: the same targets natively, proxy and upstream on PROXY_CPU, wrk
# on WRK_CPU, CPU µs per request from /proc (as bench-proxy.sh).
#
# Extra targets (not in the default list, name them in ONLY): full-mt2 and
# full-tpc2, the full stack with 2 workers in each runtime mode; two-rr,
# two-p2c and two-p2c-retry, the full stack over two upstreams (the same
# one twice) balanced round robin without idempotent retries, p2c without
# them, and p2c with them (the defaults); full-noretry, the full stack
# without the idempotent retries' head copy; full-lean, also without the
# RateLimit fields on admitted responses; full-nolimit, the full stack
# without the per-upstream adaptive limits (`[limit] enabled = false`).
#
# One connection by default: with several, the requests handled per wake-up
# (and so the per-request share of epoll, scheduling and flushing) vary with
# the machine's load, and instruction counts moved by up to 30% between
# rounds; with one they repeat within 0.3%.
#
# Usage: scripts/bench-layers.sh [duration=5s] [connections=1] [rounds=1]
# Env:   MODE, WARMUP (default 3s), PROXY_CPU (1), WRK_CPU (0),
#        PORT_BASE (default 18180), ONLY (space-separated target names),
#        KEEP (a directory: keep each target's callgrind dump there, for
#        callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-5s}
CONNS=${2:-1}
ROUNDS=${3:-1}
MODE=${MODE:-callgrind}
WARMUP=${WARMUP:-3s}
PROXY_CPU=${PROXY_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
BASE=${PORT_BASE:-18180}
UP_PORT=$BASE
GW_PORT=$((BASE + 1))

WORK=$(mktemp -d /tmp/bench-layers.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
if [ "$MODE" = callgrind ] && ! command -v valgrind >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind
fi

RUST_LOG=warn setsid taskset -c "$PROXY_CPU" "$GATEWAY" --demo-upstream-only --workers 1 \
  --listen "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_port "$UP_PORT"
UP="http://127.0.0.1:$UP_PORT"

# The targets: name, then a TOML file written here ("-" for none), then flags.
cfg() { printf '%s\n' "$2" >"$WORK/$1.toml"; }
cfg none '[stack]
layers = []'
for layer in telemetry routes shed drain breaker batch scatter; do
  cfg "$layer" "[stack]
layers = [\"$layer\"]"
done
# Limits configured but far from limiting: the limiter's full decision path.
cfg ratelimit '[stack]
layers = ["ratelimit"]
[ratelimit.per_client]
rate = 1000000000
[ratelimit.global]
rate = 1000000000'
cfg access_log '[stack]
layers = ["telemetry"]
[log]
access_log = true
[access_log]
pipeline = true
path = "/dev/null"'
cfg hedge '[stack]
layers = ["hedge"]
[hedge]
enabled = true
delay = "50ms"'
cfg two-rr '[upstream]
balance = "round_robin"
retry_idempotent = false'
cfg two-p2c '[upstream]
retry_idempotent = false'
cfg two-p2c-retry '[upstream]'
cfg full '[ratelimit.per_client]
rate = 1000000000
[ratelimit.global]
rate = 1000000000'
cfg full-nolimit '[limit]
enabled = false
[ratelimit.per_client]
rate = 1000000000
[ratelimit.global]
rate = 1000000000'
cfg full-noretry '[upstream]
retry_idempotent = false
[ratelimit.per_client]
rate = 1000000000
[ratelimit.global]
rate = 1000000000'
cfg full-lean '[upstream]
retry_idempotent = false
[ratelimit]
headers = false
[ratelimit.per_client]
rate = 1000000000
[ratelimit.global]
rate = 1000000000'

TARGETS=(bare none telemetry access_log routes drain shed ratelimit breaker batch scatter hedge full)
[ -n "${ONLY:-}" ] && read -r -a TARGETS <<<"$ONLY"

args_of() {
  local t=$1
  local a=(--workers 1 --listen "127.0.0.1:$GW_PORT" --upstream "$UP")
  case $t in
    bare) a+=(--bare --no-access-log) ;;
    # The two ways to run 2 workers (valgrind runs the threads one at a
    # time, so this counts instructions, not parallelism).
    full-mt2) a=(--workers 2 --runtime multi-thread "${a[@]:2}" --no-access-log --config "$WORK/full.toml") ;;
    full-tpc2) a=(--workers 2 --runtime thread-per-core "${a[@]:2}" --no-access-log --config "$WORK/full.toml") ;;
    access_log) a+=(--config "$WORK/$t.toml") ;;
    # Hedging needs somewhere to hedge to: the same upstream twice.
    hedge | two-*) a+=(--upstream "$UP" --no-access-log --config "$WORK/$t.toml") ;;
    *) a+=(--no-access-log --config "$WORK/$t.toml") ;;
  esac
  printf '%s\n' "${a[@]}"
}

describe() {
  case $1 in
    bare) echo "bare forwarder (--bare)" ;;
    none) echo "stack, no optional layer" ;;
    full) echo "full stack (limits configured)" ;;
    full-nolimit) echo "full stack, [limit] enabled = false" ;;
    full-noretry) echo "full stack, upstream.retry_idempotent = false" ;;
    full-lean) echo "full stack, no retries, ratelimit.headers = false" ;;
    full-mt2) echo "full stack, 2 workers, multi-thread" ;;
    full-tpc2) echo "full stack, 2 workers, thread-per-core" ;;
    access_log) echo "+ telemetry + access log (pipeline)" ;;
    two-rr) echo "all layers (limits off), 2 upstreams, round robin, no retries" ;;
    two-p2c) echo "all layers (limits off), 2 upstreams, p2c, no retries" ;;
    two-p2c-retry) echo "all layers (limits off), 2 upstreams, p2c + retries" ;;
    *) echo "+ $1 alone" ;;
  esac
}

callgrind_one() {
  local t=$1
  mapfile -t args < <(args_of "$t")
  RUST_LOG=warn setsid valgrind --tool=callgrind --collect-atstart=yes \
    --callgrind-out-file="$WORK/cg.$t.%p" "$GATEWAY" "${args[@]}" 2>"$WORK/vg.$t.log" &
  local pid=$!
  PIDS+=("$pid")
  # valgrind starts slowly: up to 20 s.
  local up=""
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$GW_PORT") 2>/dev/null; then up=1; break; fi
    sleep 0.05
  done
  if [ -z "$up" ]; then
    echo "$t: the gateway never listened on $GW_PORT; valgrind log:" >&2
    cat "$WORK/vg.$t.log" >&2
    exit 1
  fi
  local url="http://127.0.0.1:$GW_PORT/"
  pin "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out reqs
  out=$(pin "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "$url")
  callgrind_control -d "$pid" >/dev/null 2>&1
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local errors
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  # SIGKILL: a draining gateway must not hold the port for the next target.
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local ir
  ir=$(cat "$WORK"/cg."$t".*.1 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$WORK"/cg."$t".*.1 "$KEEP/" 2>/dev/null || true
  fi
  rm -f "$WORK"/cg."$t".*
  printf "| %s | %s | %s |%s\n" "$(describe "$t")" "$(awk -v i="$ir" -v n="$reqs" 'BEGIN { printf "%.0f", i / n }')" "$reqs" "${errors:+ $errors}"
}

wrk_one() {
  local t=$1
  mapfile -t args < <(args_of "$t")
  start_gateway "$PROXY_CPU" "${args[@]}"
  local pid=$LAST_PID
  wait_port "$GW_PORT"
  run "$(describe "$t")" "$GW_PORT" "$pid"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

echo
echo "MODE=$MODE, wrk -t1 -c$CONNS -d$DURATION, GET /; $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
if [ "$MODE" = callgrind ]; then
  echo "| target | instructions/req | requests measured |"
  echo "|---|---:|---:|"
else
  echo "$HEADER"
  echo "$RULE"
fi
for _ in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    if [ "$MODE" = callgrind ]; then callgrind_one "$t"; else wrk_one "$t"; fi
  done
done
