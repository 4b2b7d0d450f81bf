#!/usr/bin/env python3
"""Run `--ops plugin` exports on ONNX Runtime's CUDA execution provider with the DHSA library and
compare with PyTorch logits saved next to them (reference.npz: inputs and logits per model).

    python scripts/ort_cuda_check.py DIR --library path/to/libdhsa_ort.so
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--library", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    ref = np.load(Path(args.folder) / "reference.npz")
    failures = 0
    for onnx_path in sorted(Path(args.folder).glob("*.onnx")):
        opts = ort.SessionOptions()
        opts.register_custom_ops_library(args.library)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(args.folder) / onnx_path.stem)
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        ids = ref[f"{onnx_path.stem}.ids"]
        want = ref[f"{onnx_path.stem}.logits"]
        got = sess.run(None, {"input_ids": ids})[0].astype(np.float32)
        prof = json.loads(Path(sess.end_profiling()).read_text())
        dhsa = {(e["args"].get("op_name"), e["args"].get("provider")) for e in prof
                if e.get("cat") == "Node" and str(e["args"].get("op_name", "")).startswith("Dhsa")}
        err = float(np.abs(got - want).max())
        tol = args.tol if "fp32" in onnx_path.stem else 5e-2
        ok = err <= tol and all(p == "CUDAExecutionProvider" for _, p in dhsa) and dhsa
        failures += not ok
        print(f"{onnx_path.name}: max |ORT CUDA - PyTorch| = {err:.2e} (tol {tol}); dhsa nodes on {sorted(dhsa)} "
              f"-> {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
