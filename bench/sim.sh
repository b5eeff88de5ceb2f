#!/bin/sh
# Runs the simulator's standard scenario suite (bench/scenarios/*.scn) with
# every policy and prints, per scenario, load+restore time of cost/lru
# (target <= 0.7) and cost/belady (target <= 1.15), and the core's events/s.
# Usage: bench/sim.sh [BUILD_DIR]   (default: build)
set -eu
B=${1:-build}
cd "$(dirname "$0")/.."
printf '%-18s %10s %12s %12s\n' scenario cost/lru cost/belady Mev/s
for f in bench/scenarios/*.scn; do
  args=$(grep -v '^#' "$f" | tr '\n' ' ')
  # shellcheck disable=SC2086
  "$B/cli/modelbuf" sim $args --policy all --json >/tmp/mb-sim.$$.json
  jq -r --arg n "$(basename "$f" .scn)" \
    '[$n, .ratios.cost_vs_lru, .ratios.cost_vs_belady, ([.results[].events_per_s]|add/length/1e6)] | @tsv' \
    /tmp/mb-sim.$$.json | awk -F'\t' '{printf "%-18s %10.3f %12.3f %12.2f\n", $1, $2, $3, $4}'
done
rm -f /tmp/mb-sim.$$.json
# Scale: 10,000 generated models (256 MiB-16 GiB) on 64 GPUs of 80 GiB,
# 100,000 Zipf requests at 200/s (more than the fleet can load: most wait,
# many time out), every policy. Wall time and core events/s.
printf '\nscale: 10000 models x 64 devices, 100000 requests\n'
printf '%-8s %10s %10s %10s\n' policy wall_s events Mev/s
"$B/cli/modelbuf" sim --gen-models 10000,min=256MiB,max=16GiB \
  --gen zipf:n=100000,rate=200 --devices 64 --capacity 80GiB --keep-alive 30m \
  --policy all --json >/tmp/mb-sim.$$.json
jq -r '.results[] | [.policy, .wall_s, .core_events, .events_per_s/1e6] | @tsv' /tmp/mb-sim.$$.json |
  awk -F'\t' '{printf "%-8s %10.2f %10d %10.2f\n", $1, $2, $3, $4}'
rm -f /tmp/mb-sim.$$.json
