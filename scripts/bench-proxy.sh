#!/usr/bin/env bash
# Proxy benchmark: the same upstream measured directly, through the palisade
# gateway (release build), through nginx proxy_pass with a keep-alive upstream
# pool, and through HAProxy. Bounded wrk runs on loopback; the upstream and
# the proxy under test share one CPU (taskset), wrk runs on another.
#
# For each target: requests/s, p50 and p99 latency (wrk --latency), and the
# proxy process's CPU time per request (utime+stime from /proc/<pid>/stat,
# summed over the proxy's processes, divided by the requests wrk completed).
#
# Usage: scripts/bench-proxy.sh [duration=5s] [connections=64] [rounds=1]
# Env:   PROXY_CPU (default 1), WRK_CPU (default 0), PORT_BASE (default 18080),
#        CARGO_TARGET_DIR (where the release gateway is built),
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
PATH_UNDER_TEST=/

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release --quiet --example gateway
TARGET_DIR=${CARGO_TARGET_DIR:-target}
GATEWAY="$TARGET_DIR/release/examples/gateway"

WORK=$(mktemp -d /tmp/bench-proxy.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}

# CPU ticks of a set of pids: "utime stime", summed.
ticks() {
  local u=0 s=0
  for p in "$@"; do
    # Fields after the ")" of comm: state is 1st, utime 12th, stime 13th.
    local rest
    rest=$(sed 's/.*) //' "/proc/$p/stat")
    set -- $rest
    u=$((u + ${12}))
    s=$((s + ${13}))
  done
  echo "$u $s"
}
HZ=$(getconf CLK_TCK)

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
RUST_LOG=warn setsid taskset -c "$PROXY_CPU" "$GATEWAY" --workers 1 --no-access-log \
  --listen "127.0.0.1:$GW_PORT" --upstream "http://127.0.0.1:$UP_PORT" &
GW_PID=$!
PIDS+=($GW_PID)
wait_port "$GW_PORT"

# --- nginx: one worker, keep-alive pool to the upstream ---
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
taskset -c "$PROXY_CPU" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK/nginx" 2>/dev/null
wait_port "$NGINX_PORT"
NGINX_PIDS=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
NGINX_PIDS="$(cat "$WORK/nginx.pid") $NGINX_PIDS"

# --- HAProxy: one thread, connection reuse to the upstream ---
cat >"$WORK/haproxy.cfg" <<EOF
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
EOF
setsid taskset -c "$PROXY_CPU" "$HAPROXY" -f "$WORK/haproxy.cfg" -q &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)
wait_port "$HAPROXY_PORT"

# run NAME PORT PROXY_PIDS...
run() {
  local name=$1 port=$2
  shift 2
  local url="http://127.0.0.1:$port$PATH_UNDER_TEST"
  # Warm-up: fill connection pools, fault in code.
  taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
  local t0="0 0"
  [ $# -gt 0 ] && t0=$(ticks "$@")
  local out
  out=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url")
  local t1="0 0"
  [ $# -gt 0 ] && t1=$(ticks "$@")
  local reqs rps p50 p99 errors
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local cpu="-" user="-"
  if [ $# -gt 0 ] && [ "$reqs" -gt 0 ]; then
    read -r u0 s0 <<<"$t0"
    read -r u1 s1 <<<"$t1"
    cpu=$(awk -v d=$((u1 - u0 + s1 - s0)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", d / hz / n * 1e6 }')
    user=$(awk -v d=$((u1 - u0)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", d / hz / n * 1e6 }')
  fi
  printf "| %-16s | %7s | %8s | %8s | %9s | %7s |%s\n" "$name" "$rps" "$p50" "$p99" "$cpu" "$user" "${errors:+ $errors}"
}

echo
echo "wrk -t1 -c$CONNS -d$DURATION, GET $PATH_UNDER_TEST; upstream + proxy on CPU $PROXY_CPU, wrk on CPU $WRK_CPU; upstream scheduling: ${UPSTREAM_SCHED:-normal}"
echo "$(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| target           |   req/s |      p50 |      p99 | CPU µs/req | of which user |"
echo "|------------------|--------:|---------:|---------:|-----------:|--------:|"
for _ in $(seq 1 "$ROUNDS"); do
  run "upstream direct" "$UP_PORT"
  run "palisade gateway" "$GW_PORT" "$GW_PID"
  # shellcheck disable=SC2086
  run "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')" "$NGINX_PORT" $NGINX_PIDS
  run "HAProxy $("$HAPROXY" -v | awk 'NR==1 {print $3}' | cut -d- -f1)" "$HAPROXY_PORT" "$HAPROXY_PID"
done
