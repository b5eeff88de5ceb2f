#!/bin/sh
# worker_restart.sh [BUILD] - the host tier of the process backend for a
# worker without offload hooks, measured in one run: how long modelbufd
# takes to bring the model to ready
#   cold     after unload, with its weight file dropped from the page cache
#            (posix_fadvise DONTNEED): the start reads the file from disk
#   pinned   after offload: the worker was stopped and modelbufd kept the
#            file mapped and locked; the same DONTNEED is issued, and the
#            restore start reads the file from RAM
#   warm     after unload, file left in the page cache (best case, for scale)
# The worker reads its whole weight file at start (as a model server loads
# its weights) and then runs the test worker. Each mode runs ROUNDS times;
# the median is printed with the ratio cold/pinned.
# Env: SIZE_MB (1024), ROUNDS (5).
set -eu
build=${1:-build}
size=${SIZE_MB:-1024}
rounds=${ROUNDS:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
# On disk, not tmpfs: the cold case must read from a device.
dir=$(mktemp -d "$root/$build/bench-restart.XXXXXX")
pid=""
cleanup() {
  [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

py=/usr/bin/python3
port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
weights="$dir/weights.bin"
head -c "$((size * 1024 * 1024))" /dev/urandom > "$weights"
sync

cat > "$dir/modelbuf.yaml" <<EOF
listen: 127.0.0.1:$port
devices: [{host: true, budget: 8GiB}]
host_memory: 4GiB
defaults: {keep_alive: forever, host_keep_alive: forever, start_timeout: 5m}
models:
  w:
    cmd: [/bin/sh, -c, 'cat "\$\$1" > /dev/null && exec $py $root/tests/e2e/workers/test_worker.py --port "\$\$0"', "\${PORT}", "$weights"]
    files: ["$weights"]
EOF

"$build/daemon/modelbufd" --config "$dir/modelbuf.yaml" > "$dir/daemon.log" 2>&1 &
pid=$!
i=0
until curl -s -o /dev/null "http://127.0.0.1:$port/health"; do
  i=$((i + 1)); [ $i -lt 200 ] || { cat "$dir/daemon.log"; exit 1; }
  sleep 0.05
done

api() { curl -s -f -X POST "http://127.0.0.1:$port/api/models/w/$1" -o /dev/null; }
drop() { $py -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$weights"; }
now() { $py -c 'import time; print(time.monotonic())'; }
# Seconds for POST load, which starts (or restores) the worker and waits for ready.
timed_load() {
  t0=$(now); api load; t1=$(now)
  $py -c "print(f'{$t1 - $t0:.3f}')"
}
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cold="" pinned="" warm=""
for r in $(seq "$rounds"); do
  api unload; drop
  cold="$cold $(timed_load)"
  api offload; drop
  pinned="$pinned $(timed_load)"
  api unload
  warm="$warm $(timed_load)"
done
api unload

c=$(echo $cold | median); p=$(echo $pinned | median); w=$(echo $warm | median)
echo "worker restart, weight file ${size} MiB, median of $rounds (seconds):"
echo "  cold (file not in page cache)  $c   [$cold ]"
echo "  pinned (offloaded, host tier)  $p   [$pinned ]"
echo "  warm (page cache, best case)   $w   [$warm ]"
$py -c "print(f'  cold / pinned = {$c / $p:.2f}x   pinned / warm = {$p / $w:.2f}x')"
