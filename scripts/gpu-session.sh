#!/bin/sh
# gpu-session.sh - the GPU checks of a short lent GPU session, prepared here
# and run there in one go (issue 15, item 3).
#
#   scripts/gpu-session.sh prepare [BUILD]
#       on this machine: builds BUILD (default build) and packs what the GPU
#       machine needs into .gpu (scripts/gpu-bundle.sh: the GPU test, the
#       tool, the daemon and the libraries they need beyond the C library).
#   scripts/gpu-session.sh run [SECONDS]
#       on the GPU machine, from the repository root with .gpu carried over:
#       what `make test-gpu` runs (tests/gpu/test_cuda_device and
#       tests/gpu/daemon_gpu.py) and bench/tensors_gpu.sh, each under a time
#       limit, all of it within SECONDS (default 420, leaving a 10-minute
#       call room to spare); the card's name first, then each part's output,
#       into $OUT (or .gpu/out) as well as on stdout. Exits non-zero when a
#       part failed or ran out of time.
#
# With the session's device tool, for example:
#   run(command="scripts/gpu-session.sh run 420", carry=[".gpu"], timeout_s=480)
# and the figures of docs/PERFORMANCE.md are in the part logs.
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  build=${2:-build}
  make build BUILD="$build" >/dev/null || exit 1
  exec scripts/gpu-bundle.sh "$build" .gpu
  ;;
run) ;;
*)
  echo "usage: scripts/gpu-session.sh prepare [BUILD] | run [SECONDS]" >&2
  exit 2
  ;;
esac
budget=${2:-420}
out=${OUT:-.gpu/out}
mkdir -p "$out"
[ -x .gpu/run.sh ] || { echo "gpu-session: no .gpu here: run 'scripts/gpu-session.sh prepare' first" >&2; exit 1; }
start=$(date +%s)
rc=0
left() { echo $((budget - ($(date +%s) - start))); }

# part NAME SECONDS COMMAND...: runs it with at most SECONDS (and what is
# left of the budget), its output into $out/NAME.log.
part() {
  name=$1 secs=$2
  shift 2
  l=$(left)
  [ "$secs" -gt "$l" ] && secs=$l
  if [ "$secs" -le 10 ]; then
    echo "=== $name: skipped, the time is spent" | tee "$out/$name.log"
    rc=1
    return
  fi
  echo "=== $name (at most ${secs}s)"
  timeout -k 10 "$secs" "$@" > "$out/$name.log" 2>&1
  r=$?
  cat "$out/$name.log"
  echo "=== $name: exit $r"
  [ "$r" -eq 0 ] || rc=1
}

here=$(pwd)/.gpu
lp="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } \
  > "$out/card.txt" 2>&1 || echo "no nvidia-smi" > "$out/card.txt"
cat "$out/card.txt"
part test_cuda_device 150 "$here/tests/gpu/test_cuda_device"
part daemon_gpu 200 env MB_BUNDLE_LIB="$here/lib" python3 tests/gpu/daemon_gpu.py --build "$here"
part tensors_gpu 200 env LD_LIBRARY_PATH="$lp" MODELBUF_BUILD="$here" MB_BENCH_GPU_SIZE="${MB_BENCH_GPU_SIZE:-4GiB}" bench/tensors_gpu.sh
echo "gpu-session: $(( $(date +%s) - start ))s, exit $rc; logs in $out"
exit $rc
