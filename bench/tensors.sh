#!/usr/bin/env bash
# Tensor engine benchmark: writes a synthetic model with `modelbuf mkmodel`
# in a temporary directory on disk (not tmpfs, so direct I/O and a cold
# page cache are real) and runs `modelbuf bench load|offload|restore` on it.
# Each bench measures its baselines in the same run and prints its ratios.
# Env: MB_BENCH_TENSORS_SIZE (default 512MiB: the writer is the slow part, and the script stays under a minute), MB_BENCH_TENSORS_CYCLES (2),
#      MB_BENCH_TENSORS_DIR (default /var/tmp), MODELBUF_BUILD (build dir).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MODELBUF_BUILD:-$PWD/build}
tool="$build/cli/modelbuf"
size=${MB_BENCH_TENSORS_SIZE:-512MiB}
cycles=${MB_BENCH_TENSORS_CYCLES:-2}
base=${MB_BENCH_TENSORS_DIR:-/var/tmp}
[ -x "$tool" ] || { echo "tensors: $tool not built"; exit 1; }
dir=$(mktemp -d "$base/mb_bench_tensors.XXXXXX")
trap 'rm -rf "$dir"' EXIT
model="$dir/model.safetensors"
"$tool" mkmodel --format safetensors --size "$size" "$model"
# One run measures everything (load cold/warm, offload, restore and all
# baselines); the kind only picks which ratio is the headline "ratio".
echo "--- modelbuf bench load $model --cycles $cycles"
"$tool" bench load "$model" --cycles "$cycles"
