#!/usr/bin/env python3
"""Generation on ONNX Runtime: time to first token and decode speed of the cached export (DHSA prefill +
cached dense steps) on onnxruntime-genai and on the own loop, against the dense cached export and
against greedy decoding by full re-runs of the cache-less DHSA export. Each (model, length) runs in its
own process, so peak RSS is that run's alone.

    python scripts/dev/bench_generate.py gemma3-270m --lengths 1024,4096,8192 --out benchmarks/generate-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child(kind: str, path: str, seq: int, new_tokens: int, provider: str) -> dict:
    """Runs inside the measuring subprocess."""
    import resource

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from dhsa_export import generation, model_folder, runtime

    ids = np.random.default_rng(seq).integers(100, 20000, size=(1, seq), dtype=np.int64)
    if kind == "rerun":  # greedy by full re-runs: every token is a prefill of everything so far
        run = runtime.ort_logits(runtime.ort_session(path, provider))
        seq_ids, times = ids, []
        for _ in range(3):
            t0 = time.perf_counter()
            nxt = int(run(seq_ids)[0, -1].argmax())
            times.append(time.perf_counter() - t0)
            seq_ids = np.concatenate([seq_ids, [[nxt]]], axis=1)
        return {"first_token_s": times[0], "decode_tokens_per_s": 1 / statistics.median(times[1:]),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    folder = model_folder.open_folder(path)
    loop = generation.OrtLoop(folder, provider) if kind.endswith("ort") else generation.GenaiLoop(folder, provider)
    loop.generate(ids[:, :64], 2)  # warm-up: sessions, allocator
    g = loop.generate(ids, new_tokens)
    return {"first_token_s": g.first_token_s, "decode_tokens_per_s": g.decode_tokens_per_s, "tokens": len(g.tokens),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="gemma3-270m")
    ap.add_argument("--lengths", default="1024,4096,8192")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--kinds", default="dhsa-genai,dhsa-ort,dense-genai,rerun",
                    help="subset of dhsa-genai, dhsa-ort, dense-genai, dense-ort, rerun")
    ap.add_argument("--layers", choices=["all", "global", "sliding"], help="override the recipe's DHSA layers")
    ap.add_argument("--work", default="build/bench-generate", help="folder for the exported models")
    ap.add_argument("--out", default="benchmarks/generate-cpu.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kinds = args.kinds.split(",")
    if args.provider == "cuda":
        kinds = [k.replace("-genai", "-ort") for k in kinds]  # onnxruntime-genai's CPU package has no CUDA
    stem = Path(args.model).stem if args.model.endswith(".yaml") else args.model
    stem += f"-layers-{args.layers}" if args.layers else ""
    artefacts = {"dhsa": work / f"{stem}-dhsa", "dense": work / f"{stem}-dense", "rerun": work / f"{stem}-dhsa.onnx"}
    for name, path in artefacts.items():
        if any(k.startswith(name) for k in kinds) and not path.exists():
            cmd = [sys.executable, "-m", "dhsa_export.cli.export", args.model, "--out", str(path)]
            cmd += ["--logits", "last"] if name == "rerun" else ["--with-cache"]
            cmd += ["--dense"] if name == "dense" else (["--layers", args.layers] if args.layers else [])
            subprocess.run(cmd, check=True, cwd=ROOT)
    rows = []
    for seq in (int(x) for x in args.lengths.split(",")):
        for kind in dict.fromkeys(kinds):
            path = artefacts[kind.split("-")[0]]
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(seq), str(args.new_tokens),
                                  args.provider], capture_output=True, text=True, cwd=ROOT)
            if out.returncode:  # e.g. out of memory: recorded, the other rows still run
                err = (out.stderr.strip().splitlines() or ["?"])[-1][:300]
                row = {"seq": seq, "kind": kind, "first_token_s": None, "decode_tokens_per_s": None,
                       "peak_rss_mib": None, "error": err}
            else:
                res = json.loads(out.stdout.strip().splitlines()[-1])
                row = {"seq": seq, "kind": kind, "first_token_s": round(res["first_token_s"], 3),
                       "decode_tokens_per_s": round(res["decode_tokens_per_s"], 2),
                       "peak_rss_mib": round(res["peak_rss_mib"])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    import onnxruntime

    sys.path.insert(0, str(ROOT))
    from dhsa_export import recipes

    meta_gpu = None
    if args.provider == "cuda":
        meta_gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True).stdout.strip()
    meta = {"model": stem, "dhsa": recipes.load(args.model).dhsa.replace(layers=args.layers).model_dump(), "date": date.today().isoformat(),
            "machine": platform.machine(), "cores": os.cpu_count(), "provider": args.provider,
            "onnxruntime": onnxruntime.__version__, "new_tokens": args.new_tokens, "gpu": meta_gpu,
            "input": "random token ids, batch 1, greedy", "kinds": {
                "dhsa-genai": "cached export, onnxruntime-genai", "dhsa-ort": "cached export, own loop (IO binding)",
                "dense-genai": "dense cached export, onnxruntime-genai", "dense-ort": "dense cached export, own loop",
                "rerun": "cache-less DHSA export, every token a full prefill (decode: median of 2 tokens)"}}
    try:
        import onnxruntime_genai

        meta["onnxruntime_genai"] = onnxruntime_genai.__version__
    except ImportError:
        pass
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("\n| L | runtime | time to first token (s) | decode tokens/s | peak RSS MiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq']} | {r['kind']} | {r['first_token_s']} | {r['decode_tokens_per_s']} | {r['peak_rss_mib']} |"
              + (f" {r['error']}" if "error" in r else ""))


if __name__ == "__main__":
    main()
