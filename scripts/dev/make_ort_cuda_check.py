#!/usr/bin/env python3
"""The inputs of scripts/dev/ort_cuda_check.py, made on a CPU machine: `--ops plugin` exports of the tiny
models in fp32 and bf16 (boundaries once, DhsaSelectAttention in every layer) and reference.npz with
their input ids (batch 2, L = 300) and PyTorch DHSA's logits (the fp32 model; for bf16 the same model
cast to bf16, on the CPU).

    python scripts/dev/make_ort_cuda_check.py out/ort-cuda-check
    # then, where onnxruntime-gpu and a CUDA build of libdhsa_ort.so are:
    python scripts/dev/ort_cuda_check.py out/ort-cuda-check --library path/to/libdhsa_ort.so
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export import attention, loading, recipes  # noqa: E402

MODELS = ("tiny-gemma2", "tiny-gemma3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--seq", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    ref = {}
    for name in MODELS:
        recipe = recipes.load(name)
        model = loading.load(recipe).model
        attention.enable_dhsa(model, recipe.dhsa)
        ids = torch.randint(0, model.config.vocab_size, (2, args.seq), generator=torch.Generator().manual_seed(args.seed))
        for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            stem = f"{name}-{dtype}"
            subprocess.run([sys.executable, "-m", "dhsa_export.cli.export", name, "--ops", "plugin", "--dtype", dtype,
                            "--out", str(out / f"{stem}.onnx")], check=True)
            with torch.no_grad():
                logits = model.to(torch_dtype)(ids).logits.float().numpy()
            ref[f"{stem}.ids"] = ids.numpy()
            ref[f"{stem}.logits"] = logits
            print(f"{stem}: exported, reference logits {logits.shape}")
        model.float()
    np.savez(out / "reference.npz", **ref)


if __name__ == "__main__":
    main()
