#!/usr/bin/env bash
# Overload: goodput in front of an upstream with a fixed capacity. The
# demo upstream with `[demo] slots = SLOTS, service_time = SERVICE_TIME`
# (8 and 20ms: 400 req/s; requests wait FIFO in an unbounded queue and are
# served even after their client left) is offered load by examples/loadgen.rs:
# open loop at RATE req/s, each client giving up after DEADLINE. Targets:
#   nothing          loadgen straight at the upstream
#   gateway          the gateway on its defaults in front of it (adaptive
#                    per-upstream limits on)
#   gateway no limit the gateway with `[limit] enabled = false`
#   gateway static   the gateway with `[server] max_in_flight = MAX_IN_FLIGHT`
#                    and no adaptive limit (a static limit set by hand)
#   nginx            a plain `proxy_pass` (no limits configured)
# Each target gets a fresh upstream (a backlog left by the previous one
# would still be served) and its proxy is stopped after its run. Prints a
# markdown table; goodput is 2xx answered within the deadline, per second
# of DURATION (WARMUP is sent first and not counted).
#
# Usage: scripts/bench-overload.sh [rate] [duration=10s] [deadline=1s] [warmup=2s]
# Env:   SCENARIO=overload (default: rate 1200, 3x capacity) or half-load
#        (rate 200, 0.5x); SLOTS (8), SERVICE_TIME (20ms), MAX_IN_FLIGHT (12),
#        PATH_UNDER_TEST (/items/1), PORT_BASE (18780), GATEWAY (a binary).
# At RATE x DEADLINE outstanding requests loadgen holds one connection each;
# if it reports "Too many open files", raise the limit first: ulimit -n 65536.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIO=${SCENARIO:-overload}
case "$SCENARIO" in
  overload) DEFAULT_RATE=1200 ;;
  half-load) DEFAULT_RATE=200 ;;
  *)
    echo "SCENARIO must be overload or half-load, not $SCENARIO" >&2
    exit 2
    ;;
esac
RATE=${1:-$DEFAULT_RATE}
DURATION=${2:-10s}
DEADLINE=${3:-1s}
WARMUP=${4:-2s}
SLOTS=${SLOTS:-8}
SERVICE_TIME=${SERVICE_TIME:-20ms}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-12}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/items/1}
BASE=${PORT_BASE:-18780}
# bench-lib.sh's wrk helpers are not used here.
CONNS=0
WRK_CPU=""

WORK=$(mktemp -d /tmp/bench-overload.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

cargo build --release --quiet --example loadgen
LOADGEN=${CARGO_TARGET_DIR:-target}/release/examples/loadgen

secs() { # "10s" / "500ms" / "2m" -> seconds, rounded up
  awk -v d="$1" 'BEGIN {
    n = d + 0; u = d; sub(/^[0-9.]+/, "", u)
    s = (u == "ms") ? n / 1000 : (u == "m") ? n * 60 : (u == "us") ? n / 1e6 : n
    printf "%d", (s == int(s)) ? s : int(s) + 1 }'
}
CAPACITY=$(awk -v s="$SLOTS" -v t="$(awk -v d="$SERVICE_TIME" 'BEGIN { n = d + 0; u = d; sub(/^[0-9.]+/, "", u); print (u == "ms") ? n / 1000 : (u == "us") ? n / 1e6 : n }')" \
  'BEGIN { printf "%d", s / t }')
# loadgen stops by itself; this only bounds a broken run.
RUN_BOUND=$(($(secs "$WARMUP") + $(secs "$DURATION") + $(secs "$DEADLINE") + 30))

printf '[demo]\nslots = %s\nservice_time = "%s"\n' "$SLOTS" "$SERVICE_TIME" >"$WORK/upstream.toml"
printf '[server]\nmax_in_flight = %s\n[limit]\nenabled = false\n' "$MAX_IN_FLIGHT" >"$WORK/static.toml"
printf '[limit]\nenabled = false\n' >"$WORK/nolimit.toml"

# stop PID: SIGTERM, SIGKILL after 5 s; waits for the exit so the port is free.
stop() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# start_upstream: a fresh demo upstream on BASE with the capacity model;
# sets UPSTREAM_PID.
start_upstream() {
  start_gateway "" --demo-upstream-only --no-access-log --listen "127.0.0.1:$BASE" \
    --config "$WORK/upstream.toml"
  UPSTREAM_PID=$LAST_PID
  wait_port "$BASE"
  local want="\"slots\":$SLOTS,"
  if ! curl -fsS "http://127.0.0.1:$BASE/demo/faults" | grep -q "$want"; then
    # A gateway whose start-up does not pass `[demo]` capacity on yet:
    # the run-time switch sets the same model.
    echo "note: [demo] slots not applied at start; set through /demo/faults" >&2
    curl -fsS -X PUT "http://127.0.0.1:$BASE/demo/faults?slots=$SLOTS&service_time=$SERVICE_TIME" |
      grep -q "$want"
  fi
}

# start_nginx_fg PORT: nginx in the foreground with a plain proxy_pass to
# the upstream (HTTP/1.0, a connection per request, no limits: the default
# proxy settings). worker_connections is raised so the event loop's
# connection table is not itself a concurrency limit; sets NGINX_PID.
start_nginx_fg() {
  local port=$1 dir="$WORK/nginx-fg"
  mkdir -p "$dir"
  cat >"$dir.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $dir;
  proxy_temp_path $dir;
  fastcgi_temp_path $dir;
  uwsgi_temp_path $dir;
  scgi_temp_path $dir;
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://127.0.0.1:$BASE;
    }
  }
}
CONF
  "$NGINX" -c "$dir.conf" -p "$dir" 2>/dev/null &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_port "$port"
}

# measure NAME PORT: one loadgen run against PORT; prints a table row.
measure() {
  local name=$1 port=$2 out
  out=$(timeout "$RUN_BOUND" "$LOADGEN" --url "http://127.0.0.1:$port$PATH_UNDER_TEST" \
    --rate "$RATE" --duration "$DURATION" --deadline "$DEADLINE" --warmup "$WARMUP")
  echo "$out" >>"$WORK/runs.jsonl"
  jq -r --arg name "$name" --argjson cap "$CAPACITY" '
    def ms: if . == null then "-" else "\(.) ms" end;
    "| \($name) | \(.goodput_rps) | \((.goodput_rps * 100 / $cap) | round)% | \(.good_p99_ms | ms)"
    + " | \(.rejected) | \(.rejected_p99_ms | ms) | \(.timed_out) |"
    + (if .errors > 0 then " errors: \(.errors)" else "" end)
    + (if (.other_status | length) > 0 then " other: \(.other_status | tostring)" else "" end)' <<<"$out"
}

echo "scenario $SCENARIO: $RATE req/s open loop at an upstream of $SLOTS slots x $SERVICE_TIME" \
  "(capacity $CAPACITY req/s), deadline $DEADLINE, $DURATION measured after $WARMUP warm-up," \
  "GET $PATH_UNDER_TEST; nginx $NGINX_VERSION"
echo "| target | goodput req/s | % of capacity | good p99 | rejected | rejected p99 | timed out |"
echo "|---|---:|---:|---:|---:|---:|---:|"

start_upstream
measure "nothing (upstream direct)" "$BASE"
stop "$UPSTREAM_PID"

# measure_gateway LABEL PORT [FLAGS...]: the gateway with FLAGS in front of
# a fresh upstream.
measure_gateway() {
  local label=$1 port=$2
  shift 2
  start_upstream
  start_gateway "" --no-access-log --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$BASE" "$@"
  PROXY=$LAST_PID
  wait_port "$port"
  measure "$label" "$port"
  stop "$PROXY"
  stop "$UPSTREAM_PID"
}

measure_gateway "gateway (defaults)" "$((BASE + 1))"
measure_gateway "gateway, [limit] enabled = false" "$((BASE + 4))" --config "$WORK/nolimit.toml"
measure_gateway "gateway max_in_flight=$MAX_IN_FLIGHT, no adaptive limit" "$((BASE + 2))" \
  --config "$WORK/static.toml"

start_upstream
start_nginx_fg "$((BASE + 3))"
measure "nginx proxy_pass" "$((BASE + 3))"
stop "$NGINX_PID"
stop "$UPSTREAM_PID"
