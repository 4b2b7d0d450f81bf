#!/usr/bin/env python3
"""Prefill on ONNX Runtime CPU: the DHSA export (`--ops plugin`, the DHSA op library) against the
dense export of the same model, at several context lengths. Each (model, length) runs in its own
process, so peak RSS is that run's alone; times are medians of --runs runs after one warm-up.

    python scripts/dev/bench_ort_cpu.py gemma3-270m --lengths 1024,2048,4096,8192 --out benchmarks/ort-cpu.json
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


def child(onnx_path: str, seq: int, runs: int, threads: int) -> dict:
    """Runs inside the measuring subprocess."""
    import resource

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from dhsa_export import runtime

    session = runtime.ort_session(onnx_path, "cpu", threads=threads)
    ids = np.random.default_rng(seq).integers(100, 20000, size=(1, seq), dtype=np.int64)
    run = runtime.ort_logits(session)
    run(ids)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(ids)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="gemma3-270m")
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layers", choices=["all", "global", "sliding"], help="override the recipe's DHSA layers")
    ap.add_argument("--portable", action="store_true", help="also time the --ops portable export (stock ORT)")
    ap.add_argument("--work", default="build/bench-ort-cpu", help="folder for the exported models")
    ap.add_argument("--out", default="benchmarks/ort-cpu.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.layers}" if args.layers else ""
    models = {"dense": work / f"{args.model}-dense.onnx", "dhsa": work / f"{args.model}-dhsa{tag}.onnx"}
    if args.portable:
        models["portable"] = work / f"{args.model}-portable{tag}.onnx"
    for kind, path in models.items():
        if not path.exists():
            cmd = [sys.executable, "-m", "dhsa_export.cli.export", args.model, "--out", str(path), "--logits", "last"]
            extra = ["--dense"] if kind == "dense" else (["--layers", args.layers] if args.layers else [])
            extra += ["--ops", "portable"] if kind == "portable" else []
            subprocess.run(cmd + extra, check=True, cwd=ROOT)
    rows = []
    for seq in (int(x) for x in args.lengths.split(",")):
        row = {"seq": seq}
        for kind, path in models.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(seq), str(args.runs),
                                  str(args.threads)], check=True, capture_output=True, text=True, cwd=ROOT)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{kind}_s"] = round(res["median_s"], 3)
            row[f"{kind}_peak_rss_mib"] = round(res["peak_rss_mib"])
            print(f"L={seq} {kind}: {res['median_s']:.2f} s (runs {[round(t, 2) for t in res['times_s']]}), "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
        row["speedup"] = round(row["dense_s"] / row["dhsa_s"], 2)
        if "portable_s" in row:
            row["portable_speedup"] = round(row["dense_s"] / row["portable_s"], 2)
        rows.append(row)
    import onnxruntime

    from dhsa_export import recipes

    dhsa = recipes.load(args.model).dhsa.replace(layers=args.layers)
    meta = {"model": args.model, "dhsa": dhsa.model_dump(), "date": date.today().isoformat(), "machine": platform.machine(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
            "onnxruntime": onnxruntime.__version__, "runs": args.runs, "input": "random token ids, batch 1",
            "logits": "last position only"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    kinds = list(models)
    print("\n| L | " + " | ".join(f"{k} s" for k in kinds) + " | DHSA speedup | "
          + " | ".join(f"{k} peak RSS MiB" for k in kinds) + " |")
    print("|---|" + "---|" * (2 * len(kinds) + 1))
    for r in rows:
        print(f"| {r['seq']} | " + " | ".join(str(r[f"{k}_s"]) for k in kinds) + f" | {r['speedup']}x | "
              + " | ".join(str(r[f"{k}_peak_rss_mib"]) for k in kinds) + " |")


if __name__ == "__main__":
    main()
