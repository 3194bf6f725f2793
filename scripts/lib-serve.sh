# Sourced by the scripts that start servers (run from the repository root).
#
# wait_port PORT: waits, at most 10 s, until something accepts on
# 127.0.0.1:PORT; exits the script if nothing does.
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}

# need_nginx: installs nginx-light when nginx is missing; sets NGINX (the
# binary) and NGINX_VERSION.
need_nginx() {
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
}
