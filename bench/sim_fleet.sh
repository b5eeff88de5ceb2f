#!/bin/sh
# The fleet simulator (modelbuf sim --nodes): one trace routed across
# several nodes by consistent hash (the HAProxy recipe), least load and
# hash with spill (bounded loads), each node a whole core with eviction
# cost. Prints, per scenario and routing: warm share, cold loads,
# restores, load+restore seconds, wait p99, failed requests, nodes per
# model (copies) and the busiest node's share over the mean (balance).
# Figures in docs/SCALE-OUT.md and docs/PERFORMANCE.md.
# Usage: bench/sim_fleet.sh [BUILD_DIR]   (default: build)
set -eu
B=${1:-${MODELBUF_BUILD:-build}}
cd "$(dirname "$0")/.."
F=bench/scenarios/fleet20.json
run() {
  name=$1
  shift
  "$B/cli/modelbuf" sim "$@" --json >/tmp/mb-simf.$$.json
  jq -r --arg n "$name" '.results[] | [$n, .routing, .warm_rate * 100, .loads, .restores,
      .load_restore_s, .wait_p99_ms / 1000, .failed, .copies, .balance] | @tsv' \
    /tmp/mb-simf.$$.json |
    awk -F'\t' '{printf "%-22s %-6s %6.1f %7d %8d %11.0f %9.1f %7d %6.2f %7.2f\n",
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
}
printf '%-22s %-6s %6s %7s %8s %11s %9s %7s %6s %7s\n' scenario route warm% loads restores \
  load+rest_s p99_s failed copies balance
# fleet20 (20 models, 158 GiB) with the suite's zipf 1.0 trace, on three
# nodes of one 80 GiB GPU (room for all), then of one 40 GiB GPU (not).
Z="--models $F --gen zipf:n=20000,rate=0.2,s=1.0,dur=2 --host 64GiB --keep-alive 30m --seed 1"
run "fleet20 3x80GiB" $Z --nodes 3 --capacity 80GiB
run "fleet20 3x40GiB" $Z --nodes 3 --capacity 40GiB
# A hot model: zipf 1.2 at 2 requests/s held 2 s, more than one node
# serves of its top model (max_concurrency 1); spill at 150 and 200 %.
H="--models $F --gen zipf:n=40000,rate=2,s=1.2,dur=2 --host 64GiB --keep-alive 30m --seed 1"
run "hot 3x80GiB" $H --nodes 3 --capacity 80GiB
run "hot 3x80GiB spill 200" $H --nodes 3 --capacity 80GiB --routing spill --balance-factor 200
# The suite's multi-gpu fleet (64 models of 0.5-24 GiB) on four nodes of
# two 80 GiB GPUs each.
run "multi 4x2x80GiB" --gen-models 64,min=512MiB,max=24GiB --gen zipf:n=50000,rate=1,s=1.0,dur=2 \
  --nodes 4 --devices 2 --capacity 80GiB --host 128GiB --keep-alive 30m --seed 1
rm -f /tmp/mb-simf.$$.json
