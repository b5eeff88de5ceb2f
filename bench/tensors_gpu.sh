#!/usr/bin/env bash
# Tensor engine on a GPU: `modelbuf bench load --device cuda:0` (its own
# baselines: direct and buffered reads, pinned host<->device copies, a naive
# loader) and, in the same run, Python's safetensors.torch.load_file(...,
# device="cuda") on the same file, cold and warm, with the ratio of modelbuf
# to it (issue target: >= 3x). Skips (exit 0) on a machine without a GPU.
# Env: MB_BENCH_GPU_SIZE (default 4GiB), MB_BENCH_TENSORS_DIR (/var/tmp),
#      MODELBUF_BUILD (build dir), MB_BENCH_GPU_PYTHON (interpreter with
#      torch and safetensors; default: the first of python3, /usr/bin/python3
#      that has them).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MODELBUF_BUILD:-$PWD/build}
tool="$build/cli/modelbuf"
if ! [ -e /dev/nvidiactl ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "tensors_gpu: no GPU on this machine; skipped"
  exit 0
fi
[ -x "$tool" ] || { echo "tensors_gpu: $tool not built"; exit 1; }
size=${MB_BENCH_GPU_SIZE:-4GiB}
dir=$(mktemp -d "${MB_BENCH_TENSORS_DIR:-/var/tmp}/mb_bench_gpu.XXXXXX")
trap 'rm -rf "$dir"' EXIT
model="$dir/model.safetensors"
"$tool" mkmodel --format safetensors --size "$size" "$model"

echo "--- modelbuf bench load $model --device cuda:0 --cycles 3 --json"
"$tool" bench load "$model" --device cuda:0 --cycles 3 --json | tee "$dir/mb.json"
# Without a usable driver the tool measures the host device instead (and
# says why on stderr): those are not GPU figures.
if ! grep -q '"device":"cuda:0"' "$dir/mb.json"; then
  echo "tensors_gpu: modelbuf ran on the host device, not cuda:0: no GPU figures" >&2
  exit 1
fi

py=${MB_BENCH_GPU_PYTHON:-}
if [ -z "$py" ]; then
  for p in python3 /usr/bin/python3; do
    if "$p" -c 'import torch, safetensors.torch; assert torch.cuda.is_available()' 2>/dev/null; then
      py=$p
      break
    fi
  done
fi
if [ -z "$py" ]; then
  echo "tensors_gpu: no Python with torch (CUDA) and safetensors: the safetensors baseline is skipped"
  exit 0
fi
"$py" - "$model" "$dir/mb.json" <<'PY'
import json, os, sys, time
import torch
from safetensors.torch import load_file

path, mb = sys.argv[1], json.load(open(sys.argv[2]))
data = mb["bytes"]

def drop(p):
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

def run(cold):
    if cold:
        drop(path)
    torch.cuda.synchronize()
    t = time.perf_counter()
    ts = load_file(path, device="cuda")
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    del ts
    torch.cuda.empty_cache()
    return data / dt / 1e9

load_file(path, device="cuda")  # CUDA context and allocator warmed up first
cold = max(run(True) for _ in range(3))
warm = max(run(False) for _ in range(3))
g, q = mb["gbps"], mb["ratios"]
print(f"  modelbuf cold load  {g['load_cold']:7.2f} GB/s   ratio {q['load_cold_vs_direct']:.2f} vs direct read {g['direct_read']:.2f} (target >= 0.9)")
print(f"  modelbuf warm load  {g['load_warm']:7.2f} GB/s   ratio {q['load_warm_vs_target']:.2f} vs the smaller of buffered read {g['buffered_read']:.2f} "
      f"and pinned host->device {g['memcpy_h2d']:.2f} (target >= 0.8)")
print(f"  modelbuf restore    {g['restore']:7.2f} GB/s   ratio {q['restore_vs_memcpy']:.2f} vs pinned host->device {g['memcpy_h2d']:.2f} (target >= 0.9)")
print(f"  modelbuf offload    {g['offload']:7.2f} GB/s   ratio {q['offload_vs_memcpy']:.2f} vs pinned device->host {g['memcpy_d2h']:.2f} (target >= 0.9)")
print(f"  safetensors.torch.load_file cold  {cold:7.2f} GB/s   modelbuf {g['load_cold']:.2f}: ratio {g['load_cold'] / cold:.2f} (target >= 3)")
print(f"  safetensors.torch.load_file warm  {warm:7.2f} GB/s   modelbuf {g['load_warm']:.2f}: ratio {g['load_warm'] / warm:.2f} (target >= 3)")
print(f"  naive loader (in modelbuf's run)  {g['naive_load']:7.2f} GB/s   ratio {mb['ratios']['load_warm_vs_naive']:.2f} (target >= 2)")
PY
