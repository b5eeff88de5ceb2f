#!/bin/sh
# proxy.sh [BUILD] (default $MODELBUF_BUILD, else build) - modelbufd's proxy overhead, measured in one run against
# baselines on the same machine:
#   direct   client -> upstream
#   nginx    client -> nginx (plain reverse proxy, upstream keep-alive) -> upstream
#   modelbufd client -> modelbufd /m/up/... (lease per request) -> upstream
# The upstream is an nginx answering a small fixed body (fast, so that the
# proxies' cost shows). Load: bench/httpload.c, closed loop, keep-alive.
# Without nginx installed the nginx row is skipped and ratios are to direct.
# Env: CONNS (64), SECS (5), PERF (a file: `perf record -g` of modelbufd
# while it is measured, for `perf report -i FILE`; build with
# -Dbuildtype=debugoptimized for symbols).
set -eu
build=${1:-${MODELBUF_BUILD:-build}}
conns=${CONNS:-64}
secs=${SECS:-5}
. "$(dirname "$0")/lib/common.sh"

cc -O2 -o "$dir/httpload" bench/httpload.c -lcurl -lpthread
nginx=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
if [ -z "$nginx" ]; then
  echo "nginx is not installed: the upstream is modelbufd's test worker and the baseline is direct"
fi

up=$(port); px=$(port); mb=$(port)
if [ -n "$nginx" ]; then
  cat > "$dir/up.conf" <<CONF
daemon off; worker_processes 1; pid $dir/up.pid; error_log $dir/up.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$up; keepalive_requests 1000000;
    location /health { return 200 "ok\n"; }
    location / { return 200 "{\"answer\": \"hello from the upstream\"}\n"; } } }
CONF
  cat > "$dir/px.conf" <<CONF
daemon off; worker_processes 2; pid $dir/px.pid; error_log $dir/px.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$up; keepalive 128; }
  server { listen 127.0.0.1:$px; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
  upcmd="[$nginx, -e, $dir/up.err, -p, $dir, -c, $dir/up.conf]"
else
  upcmd="[/usr/bin/python3, $(pwd)/tests/e2e/workers/test_worker.py, --port, \"$up\", --model, up]"
fi
# The path asked: nginx answers any; the test worker answers GET /health.
upath=$([ -n "$nginx" ] && echo /x || echo /health)
cat > "$dir/mb.yaml" <<CONF
listen: 127.0.0.1:$mb
devices: [{host: true}]
log_level: warn
defaults: {keep_alive: -1, max_concurrency: 1024, max_queue: 4096, queue_timeout: 60s}
models:
  up:
    cmd: $upcmd
    port: $up
    vram: 64MiB
CONF
"$build/daemon/modelbufd" --config "$dir/mb.yaml" 2>"$dir/mb.log" &
mbpid=$!
pids="$pids $mbpid"
wait_up "http://127.0.0.1:$mb/health"
curl -s -X POST "http://127.0.0.1:$mb/api/models/up/load" >/dev/null
wait_up "http://127.0.0.1:$up/health"
if [ -n "$nginx" ]; then
  "$nginx" -e "$dir/px.err" -p "$dir" -c "$dir/px.conf" &
  pids="$pids $!"
  wait_up "http://127.0.0.1:$px/health"
fi

echo "connections=$conns seconds=$secs cores=$(nproc)"
run() {
  r=$("$dir/httpload" "$2" "$conns" "$secs")
  printf '%-10s %s\n' "$1" "$r" >&2
  echo "$r" | sed 's/.*rps=\([0-9]*\).*p50_us=\([0-9]*\).*/\1 \2/'
}
d=$(run direct "http://127.0.0.1:$up$upath")
n=""
if [ -n "$nginx" ]; then
  n=$(run nginx "http://127.0.0.1:$px/x")
fi
if [ -n "${PERF:-}" ]; then
  perf record -g -o "$PERF" -p "$mbpid" -- sleep "$secs" >/dev/null 2>&1 &
  perfpid=$!
fi
m=$(run modelbufd "http://127.0.0.1:$mb/m/up$upath")
[ -z "${PERF:-}" ] || wait "$perfpid" || true
base=${n:-$d}
name=$([ -n "$nginx" ] && echo nginx || echo direct)
echo "$m $base $d" | awk -v name="$name" '{
  printf "modelbufd/%s throughput ratio: %.2f\n", name, $1 / $3
  printf "modelbufd added p50 vs %s: %d us (vs direct: %d us)\n", name, $2 - $4, $2 - $6 }' 2>/dev/null ||
  true
