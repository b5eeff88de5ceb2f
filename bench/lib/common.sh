# lib/common.sh - what the daemon benchmarks share (sourced, not run): a free
# loopback port, waiting for a URL to answer, and the processes and folder
# to clean up at exit (add pids to $pids; $dir is made here).
dir=$(mktemp -d /tmp/mbd-bench.XXXXXX)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_up() {
  i=0
  until curl -s -o /dev/null "$1"; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "no answer from $1" >&2; exit 1; }
    sleep 0.05
  done
}
