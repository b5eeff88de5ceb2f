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
