#!/usr/bin/env bash
# GPU checks (a machine with an NVIDIA GPU, nvcc and PyTorch): build the CUDA library unless one is
# given, run the CUDA kernel tests, optionally compute-sanitizer and the benchmark.
#   scripts/dev/gpu_check.sh [tests|sanitize|bench|all]   (default: tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-tests}
out=${OUT:-build/gpu-check}
mkdir -p "$out"
if [ -z "${DHSA_CUDA_LIBRARY:-}" ]; then
  if ! python3 -c "import ctypes; ctypes.CDLL('build/cuda/libdhsa_cuda.so')" 2>/dev/null; then
    cmake -S plugins -B build/cuda -G Ninja -DDHSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" >/dev/null
    cmake --build build/cuda
  fi
  export DHSA_CUDA_LIBRARY=$PWD/build/cuda/libdhsa_cuda.so
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
export PYTHONUNBUFFERED=1
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest tests/test_cuda_ops.py -q -x -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/cuda_tests.log" | tail -25
fi
if [ "$what" = sanitize ] || [ "$what" = all ]; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 python3 scripts/dev/cuda_smoke.py 2>&1 | tee "$out/sanitize_$tool.log" | tail -6
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 scripts/dev/bench_attention.py --out "$out/attention-h200.json" 2>&1 | tee "$out/bench.log" | tail -45
fi
