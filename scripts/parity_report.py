#!/usr/bin/env python3
"""The parity figures quoted in README, measured afresh on the tiny models (batch 2):
DHSA at full budget vs dense attention, and ONNX Runtime (portable ops / DHSA op library) vs PyTorch
DHSA. Prints a Markdown table of max |difference| of the logits.

    python scripts/parity_report.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dhsa_export import attention, export, loading, recipes, runtime  # noqa: E402


def main() -> None:
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for name in ("tiny-gemma2", "tiny-gemma3"):
        recipe = recipes.load(name)
        model = loading.load(recipe).model
        full = []
        for seq in (1, 63, 64, 65, 300):
            ids = torch.randint(0, 512, (2, seq), generator=torch.Generator().manual_seed(seq))
            attention.disable_dhsa(model)
            with torch.no_grad():
                dense = model(ids).logits
            attention.enable_dhsa(model, recipe.dhsa.replace(budget=max(seq, recipe.dhsa.budget)))
            with torch.no_grad():
                full.append((model(ids).logits - dense).abs().max().item())
        rows.append((name, "DHSA (budget >= L) vs dense, L = 1/63/64/65/300", max(full)))
        loaded = type("L", (), {"model": model, "source": type("S", (), {"description": "tiny"})()})
        for flavour in ("portable", "plugin"):
            attention.disable_dhsa(model)
            path = export.export(recipe, tmp / f"{name}-{flavour}.onnx", flavour=flavour, loaded=loaded).path
            run = runtime.ort_logits(runtime.ort_session(path))
            attention.enable_dhsa(model, recipe.dhsa)
            errs = []
            for seq in (17, 64, 200):
                ids = torch.randint(0, 512, (2, seq), generator=torch.Generator().manual_seed(seq))
                with torch.no_grad():
                    ref = model(ids).logits.numpy()
                errs.append(float(np.abs(run(ids.numpy()) - ref).max()))
            rows.append((name, f"ORT CPU ({flavour}) vs PyTorch DHSA, L = 17/64/200", max(errs)))
    print("| model | comparison | max abs diff (logits) |\n|---|---|---|")
    for name, what, err in rows:
        print(f"| {name} | {what} | {err:.2e} |")


if __name__ == "__main__":
    main()
