#!/usr/bin/env python3
"""Cached generation on ONNX Runtime's CUDA execution provider, against PyTorch greedy tokens made on a
CPU machine. `make` writes --with-cache folders of the tiny models (fp32 plugin and portable, bf16
plugin; dense and sparse decode) and reference.json (prompts and the PyTorch reference's tokens: DHSA
prefill + cached steps decoded the same way; for bf16 the model cast to bf16); `run` generates with the
own loop on the CUDA provider and compares, needing only onnxruntime-gpu, numpy and this source tree.

    python scripts/dev/generate_cuda_check.py make out/generate-cuda-check
    python scripts/dev/generate_cuda_check.py run out/generate-cuda-check     # where onnxruntime-gpu is

`--models gemma3-270m [--model-path FILE.gguf]`: gemma3-270m's folder (fp32 plugin export, sparse decode)
instead of the tiny models'; its folder is 1 GB, so `make` runs beside the GPU too (PyTorch's
reference on its CPU). A sparse-decode case whose prompts all fit the decode budget gets one more
past it, where decode selects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
NEW_TOKENS = 32
CASES = {"tiny": [("tiny-gemma2", "plugin", "fp32", "dense"), ("tiny-gemma3", "plugin", "fp32", "dense"),
                  ("tiny-gemma2", "portable", "fp32", "dense"), ("tiny-gemma3", "plugin", "bf16", "dense"),
                  ("tiny-gemma2", "plugin", "fp32", "sparse"), ("tiny-gemma3", "plugin", "fp32", "sparse"),
                  ("tiny-gemma2", "portable", "fp32", "sparse")],
         "gemma3-270m": [("gemma3-270m", "plugin", "fp32", "sparse")]}


def make(out: Path, seed: int, models: str = "tiny", model_path: str | None = None) -> None:
    import numpy as np
    import torch

    from dhsa_export import attention, export, recipes, runtime
    from dhsa_export.loading import load

    out.mkdir(parents=True, exist_ok=True)
    ref = {}
    for name, flavour, dtype, decode in CASES[models]:
        tag = f"{name}-{flavour}-{dtype}-{decode}"
        recipe = recipes.load(name)
        loaded = load(recipe, model_path, progress=lambda m: print(m, flush=True))  # fp32; loaded once
        export.export_cached(recipe, out / tag, model_path=model_path, flavour=flavour, dtype=dtype, decode=decode,
                             loaded=loaded if dtype == "fp32" else None)
        model = loaded.model
        if dtype == "bf16":
            model = model.to(torch.bfloat16)
        rng = np.random.default_rng(seed)
        lengths = [1, recipe.dhsa.budget // 2 + 3, 3 * recipe.dhsa.budget + 37]
        if decode == "sparse" and lengths[-1] <= recipe.dhsa.step_budget:  # a cache the step must select from
            lengths.append(2 * recipe.dhsa.step_budget + 37)
        prompts = [rng.integers(3, 512, size=n).tolist() for n in lengths]
        attention.enable_dhsa(model, recipe.dhsa, decode=decode)
        tokens = [runtime.TorchLM(model).cached_greedy(np.array(p), NEW_TOKENS)[0] for p in prompts]
        ref[tag] = {"prompts": prompts, "tokens": tokens}
        print(tag, "ok", flush=True)
    (out / "reference.json").write_text(json.dumps(ref))


def run(folder: Path, provider: str = "cuda") -> int:
    import onnxruntime as ort

    from dhsa_export import generation, model_folder

    print("onnxruntime", ort.__version__, ort.get_available_providers(), flush=True)
    ref = json.loads((folder / "reference.json").read_text())
    failed = 0
    for tag, case in ref.items():
        if provider == "cpu" and "-bf16-" in tag:  # ONNX Runtime's CPU provider has no bf16 kernels
            print(f"{tag}: skipped on the CPU provider", flush=True)
            continue
        opened = model_folder.open_folder(folder / tag)
        loop = generation.OrtLoop(opened, provider)
        assert provider != "cuda" or "CUDAExecutionProvider" in loop.session.get_providers()
        for prompt, want in zip(case["prompts"], case["tokens"]):
            got = loop.generate(prompt, NEW_TOKENS, stop_at_eos=False)
            exact = got.tokens == want
            if "-bf16-" in tag:  # the recipe's bf16 gate: teacher-forced steps whose argmax is PyTorch's
                forced = loop.generate(prompt, NEW_TOKENS, forced=want, stop_at_eos=False)
                same = sum(a == b for a, b in zip(forced.tokens, want))
                ok, how = same / len(want) >= 0.8, "teacher-forced"
            else:
                same = sum(a == b for a, b in zip(got.tokens, want))
                ok, how = exact, "greedy"
            failed += not ok
            print(f"{tag} L={len(prompt)}: {same}/{len(want)} {how} tokens equal{' (exact)' if exact else ''} "
                  f"{'ok' if ok else 'FAIL'}; first token {got.first_token_s * 1e3:.1f} ms, "
                  f"{got.decode_tokens_per_s or 0:.0f} tokens/s", flush=True)
    print("PASS" if not failed else f"FAIL ({failed})")
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["make", "run"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", choices=sorted(CASES), default="tiny")
    ap.add_argument("--model-path", help="weights for --models gemma3-270m (a .gguf file or model folder)")
    ap.add_argument("--provider", choices=["cuda", "cpu"], default="cuda", help="run: the ONNX Runtime provider")
    args = ap.parse_args()
    if args.action == "make":
        make(args.folder, args.seed, args.models, args.model_path)
    else:
        sys.exit(run(args.folder, args.provider))


if __name__ == "__main__":
    main()
