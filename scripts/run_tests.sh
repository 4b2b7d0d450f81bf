#!/usr/bin/env bash
# All tests that run without a GPU: the fast suite, the op tests under AddressSanitizer + UBSan, then
# the slow real-weights tests (gemma3-270m). GPU tests: scripts/dev/gpu_check.sh on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh
. .venv/bin/activate
echo "== fast suite"
python -m pytest -q
echo "== op tests under ASan + UBSan"
inc=${ONNXRUNTIME_INCLUDE_DIR:-$(scripts/fetch_ort_headers.sh .ort-headers)}
cmake -S plugins -B build/asan -DDHSA_SANITIZE=ON -DDHSA_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DONNXRUNTIME_INCLUDE_DIR="$inc" >/dev/null
cmake --build build/asan -j 2 >/dev/null
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  DHSA_ORT_LIBRARY=build/asan/libdhsa_ort.so python -m pytest -q -p no:cacheprovider tests/test_ort_ops.py \
  tests/test_decode_ops.py
echo "== slow: real weights"
python -m pytest -q -m slow --durations=12
