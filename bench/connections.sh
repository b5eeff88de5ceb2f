#!/bin/sh
# connections.sh [BUILD] - how many idle keep-alive connections modelbufd
# holds and what each costs, against nginx holding the same number in the
# same run (worker_processes 1, one connection each).
#   N (10000): connections opened, each after one request (GET /health), so
#      every one is a served keep-alive connection, then held idle.
#   STREAMS (500): server-sent event streams (GET /api/events) held too.
# Prints, for each server, its resident memory before and with the
# connections held, the memory per connection, its thread count, and the
# latency of a fresh GET /health while everything is held; then the ratio
# modelbufd/nginx of memory per connection. The descriptor limit is raised
# to its hard maximum for the client and both servers.
set -eu
build=${1:-${MODELBUF_BUILD:-build}}
n=${N:-10000}
streams=${STREAMS:-500}
. "$(dirname "$0")/lib/common.sh"
ulimit -n "$(ulimit -Hn)"

mb=$(port)
cat > "$dir/mb.yaml" <<CONF
listen: 127.0.0.1:$mb
devices: [{host: true}]
log_level: warn
limits: {max_connections: $((n + streams + 100)), idle_timeout: 10m}
CONF
"$build/daemon/modelbufd" --config "$dir/mb.yaml" 2>"$dir/mb.log" &
mbpid=$!
pids="$pids $mbpid"
wait_up "http://127.0.0.1:$mb/health"

nginx=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
ngpid=""
if [ -n "$nginx" ]; then
  ng=$(port)
  cat > "$dir/ng.conf" <<CONF
daemon off; worker_processes 1; pid $dir/ng.pid; error_log $dir/ng.err;
worker_rlimit_nofile $((2 * n + 2 * streams + 1000));
events { worker_connections $((n + streams + 100)); }
http { access_log off; keepalive_timeout 10m; keepalive_requests 1000000;
  server { listen 127.0.0.1:$ng;
    location /health { return 200 "{\"status\": \"ok\"}\n"; }
    location /api/events { return 200 "ok\n"; } } }
CONF
  "$nginx" -e "$dir/ng.err" -p "$dir" -c "$dir/ng.conf" &
  pids="$pids $!"
  wait_up "http://127.0.0.1:$ng/health"
  # the worker process holds the connections
  sleep 0.2
  ngpid=$(pgrep -P "$(cat "$dir/ng.pid")" | head -n 1)
fi

/usr/bin/python3 - "$n" "$streams" "$mb" "$mbpid" "${ng:-}" "$ngpid" <<'PY'
import os, resource, socket, sys, time
n, streams, mb, mbpid, ng, ngpid = sys.argv[1:7]
n, streams = int(n), int(streams)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

def rss(pid):
    return status(pid, "VmRSS") * 1024

def health_ms(port):
    t = time.time()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return (time.time() - t) * 1000

def hold(port, pid, label):
    port, pid = int(port), int(pid)
    before, threads = rss(pid), status(pid, "Threads")
    socks = []
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    t0 = time.time()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        socks.append(s)
    for s in socks:  # read each answer: a served, now idle, keep-alive connection
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int([l.split(b":")[1] for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length:")][0])
        while len(body) < length:
            body += s.recv(4096)
    opened = time.time() - t0
    sse = []
    for i in range(streams):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        sse.append(s)
    for s in sse:
        s.recv(4096)
    time.sleep(0.5)
    held, threads_held = rss(pid), status(pid, "Threads")
    lat = sorted(health_ms(port) for _ in range(20))
    per = (held - before) / (n + streams)
    print(f"{label:10s} connections={n} streams={streams} open_s={opened:.2f} "
          f"rss_before_mib={before / 2**20:.1f} rss_held_mib={held / 2**20:.1f} "
          f"per_connection_bytes={per:.0f} threads={threads}->{threads_held} "
          f"health_p50_ms={lat[10]:.2f} health_max_ms={lat[-1]:.2f}")
    for s in socks + sse:
        s.close()
    return per

m = hold(mb, mbpid, "modelbufd")
if ng:
    g = hold(ng, ngpid, "nginx")
    print(f"modelbufd/nginx memory per connection ratio: {m / g:.2f}" if g > 0 else
          "nginx memory per connection: below measure")
PY
