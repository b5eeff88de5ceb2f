#!/bin/sh
# gpu-bundle.sh [BUILD] [OUT] - packs the GPU checks so that they run on a
# GPU machine that has a CUDA driver but not this project's build
# dependencies: OUT (default .gpu) gets the GPU test (tests/gpu, linked
# against libmodelbuf statically, needs only the C library), the modelbuf
# tool and modelbufd, every shared library they need beyond the C library,
# and OUT/run.sh, which runs there, from a checkout of this repository:
#
#   OUT/run.sh                 test_cuda_device and tests/gpu/daemon_gpu.py
#                              (what make test-gpu runs), then
#                              bench/tensors_gpu.sh with the packed tool
#
# The GPU machine needs glibc no older than this one's (Debian 12: 2.36),
# its CUDA driver, and for the safetensors baseline a Python with torch and
# safetensors. CUDA and NVML are loaded at run time, as always.
set -eu
build=${1:-build}
out=${2:-.gpu}
[ -x "$build/cli/modelbuf" ] && [ -x "$build/daemon/modelbufd" ] &&
  [ -x "$build/tests/gpu/test_cuda_device" ] ||
  { echo "gpu-bundle: build $build first (make build)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/cli" "$out/daemon" "$out/tests/gpu" "$out/lib"
cp "$build/cli/modelbuf" "$out/cli/"
cp "$build/daemon/modelbufd" "$out/daemon/"
cp "$build/tests/gpu/test_cuda_device" "$out/tests/gpu/"
# Every library the tool and the daemon load but the C library's own (libc,
# libm, ...): those come from the GPU machine, the rest from here.
ldd "$build/cli/modelbuf" "$build/daemon/modelbufd" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
  grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*)\.so' | sort -u |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
cat > "$out/run.sh" <<'RUN'
#!/bin/sh
# Runs the packed GPU checks from the repository's root (gpu-bundle.sh).
# The packed libraries are for the packed programs only: the PyTorch
# workers modelbufd starts keep the machine's own (MB_BUNDLE_LIB tells
# daemon_gpu.py, which sets LD_LIBRARY_PATH for modelbufd and modelbuf only).
here=$(cd "$(dirname "$0")" && pwd)
lp="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rc=0
echo "=== test_cuda_device"
"$here/tests/gpu/test_cuda_device" || rc=$?
echo "=== tests/gpu/daemon_gpu.py"
MB_BUNDLE_LIB="$here/lib" python3 tests/gpu/daemon_gpu.py --build "$here" || rc=$?
echo "=== bench/tensors_gpu.sh"
LD_LIBRARY_PATH="$lp" MODELBUF_BUILD="$here" bench/tensors_gpu.sh || rc=$?
exit $rc
RUN
chmod +x "$out/run.sh"
echo "gpu-bundle: $out ($(du -sh "$out" | cut -f1)); on the GPU machine, from the repository root: $out/run.sh"
