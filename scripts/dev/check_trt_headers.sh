#!/usr/bin/env bash
# Compile the TensorRT plugin library (and its test bridge) against each given TensorRT include folder,
# warnings as errors: the plugins must build against every TensorRT they support.
#   scripts/dev/check_trt_headers.sh /path/to/TensorRT-10/include /path/to/TensorRT-11/include
set -euo pipefail
cd "$(dirname "$0")/../.."
nvcc_dir=$(dirname "$(readlink -f "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
for cuda_inc in "${CUDA_INCLUDE_DIR:-}" "$nvcc_dir/../include" /usr/local/cuda/include /usr/local/cuda-*/include; do
  [ -f "$cuda_inc/cuda_runtime_api.h" ] && break
done
[ -f "$cuda_inc/cuda_runtime_api.h" ] || { echo "check_trt_headers: cuda_runtime_api.h not found; set CUDA_INCLUDE_DIR" >&2; exit 2; }
for inc in "$@"; do
  for src in plugins/tensorrt/*.cc plugins/tensorrt/testing/*.cc; do
    ${CXX:-g++} -std=c++17 -fsyntax-only -Wall -Wextra -Werror -isystem "$inc" -isystem "$cuda_inc" \
      -Iplugins/core/include -Iplugins/capi -Iplugins/tensorrt "$src"
  done
  echo "check_trt_headers: plugins/tensorrt compiles against TensorRT $(sed -n "s/^#define TRT_MAJOR_ENTERPRISE //p" "$inc/NvInferVersion.h") ($inc), warnings as errors"
done
