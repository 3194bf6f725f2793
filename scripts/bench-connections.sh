#!/usr/bin/env bash
# Scale: memory per idle connection (HTTP/1.1 and HTTP/2), per request in
# flight, many idle connections at once, a connection storm, and the drain
# of held connections on SIGTERM; the gateway (thread-per-core default and
# multi-thread) and nginx through the same steps (examples/connhold.rs).
# Loopback only, every step bounded; prints markdown tables.
#
# Usage: scripts/bench-connections.sh [IDLE] [H2] [IN_FLIGHT] [STORM]
#   IDLE       idle HTTP/1.1 connections held at once (default 100000; capped
#              by the file-descriptor limit this script can raise, see below)
#   H2         idle HTTP/2 connections (default 5000)
#   IN_FLIGHT  slow requests held in flight through each proxy (default 5000)
#   STORM      connections opened at once in the storm (default 10000)
# Env: GATEWAY (a gateway binary to use as is), PORT_BASE (18500).
#
# The script raises its own RLIMIT_NOFILE (inherited by the servers and the
# client) as far as the hard limit allows; each held connection takes one
# descriptor in the server and one in the client, each request in flight two
# in a proxy. When the hard limit is too low (a container without
# CAP_SYS_RESOURCE), the counts are lowered to fit and the table says so.
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE=${1:-100000}
H2=${2:-5000}
IN_FLIGHT=${3:-5000}
STORM=${4:-10000}
BASE=${PORT_BASE:-18500}
UP=$BASE
GW=$((BASE + 1))
NG=$((BASE + 2))
NG2=$((BASE + 3))

hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
want=$((IDLE + 2000))
ulimit -n "$(( want < hard ? want : hard ))"
limit=$(ulimit -n)
fit=$((limit - 1000))
capped=""
if [ "$IDLE" -gt "$fit" ]; then
  capped="IDLE $IDLE lowered to $fit: RLIMIT_NOFILE hard limit $hard"
  IDLE=$fit
fi
if [ $((IN_FLIGHT * 2)) -gt "$fit" ]; then
  capped="$capped; IN_FLIGHT $IN_FLIGHT lowered to $((fit / 2))"
  IN_FLIGHT=$((fit / 2))
fi

. scripts/lib-serve.sh
need_nginx

cargo build --release --quiet --example connhold
if [ -z "${GATEWAY:-}" ]; then
  cargo build --release --quiet --example gateway
  GATEWAY=${CARGO_TARGET_DIR:-target}/release/examples/gateway
fi
CONNHOLD=${CARGO_TARGET_DIR:-target}/release/examples/connhold

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # nginx's master stops its workers on TERM (a KILLed master would leave
  # them serving); the workers are killed too if it does not.
  if [ -n "${NGINX_MASTER:-}" ]; then
    local workers
    workers=$(pgrep -P "$NGINX_MASTER" || true)
    kill -TERM "$NGINX_MASTER" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$NGINX_MASTER" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$NGINX_MASTER" $workers 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


# The upstream both proxies forward to: the demo upstream, its own process.
RUST_LOG=warn "$GATEWAY" --demo-upstream-only --listen "127.0.0.1:$UP" &
PIDS+=("$!")
wait_port "$UP"

# start_gateway MODE EXTRA_TOML: the gateway on its defaults (plus the
# connection caps these counts need); sets SERVER_PIDS.
start_gateway() {
  cat >"$WORK/gw.toml" <<TOML
[server]
runtime = "$1"
max_connections = $((IDLE + 1000))
max_in_flight = $((IN_FLIGHT + 1000))
$2
TOML
  RUST_LOG=warn setsid "$GATEWAY" --config "$WORK/gw.toml" --listen "127.0.0.1:$GW" \
    --upstream "http://127.0.0.1:$UP" --no-access-log &
  SERVER_PIDS=$!
  PIDS+=("$SERVER_PIDS")
  wait_port "$GW"
}

stop_gateway() {
  kill "$SERVER_PIDS" 2>/dev/null || true
  wait "$SERVER_PIDS" 2>/dev/null || true
}

# start_nginx: 2 workers (one per core, as the gateway's default), HTTP/1.1
# on NG and h2c on NG2 (nginx 1.22's cleartext `http2` listener speaks
# nothing else), /healthz answered by nginx itself; sets SERVER_PIDS (the
# workers: the master holds no connection) and NGINX_MASTER.
start_nginx() {
  mkdir -p "$WORK/ng"
  cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile $limit;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/ng/error.log crit;
events { worker_connections $limit; }
http {
  access_log off;
  client_body_temp_path $WORK/ng;
  proxy_temp_path $WORK/ng;
  fastcgi_temp_path $WORK/ng;
  uwsgi_temp_path $WORK/ng;
  scgi_temp_path $WORK/ng;
  keepalive_timeout 300s;
  keepalive_requests 100000;
  proxy_read_timeout 300s;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    listen 127.0.0.1:$NG2 http2;
    location = /healthz { return 200 "ok\n"; }
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
  "$NGINX" -c "$WORK/nginx.conf" -p "$WORK/ng"
  wait_port "$NG"
  NGINX_MASTER=$(cat "$WORK/nginx.pid")
  SERVER_PIDS=$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')
}

stop_nginx() {
  kill -QUIT "$NGINX_MASTER" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$NGINX_MASTER" 2>/dev/null || break; sleep 0.05; done
}

pid_args() { for p in $SERVER_PIDS; do printf -- '--pid %s ' "$p"; done; }
fds() { local n=0; for p in $SERVER_PIDS; do n=$((n + $(ls "/proc/$p/fd" | wc -l))); done; echo $n; }
# json KEY LINE: a number from connhold's JSON line.
json() { sed -n "s/.*\"$1\":\\([-0-9.eNa]*\\).*/\\1/p" <<<"$2"; }

IDLE_ROWS=()
H2_ROWS=()
FLIGHT_ROWS=()
STORM_ROWS=()
DRAIN_ROWS=()

# measure NAME PORT H2_PORT: every step against one running server.
measure() {
  local name=$1 port=$2 h2port=$3 line
  # Warm-up (allocator arenas, lazily built state), not counted; the wait
  # after it lets an allocator hand freed pages back (jemalloc's decay is
  # 10 s), so "before" is the warm baseline.
  "$CONNHOLD" --addr "127.0.0.1:$port" --connections 1000 --after-close 20 $(pid_args) >/dev/null
  line=$("$CONNHOLD" --addr "127.0.0.1:$port" --connections "$IDLE" $(pid_args) \
    --probe /healthz --probe /items/1 --after-close 1,5,15,30)
  local before held after1 after2
  before=$(json rss_before_kib "$line")
  held=$(json rss_held_kib "$line")
  after1=$(sed -n 's/.*\[30,\([0-9]*\)\].*/\1/p' <<<"$line")
  local per p99h p99p opened errs conns
  per=$(json bytes_per_connection "$line")
  p99h=$(sed -n 's/.*"probe_healthz":{"p50_ms":[0-9.]*,"p99_ms":\([0-9.]*\).*/\1/p' <<<"$line")
  p99p=$(sed -n 's/.*"probe_items_1":{"p50_ms":[0-9.]*,"p99_ms":\([0-9.]*\).*/\1/p' <<<"$line")
  opened=$(json open_per_s "$line")
  errs=$(json errors "$line")
  conns=$(json connections "$line")
  # A second round: what a first round leaves behind (allocator metadata
  # sized by the peak) must not grow round after round.
  line=$("$CONNHOLD" --addr "127.0.0.1:$port" --connections "$IDLE" $(pid_args) --after-close 30)
  after2=$(sed -n 's/.*\[30,\([0-9]*\)\].*/\1/p' <<<"$line")
  IDLE_ROWS+=("| $name | $conns | $errs | $opened | $(awk -v b="$before" -v h="$held" 'BEGIN{printf "%.1f → %.1f", b/1024, h/1024}') | **$(awk -v x="$per" 'BEGIN{printf "%.1f", x/1024}') KB** | $p99h | $p99p | $(awk -v b="$before" -v a="$after1" 'BEGIN{printf "%.1f (%+.0f%%)", a/1024, (a-b)*100/b}') | $(awk -v a1="$after1" -v a2="$after2" 'BEGIN{printf "%.1f (%+.0f%%)", a2/1024, (a2-a1)*100/a1}') |")

  # Each step waits after closing until freed pages are handed back, so
  # the next step's "before" is not memory about to be reused.
  line=$("$CONNHOLD" --addr "127.0.0.1:$h2port" --connections "$H2" --h2 $(pid_args) --after-close 20)
  H2_ROWS+=("| $name | $(json connections "$line") | $(json errors "$line") | **$(awk -v x="$(json bytes_per_connection "$line")" 'BEGIN{printf "%.1f", x/1024}') KB** |")

  line=$("$CONNHOLD" --addr "127.0.0.1:$port" --connections "$IN_FLIGHT" --in-flight \
    --path /delay/60000 $(pid_args) --hold 3s --after-close 20 --timeout 90s)
  FLIGHT_ROWS+=("| $name | $(json connections "$line") | $(json errors "$line") | **$(awk -v x="$(json bytes_per_connection "$line")" 'BEGIN{printf "%.1f", x/1024}') KB** |")

  local fd0 fd1
  fd0=$(fds)
  line=$("$CONNHOLD" --addr "127.0.0.1:$port" --connections "$STORM" --storm --timeout 60s)
  sleep 3
  fd1=$(fds)
  STORM_ROWS+=("| $name | $STORM | $(json ok "$line") | $(json refused "$line") | $(json failed_otherwise "$line") | $(json seconds "$line") s | $fd0 → $fd1 |")
}

# drain NAME PORT SIGNAL PID: hold IDLE connections, signal PID (nginx's
# master, not a worker), time the drain.
# Both get TERM, what a service manager sends.
drain() {
  local name=$1 port=$2 sig=$3 pid=$4 line
  line=$("$CONNHOLD" --addr "127.0.0.1:$port" --connections "$IDLE" --pid "$pid" \
    --sigterm --signal "$sig" --timeout 60s)
  DRAIN_ROWS+=("| $name | $(json connections "$line") | SIG$sig | $(json sigterm_all_closed_s "$line") s | $(json sigterm_exited_s "$line") s |")
}

# The in-flight step holds IN_FLIGHT slow requests: the adaptive limit
# would refuse most of them (that is its job), so it is off for that run.
POOL="[upstream]
pool_max_connections = $((IN_FLIGHT + 1000))
timeout = \"120s\"
[limit]
enabled = false"

start_gateway thread-per-core "$POOL"
measure "gateway (defaults, thread-per-core)" "$GW" "$GW"
stop_gateway
start_gateway thread-per-core "$POOL"
drain "gateway (defaults, thread-per-core)" "$GW" TERM "$SERVER_PIDS"
wait "$SERVER_PIDS" 2>/dev/null || true

start_gateway multi-thread "$POOL"
measure "gateway (multi-thread)" "$GW" "$GW"
stop_gateway

start_nginx
measure "nginx $NGINX_VERSION (2 workers)" "$NG" "$NG2"
drain "nginx $NGINX_VERSION (2 workers)" "$NG" TERM "$NGINX_MASTER"
NGINX_MASTER_PID=$NGINX_MASTER
for _ in $(seq 1 100); do kill -0 "$NGINX_MASTER_PID" 2>/dev/null || break; sleep 0.05; done

echo
[ -n "$capped" ] && echo "**Counts lowered to fit:** $capped." && echo
echo "Idle HTTP/1.1 keep-alive connections (one request each, then silence); RSS of the server processes:"
echo
echo "| server | connections | errors | opened/s | RSS MiB before → held | per connection | /healthz p99 ms | proxied p99 ms | RSS MiB 30 s after close (vs before) | after a 2nd round (vs 1st) |"
echo "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${IDLE_ROWS[@]}"
echo
echo "Idle HTTP/2 (prior knowledge) connections, one request each:"
echo
echo "| server | connections | errors | per connection |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${H2_ROWS[@]}"
echo
echo "Requests in flight (\`/delay/60000\` held through the proxy to the demo upstream):"
echo
echo "| server | requests | errors | per request |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${FLIGHT_ROWS[@]}"
echo
echo "Connection storm (one request each, all opened at once; descriptors of the server before → 3 s after):"
echo
echo "| server | connections | ok | refused | failed otherwise | took | server fds |"
echo "|---|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${STORM_ROWS[@]}"
echo
echo "Drain of held idle connections on the shutdown signal:"
echo
echo "| server | connections | signal | all closed after | exited after |"
echo "|---|---:|---|---:|---:|"
printf '%s\n' "${DRAIN_ROWS[@]}"
