#!/usr/bin/env python3
"""Attention recall of key-selection rules on a real model: the share of each query block's dense
attention probability that lands on the keys a rule selects (1.0 = the selection keeps everything
dense attention uses), averaged over heads, queries, blocks and layers. Compares chunking rules
(similarity with several NMS radii / chunk counts, fixed chunks) at several budgets on the same
captured queries and keys, with no generation. This is how the boundary defaults were chosen.

    python scripts/selection_recall.py gemma3-270m --length 4096 --budgets 128,256,512,1024
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


def recall(q, k, window, scale, indices, counts, block):
    """Mean over blocks of the dense attention mass on the selected keys (GQA: kv head per group)."""
    seq = q.shape[2]
    g = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(g, 1)[0].float()
    out = []
    for i in range(indices.shape[1]):
        c = int(counts[0, i])
        s0, e0 = i * block, min((i + 1) * block, seq)
        if c == 0 or e0 <= s0:
            continue
        qb = q[0, :, s0:e0].float()
        logits = qb @ kk[:, :e0].transpose(-1, -2) * scale
        t = torch.arange(s0, e0)[:, None]
        j = torch.arange(e0)[None]
        ok = j <= t
        if window:
            ok &= j > t - window
        p = torch.softmax(logits.masked_fill(~ok, float("-inf")), -1)
        out.append(p[:, :, indices[0, i, :c].long()].sum(-1).mean().item())
    return sum(out) / len(out)


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
    totals = {(r, b): [] for r in RULES for b in budgets}
    for n, prompt in enumerate(prompts):
        layers = capture(loaded.model, torch.tensor([prompt.input_ids]))
        for b in budgets:
            cfg = niah.config_for_budget(recipe.dhsa, b, "dhsa")
            for name, (method, beta, size, radius) in RULES.items():
                chunk = max(1, int(cfg.block_size * size)) if size else cfg.block_size
                for q, k, window in layers.values():
                    bd = R.chunk_boundaries(k, None, method, cfg.block_size, beta if method != "fixed" else
                                            max(beta, -(-cfg.block_size // chunk)), chunk, 4, radius, 0.0, 0)
                    idx, cnt = R.select_keys(q, k, bd, cfg.block_size, b, cfg.local_tokens, cfg.global_tokens,
                                             window, 0)
                    totals[name, b].append(recall(q, k, window, scale, idx, cnt, cfg.block_size))
        print(f"prompt {n + 1}/{len(prompts)} done", flush=True)
    table = {f"{name} @ {b}": sum(v) / len(v) for (name, b), v in totals.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "length": args.length, "prompts": len(prompts),
                                          "recall": table}, indent=1))
    print("\n| rule | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name in RULES:
        print(f"| {name} | " + " | ".join(f"{table[f'{name} @ {b}']:.4f}" for b in budgets) + " |")


if __name__ == "__main__":
    main()
