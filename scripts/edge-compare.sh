#!/usr/bin/env bash
# Issue-23 comparison: the hostile requests of tests/common/hostile.rs sent
# to nginx and to the gateway, both in front of the same demo upstream, and
# what each answered, as one markdown table (case | nginx | palisade). A
# cell lists the status line of every response read before the server
# closed the connection, or `closed` / `reset` / `timeout` when there was
# none. Loopback only; every server is stopped on exit.
#
# Usage: scripts/edge-compare.sh
# Env:   PORT_BASE (18380: upstream, +1 nginx, +2 gateway), TIMEOUT (5,
#        seconds per exchange), GATEWAY (a gateway binary to use as is)
# Installs nginx-light with apt-get when nginx is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${PORT_BASE:-18380}
TIMEOUT=${TIMEOUT:-5}
UP_PORT=$BASE
NGINX_PORT=$((BASE + 1))
GW_PORT=$((BASE + 2))

. scripts/lib-serve.sh
need_nginx

TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${GATEWAY:-}" ]; then
  cargo build --release --quiet --example gateway --example edgecheck
  GATEWAY=$TARGET/release/examples/gateway
else
  cargo build --release --quiet --example edgecheck
fi
EDGECHECK=$TARGET/release/examples/edgecheck

WORK=$(mktemp -d /tmp/edge-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


# --- the demo upstream, shared by both proxies ---
RUST_LOG=warn "$GATEWAY" --demo-upstream-only --no-access-log --workers 1 \
  --listen "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"

# --- nginx: stock request limits, proxy_pass over HTTP/1.1 keep-alive ---
mkdir -p "$WORK/tmp"
cat >"$WORK/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp/body;
  proxy_temp_path $WORK/tmp/proxy;
  fastcgi_temp_path $WORK/tmp/fastcgi;
  uwsgi_temp_path $WORK/tmp/uwsgi;
  scgi_temp_path $WORK/tmp/scgi;
  upstream demo {
    server 127.0.0.1:$UP_PORT;
    keepalive 16;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
"$NGINX" -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" &
PIDS+=($!)
wait_port "$NGINX_PORT"

# --- the gateway, defaults, access log off ---
RUST_LOG=warn "$GATEWAY" --no-access-log --listen "127.0.0.1:$GW_PORT" \
  --upstream "http://127.0.0.1:$UP_PORT" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_port "$GW_PORT"

"$EDGECHECK" --addr "127.0.0.1:$NGINX_PORT" --timeout "$TIMEOUT" >"$WORK/nginx.rows"
"$EDGECHECK" --addr "127.0.0.1:$GW_PORT" --timeout "$TIMEOUT" >"$WORK/palisade.rows"

echo "| case | nginx $NGINX_VERSION | palisade |"
echo "|---|---|---|"
# Rows are "| case | cell |", in the same case order from both runs.
paste -d '\t' "$WORK/nginx.rows" "$WORK/palisade.rows" |
  awk -F '\t' '{
    split($1, a, " \\| "); split($2, b, " \\| ");
    sub(/^\| /, "", a[1]); sub(/ \|$/, "", a[2]); sub(/ \|$/, "", b[2]);
    printf "| %s | %s | %s |\n", a[1], a[2], b[2]
  }'
