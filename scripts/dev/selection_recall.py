#!/usr/bin/env python3
"""Attention recall of key-selection rules on a real model: the share of each query block's dense
attention probability that lands on the keys a rule selects (1.0 = the selection keeps everything
dense attention uses), averaged over heads, queries, the query blocks where the budget binds, and
layers of one type. Compares chunking rules
(similarity with several NMS radii / chunk counts, fixed chunks) at several budgets on the same
captured queries and keys, with no generation. This is how the boundary defaults were chosen.

    python scripts/dev/selection_recall.py gemma3-270m --length 4096 --budgets 128,256,512,1024
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from transformers import AttentionInterface  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask  # noqa: E402

from dhsa_export import loading, niah, recipes  # noqa: E402
from dhsa_export.ops import reference as R  # noqa: E402

RULES = {  # name -> (method, chunk_beta, chunk_size (fixed: as a multiple of the block) , nms_radius)
    "fixed b (block-sparse)": ("fixed", 8, 1.0, 0),
    "fixed b/8": ("fixed", 8, 0.125, 0),
    "similarity r=8": ("similarity", 8, None, 8),
    "similarity r=4": ("similarity", 8, None, 4),
    "similarity r=2": ("similarity", 8, None, 2),
    "similarity r=2, beta=2": ("similarity", 2, None, 2),
}


def capture(model, ids):
    store = {}

    def cap(module, q, k, v, mask, **kw):
        store[module.layer_idx] = (q.detach(), k.detach(), kw.get("sliding_window") or 0)
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("capture", cap)
    ALL_MASK_ATTENTION_FUNCTIONS.register("capture", sdpa_mask)
    model.set_attn_implementation("capture")
    with torch.no_grad():
        model(ids)
    return store


def dense_probs(q, k, window, scale):
    """Dense causal (sliding-window) attention probabilities, (Hq, L, L) float32, kv head per group."""
    seq = q.shape[2]
    kk = k.repeat_interleave(q.shape[1] // k.shape[1], 1)[0].float()
    logits = q[0].float() @ kk.transpose(-1, -2) * scale
    t = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None]
    ok = j <= t
    if window:
        ok &= j > t - window
    return torch.softmax(logits.masked_fill(~ok, float("-inf")), -1)


def recall(probs, indices, counts, block, budget):
    """Mean over query blocks where the budget binds (more eligible keys than budget) of the dense
    attention mass on the selected keys, averaged over heads and the block's queries."""
    seq = probs.shape[-1]
    out = []
    for i in range(indices.shape[1]):
        c = int(counts[0, i])
        s0, e0 = i * block, min((i + 1) * block, seq)
        if e0 <= budget or c == 0:
            continue
        sel = indices[0, i, :c].long()
        out.append(probs[:, s0:e0, sel].sum(-1).mean().item())
    return sum(out) / len(out) if out else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="gemma3-270m")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--budgets", default="128,256,512,1024")
    ap.add_argument("--out", default="benchmarks/selection-recall.json")
    args = ap.parse_args()
    recipe = recipes.load(args.model)
    loaded = loading.load(recipe)
    scale = loaded.model.config.query_pre_attn_scalar ** -0.5
    prompts = niah.make_prompts(loaded.tokenizer, [args.length], [float(x) for x in args.depths.split(",")], 1)
    budgets = [int(x) for x in args.budgets.split(",")]
    kinds = ("global", "sliding")
    totals = {(kind, r, b): [] for kind in kinds for r in RULES for b in budgets}
    for n, prompt in enumerate(prompts):
        layers = capture(loaded.model, torch.tensor([prompt.input_ids]))
        for q, k, window in layers.values():
            kind = "sliding" if window else "global"
            probs = dense_probs(q, k, window, scale)
            for b in budgets:
                cfg = niah.config_for_budget(recipe.dhsa, b, "dhsa")
                for name, (method, beta, size, radius) in RULES.items():
                    chunk = max(1, int(cfg.block_size * size)) if size else cfg.block_size
                    bd = R.chunk_boundaries(k, None, method, cfg.block_size, beta if method != "fixed" else
                                            max(beta, -(-cfg.block_size // chunk)), chunk, 4, radius, 0.0, 0)
                    idx, cnt = R.select_keys(q, k, bd, cfg.block_size, b, cfg.local_tokens, cfg.global_tokens,
                                             window, 0)
                    r = recall(probs, idx, cnt, cfg.block_size, b)
                    if r == r:  # nan: no query block where the budget binds
                        totals[kind, name, b].append(r)
        print(f"prompt {n + 1}/{len(prompts)} done", flush=True)
    table = {f"{kind}: {name} @ {b}": sum(v) / len(v) for (kind, name, b), v in totals.items() if v}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "length": args.length, "prompts": len(prompts),
                                          "metric": "dense attention mass on the selected keys, mean over "
                                                    "query blocks where the budget binds",
                                          "recall": table}, indent=1))
    for kind in kinds:
        if not any(k.startswith(kind) for k in table):
            continue
        print(f"\n{kind} layers\n\n| rule | " + " | ".join(f"budget {b}" for b in budgets) + " |")
        print("|---|" + "---|" * len(budgets))
        for name in RULES:
            cells = [table.get(f"{kind}: {name} @ {b}") for b in budgets]
            print(f"| {name} | " + " | ".join("—" if c is None else f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
