#!/usr/bin/env bash
# Scaling across cores, nothing pinned: nginx with 1 and 2 worker processes,
# HAProxy with 2 threads, and the gateway (full stack, and the bare
# forwarder) with 2 workers in both of its modes: one multi-thread runtime
# (`--runtime multi-thread`) and one current-thread runtime per worker on
# its own SO_REUSEPORT listener (`--runtime thread-per-core`). The same
# demo upstream (one worker) serves all; wrk, the upstream and the proxy
# share the machine's CPUs as the scheduler likes.
#
# Usage: scripts/bench-scale.sh [duration=5s] [connections=64] [rounds=1] [workers=2]
# Env:   PORT_BASE (default 18280), WRK_THREADS (default 1), ONLY (target
#        names: nginx1 nginx2 haproxy mt tpc bare-mt bare-tpc).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-5s}
CONNS=${2:-64}
ROUNDS=${3:-1}
N=${4:-2}
WRK_CPU=""
BASE=${PORT_BASE:-18280}
UP_PORT=$BASE

WORK=$(mktemp -d /tmp/bench-scale.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

RUST_LOG=warn setsid "$GATEWAY" --demo-upstream-only --workers 1 --listen "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_port "$UP_PORT"
UP="http://127.0.0.1:$UP_PORT"

TARGETS=(nginx1 nginx2 haproxy mt tpc bare-mt bare-tpc)
[ -n "${ONLY:-}" ] && read -r -a TARGETS <<<"$ONLY"
declare -A PORT NAME TPIDS
port=$((BASE + 1))
for t in "${TARGETS[@]}"; do
  PORT[$t]=$port
  case $t in
    nginx1 | nginx2)
      start_nginx "$t" "${t#nginx}" "$port" "$UP_PORT" ""
      var="NGINX_PIDS_$t"
      TPIDS[$t]=${!var}
      NAME[$t]="nginx $NGINX_VERSION, worker_processes ${t#nginx}"
      ;;
    haproxy)
      cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread $N
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server up 127.0.0.1:$UP_PORT
CONF
      setsid "$HAPROXY" -f "$WORK/haproxy.cfg" -q &
      TPIDS[$t]=$!
      PIDS+=($!)
      wait_port "$port"
      NAME[$t]="HAProxy $HAPROXY_VERSION, nbthread $N"
      ;;
    mt | tpc | bare-mt | bare-tpc)
      mode=multi-thread
      [ "${t%tpc}" != "$t" ] && mode=thread-per-core
      extra=()
      [ "${t#bare}" != "$t" ] && extra=(--bare)
      start_gateway "" --workers "$N" --runtime "$mode" --no-access-log "${extra[@]}" \
        --listen "127.0.0.1:$port" --upstream "$UP"
      TPIDS[$t]=$LAST_PID
      wait_port "$port"
      NAME[$t]="${extra:+bare }gateway, $N workers, $mode"
      ;;
  esac
  port=$((port + 1))
done

echo
echo "wrk -t${WRK_THREADS:-1} -c$CONNS -d$DURATION, GET /; nothing pinned; $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$HEADER"
echo "$RULE"
for _ in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    run "${NAME[$t]}" "${PORT[$t]}" ${TPIDS[$t]}
  done
done
