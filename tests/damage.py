"""Deliberately damaged deployments: a copy of an exported model with one layer's projection weight
changed. `python -m tests.damage SRC DST --layer 5 --proj v_proj --relative 1e-3` from the repository
root does the same for measurements (scripts/dev/check_sweep.sh)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx


def perturb_layer(src, dst, layer: int, proj: str = "q_proj", relative: float | None = None, seed: int = 0):
    """Copy of the model with one projection weight of layer `layer` changed: four columns scaled by 1.5,
    or (relative) every element times 1 + relative * N(0, 1). A deliberately damaged deployment."""
    model = onnx.load(str(src))
    target = None
    for node in model.graph.node:
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
        if node.op_type == "MatMul" and f"layers.{layer}.self_attn.{proj}'" in scopes:
            target = node.input[1]
            break
    init = next(i for i in model.graph.initializer if i.name == target)
    w = onnx.numpy_helper.to_array(init).copy()
    if relative is None:
        w[:, :4] *= 1.5
    else:
        w *= (1 + relative * np.random.default_rng(seed).standard_normal(w.shape)).astype(w.dtype)
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--proj", default="v_proj")
    ap.add_argument("--relative", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    perturb_layer(a.src, a.dst, a.layer, a.proj, a.relative, a.seed)
