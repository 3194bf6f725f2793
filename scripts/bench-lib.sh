# Shared by scripts/bench-*.sh (sourced, not run): tool installation, port
# waits, CPU accounting from /proc and one bounded wrk measurement per call.
# Expects DURATION, CONNS, WRK_CPU (empty: unpinned) and WORK (a temp dir)
# to be set by the caller. Env: GATEWAY (a gateway binary to use as is),
# WRK_THREADS (default 1), PATH_UNDER_TEST (default /), SYSCALLS=1 (add
# the proxy's system calls per request, counted by `perf stat` on the
# kernel's syscall tracepoints while wrk runs; needs perf and tracefs).

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
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
HAPROXY_VERSION=$("$HAPROXY" -v | awk 'NR==1 {print $3}' | cut -d- -f1)

# GATEWAY=path measures a given binary (an older build, for before/after in
# one run) instead of building the current one.
if [ -z "${GATEWAY:-}" ]; then
  cargo build --release --quiet --example gateway
  GATEWAY=${CARGO_TARGET_DIR:-target}/release/examples/gateway
fi
HZ=$(getconf CLK_TCK)

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/nginx*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. scripts/lib-serve.sh

# CPU ticks of a set of pids (all their threads): "utime stime", summed.
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

# pin CPU CMD...: CMD under taskset when CPU is set, as is otherwise.
pin() {
  local cpu=$1
  shift
  if [ -n "$cpu" ]; then taskset -c "$cpu" "$@"; else "$@"; fi
}

# start_nginx NAME WORKERS PORT UPSTREAM_PORT CPU: a daemonized nginx with a
# keep-alive pool to the upstream; sets NGINX_PIDS_<NAME> (master + workers).
start_nginx() {
  local name=$1 workers=$2 port=$3 up=$4 cpu=$5
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name.conf" <<CONF
worker_processes $workers;
daemon on;
pid $WORK/$name.pid;
error_log $WORK/$name/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$name;
  proxy_temp_path $WORK/$name;
  fastcgi_temp_path $WORK/$name;
  uwsgi_temp_path $WORK/$name;
  scgi_temp_path $WORK/$name;
  upstream up {
    server 127.0.0.1:$up;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$port reuseport;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
  pin "$cpu" "$NGINX" -c "$WORK/$name.conf" -p "$WORK/$name" 2>/dev/null
  wait_port "$port"
  local master
  master=$(cat "$WORK/$name.pid")
  printf -v "NGINX_PIDS_$name" '%s' "$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# start_gateway CPU ARGS...: the gateway under setsid (own autogroup, as the
# daemonized nginx); sets LAST_PID.
start_gateway() {
  local cpu=$1
  shift
  local pre=()
  [ -n "$cpu" ] && pre=(taskset -c "$cpu")
  RUST_LOG=warn setsid "${pre[@]}" "$GATEWAY" "$@" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

HEADER="| target | req/s | p50 | p99 | CPU µs/req | of which user |"
RULE="|---|---:|---:|---:|---:|---:|"
if [ "${SYSCALLS:-}" = 1 ]; then
  if ! command -v perf >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq linux-perf
  fi
  HEADER="$HEADER syscalls/req | of which epoll_wait |"
  RULE="$RULE---:|---:|"
fi

# syscalls_start OUT PIDS...: in the background, counts the pids' system
# calls (all threads) into OUT until syscalls_stop; sets LAST_PERF.
syscalls_start() {
  local out=$1
  shift
  perf stat -x, -o "$out" -e raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait \
    -p "$(echo "$@" | tr ' ' ',')" -- sleep 600 >/dev/null 2>&1 &
  LAST_PERF=$!
  # perf attaches before it starts its child; wait for the child.
  for _ in $(seq 1 100); do
    pgrep -P "$LAST_PERF" >/dev/null && return 0
    sleep 0.02
  done
}

# syscalls_stop: ends the count (perf writes it when its child exits).
syscalls_stop() {
  pkill -P "$LAST_PERF" sleep 2>/dev/null || true
  wait "$LAST_PERF" 2>/dev/null || true
}

# syscalls_per_req OUT REQUESTS: "total | epoll_wait" per request.
syscalls_per_req() {
  # No count (perf could not attach, say tracefs is not readable): dashes.
  if [ ! -s "$1" ]; then
    printf -- "- | -"
    return 0
  fi
  awk -F, -v n="$2" '
    $3 ~ /raw_syscalls:sys_enter/ { t = $1 }
    $3 ~ /sys_enter_epoll_wait/ { e = $1 }
    END { if (n > 0 && t != "") printf "%.2f | %.3f", t / n, e / n; else printf "- | -" }' "$1"
}

# run NAME PORT PROXY_PIDS...: 1 s warm-up, then one wrk run of DURATION;
# prints a table row. CPU per request is the pids' utime+stime over the
# requests wrk completed.
run() {
  local name=$1 port=$2
  shift 2
  local url="http://127.0.0.1:$port${PATH_UNDER_TEST:-/}"
  pin "$WRK_CPU" wrk -t"${WRK_THREADS:-1}" -c"$CONNS" -d1s "$url" >/dev/null
  local t0="0 0"
  [ $# -gt 0 ] && t0=$(ticks "$@")
  local perf_out="$WORK/perf.$port" counting=""
  if [ "${SYSCALLS:-}" = 1 ] && [ $# -gt 0 ]; then
    syscalls_start "$perf_out" "$@"
    counting=1
  fi
  local out
  out=$(pin "$WRK_CPU" wrk -t"${WRK_THREADS:-1}" -c"$CONNS" -d"$DURATION" --latency "$url")
  local t1="0 0"
  [ $# -gt 0 ] && t1=$(ticks "$@")
  [ -n "$counting" ] && syscalls_stop
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
  local sys=""
  if [ "${SYSCALLS:-}" = 1 ]; then
    sys=" - | - |"
    [ -n "$counting" ] && sys=" $(syscalls_per_req "$perf_out" "$reqs") |"
  fi
  printf "| %s | %s | %s | %s | %s | %s |%s%s\n" "$name" "$rps" "$p50" "$p99" "$cpu" "$user" "$sys" "${errors:+ $errors}"
}
