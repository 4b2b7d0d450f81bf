#!/usr/bin/env python3
"""Sparse decode against dense decode after the same DHSA prefill, in PyTorch (the reference rule):
the passkey grid (greedy answers with each decode rule) and teacher-forced agreement over real text
(each step's argmax and KL(dense || sparse) while the text's own tokens are fed).

The text is the license texts of /usr/share/common-licenses (Debian's; English prose), concatenated in
name order.

    python scripts/dev/decode_accuracy.py gemma3-270m --out benchmarks/decode-accuracy-gemma3-270m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export import attention, niah, recipes, runtime  # noqa: E402
from dhsa_export.loading import load  # noqa: E402

MODES = ("dense", "sparse")


def real_text_ids(tokenizer, n: int) -> np.ndarray:
    files = sorted(p for p in Path("/usr/share/common-licenses").iterdir() if p.is_file())
    text = "\n\n".join(p.read_text(errors="replace") for p in files)
    ids = tokenizer(text)["input_ids"]
    if len(ids) < n:
        raise SystemExit(f"the license texts give {len(ids)} tokens, fewer than the {n} asked for")
    return np.array(ids[:n], dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="gemma3-270m")
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--keys", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--text-lengths", default="4096,8192")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--decode-budget", type=int, help="keys per sparse-decode step (default: the recipe's)")
    ap.add_argument("--out", default="benchmarks/decode-accuracy-gemma3-270m.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    recipe = recipes.load(args.model)
    if args.decode_budget:
        recipe = recipes.with_overrides(recipe, dhsa={"decode_budget": args.decode_budget})
    loaded = load(recipe)
    model, tok = loaded.model, loaded.tokenizer
    lm = runtime.TorchLM(model)

    lengths = [int(x) for x in args.lengths.split(",") if x]  # "": teacher-forced agreement only
    prompts = niah.make_prompts(tok, lengths, [float(x) for x in args.depths.split(",")], args.keys, seed=0) \
        if lengths else []
    grid = []
    for p in prompts:
        row = {"length": p.length, "tokens": p.n_tokens, "depth": p.depth, "key": p.key}
        for mode in MODES:
            attention.enable_dhsa(model, recipe.dhsa, decode=mode)
            t0 = time.perf_counter()
            tokens, _ = lm.cached_greedy(np.array(p.input_ids), args.new_tokens)
            answer = tok.decode(tokens, skip_special_tokens=True).strip()
            row[mode] = {"answer": answer, "correct": p.key in answer, "seconds": round(time.perf_counter() - t0, 2)}
        grid.append(row)
        print(json.dumps(row), flush=True)

    forced = []
    for n in (int(x) for x in args.text_lengths.split(",")):
        ids = real_text_ids(tok, n + args.steps)
        rows = {}
        for mode in MODES:
            attention.enable_dhsa(model, recipe.dhsa, decode=mode)
            _, rows[mode] = lm.cached_greedy(ids[:n], args.steps, forced=ids[n:].tolist())
        dense, sparse = np.stack(rows["dense"]), np.stack(rows["sparse"])
        agree = float((dense.argmax(-1) == sparse.argmax(-1)).mean())
        ld = torch.log_softmax(torch.from_numpy(dense).double(), -1)
        ls = torch.log_softmax(torch.from_numpy(sparse).double(), -1)
        kl = float((ld.exp() * (ld - ls)).sum(-1).mean())
        # the step logits predict the token after the one fed: step i predicts ids[n + i]
        truth = ids[n:n + args.steps]
        entry = {"prompt_tokens": n, "steps": args.steps, "top1_agreement": agree, "kl_dense_sparse": kl,
                 "next_token_accuracy": {"dense": float((dense.argmax(-1) == truth).mean()),
                                         "sparse": float((sparse.argmax(-1) == truth).mean())}}
        forced.append(entry)
        print(json.dumps(entry), flush=True)
    summary = {mode: {str(length): sum(r[mode]["correct"] for r in grid if r["length"] == length)
                      for length in sorted({r["length"] for r in grid})} for mode in MODES}
    meta = {"model": args.model, "weights": loaded.source.description, "dhsa": recipe.dhsa.model_dump(),
            "decode_chunk": recipe.dhsa.block_size // recipe.dhsa.chunk_beta, "date": date.today().isoformat(),
            "machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "prompts_per_length": len(args.depths.split(",")) * args.keys, "new_tokens": args.new_tokens,
            "text": "/usr/share/common-licenses/* (name order)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "passkey": summary, "grid": grid, "teacher_forced": forced},
                                         indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
