# Sourced by the scripts that start servers (run from the repository root):
# wait_port PORT waits, at most 10 s, until something accepts on
# 127.0.0.1:PORT, and exits the script if nothing does.
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}
