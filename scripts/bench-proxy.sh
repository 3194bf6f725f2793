#!/usr/bin/env bash
# Proxy benchmark, one core: the same upstream measured directly, through the
# bare forwarder (`gateway --bare`: the gateway's listener, pools and
# forwarding code, no policy layer), through the palisade gateway (release
# build, every layer), through nginx proxy_pass with a keep-alive upstream
# pool, and through HAProxy. Bounded wrk runs on loopback; the upstream and
# the proxy under test share one CPU (taskset), wrk runs on another.
#
# For each target: requests/s, p50 and p99 latency (wrk --latency), and the
# proxy process's CPU time per request (utime+stime from /proc/<pid>/stat,
# summed over the proxy's processes, divided by the requests wrk completed).
# "gateway / bare" (full stack over the bare forwarder) is palisade's share;
# callgrind gives the same split by instruction count (bench-layers.sh).
#
# Usage: scripts/bench-proxy.sh [duration=5s] [connections=64] [rounds=1]
# Env:   PROXY_CPU (default 1), WRK_CPU (default 0), PORT_BASE (default 18080),
#        CARGO_TARGET_DIR (where the release gateway is built),
#        GATEWAY_ARGS extra flags for both gateway processes,
#        UPSTREAM_SCHED=batch runs the upstream as SCHED_BATCH (chrt -b): it
#        then never preempts the proxy it shares the CPU with on wake-up, which
#        removes a co-location artifact (see docs/benchmarks.md) and leaves
#        each proxy's own cost.
# Installs wrk, nginx-light and haproxy with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-5s}
CONNS=${2:-64}
ROUNDS=${3:-1}
PROXY_CPU=${PROXY_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
BASE=${PORT_BASE:-18080}
UP_PORT=$BASE
GW_PORT=$((BASE + 1))
NGINX_PORT=$((BASE + 2))
HAPROXY_PORT=$((BASE + 3))
BARE_PORT=$((BASE + 4))
read -r -a EXTRA <<<"${GATEWAY_ARGS:-}"

WORK=$(mktemp -d /tmp/bench-proxy.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

# Every server runs in its own session (setsid), as the daemonized nginx
# does: with sched_autogroup_enabled=1 (the default on desktop-style kernels)
# processes of one session share a scheduling group, and a proxy sharing a
# group with its upstream is preempted by it on every write (ping-pong per
# request instead of batches), which would penalize whichever proxy happens
# not to daemonize.
# --- upstream: the gateway binary in upstream-only mode, one worker ---
SCHED=()
[ "${UPSTREAM_SCHED:-}" = batch ] && SCHED=(chrt -b 0)
RUST_LOG=warn setsid "${SCHED[@]}" taskset -c "$PROXY_CPU" "$GATEWAY" --demo-upstream-only --workers 1 \
  --listen "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_port "$UP_PORT"

# --- the gateway, one worker, access log off (nginx's is off too) ---
start_gateway "$PROXY_CPU" --workers 1 --no-access-log "${EXTRA[@]}" \
  --listen "127.0.0.1:$GW_PORT" --upstream "http://127.0.0.1:$UP_PORT"
GW_PID=$LAST_PID
wait_port "$GW_PORT"

# --- the bare forwarder: same binary and forwarding code, no layers ---
start_gateway "$PROXY_CPU" --bare --workers 1 --no-access-log "${EXTRA[@]}" \
  --listen "127.0.0.1:$BARE_PORT" --upstream "http://127.0.0.1:$UP_PORT"
BARE_PID=$LAST_PID
wait_port "$BARE_PORT"

# --- nginx: one worker, keep-alive pool to the upstream ---
start_nginx nginx1 1 "$NGINX_PORT" "$UP_PORT" "$PROXY_CPU"

# --- HAProxy: one thread, connection reuse to the upstream ---
cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  server up 127.0.0.1:$UP_PORT
CONF
setsid taskset -c "$PROXY_CPU" "$HAPROXY" -f "$WORK/haproxy.cfg" -q &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)
wait_port "$HAPROXY_PORT"

echo
echo "wrk -t1 -c$CONNS -d$DURATION, GET /; upstream + proxy on CPU $PROXY_CPU, wrk on CPU $WRK_CPU; upstream scheduling: ${UPSTREAM_SCHED:-normal}"
echo "$(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$HEADER"
echo "$RULE"
for _ in $(seq 1 "$ROUNDS"); do
  run "upstream direct" "$UP_PORT"
  run "bare forwarder (--bare)" "$BARE_PORT" "$BARE_PID"
  run "palisade gateway" "$GW_PORT" "$GW_PID"
  # shellcheck disable=SC2086
  run "nginx $NGINX_VERSION" "$NGINX_PORT" $NGINX_PIDS_nginx1
  run "HAProxy $HAPROXY_VERSION" "$HAPROXY_PORT" "$HAPROXY_PID"
done
