#!/usr/bin/env python3
"""One attention layer per decode step: DhsaDecodeAttention (native CUDA kernels) against dense attention
of the one new query over the whole cache through torch SDPA's fastest backend, in the same run.

bf16, both sides captured as CUDA graphs of many consecutive steps (how TensorRT or an ORT session with
graph capture launches a decode step). The steps rotate over copies of the layer's cache, enough that
one step's data is out of L2 when it comes round again, as in a real model where the other layers'
caches pass through L2 between two steps of this one. Dense attention runs the step as a GQA group of
query rows per kv head (no repeated K/V, no mask); neither side soft-caps (SDPA cannot). DHSA's chunks:
the prompt cut every b / beta = 16 tokens (the chunk count of the recipes' budget), chunk sums as a
runtime keeps them. Reports medians, the bytes each step must read and the bandwidth that implies
against the GPU's peak.

    python scripts/dev/bench_decode.py --out benchmarks/decode-h100.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export.native import cuda_kernels  # noqa: E402
from dhsa_export.ops import reference  # noqa: E402

from cuda_timing import SHAPES, as_graph, timed  # noqa: E402

BLOCK, BETA, LOCAL, GLOBAL = 128, 8, 128, 128
CHUNK = BLOCK // BETA
PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0}  # HBM3 / HBM3e, SXM parts
L2_BYTES = 50 * 2**20


def peak_gbps() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def per_step_ms(replay, steps: int, warmup: int, runs: int) -> float:
    return statistics.median(timed(replay, warmup, runs)) / steps


def graph_of(step, copies: int, steps: int):
    """`steps` consecutive calls step(i % copies) captured as one CUDA graph; returns its replay."""
    return as_graph(*(lambda i=i: step(i % copies) for i in range(steps)))


def dense_step(q, k, v):
    """The fastest SDPA backend for one query row group per kv head: (name, fn)."""
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)
    best = None
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def run(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qg, k, v)
        try:
            run()
            torch.cuda.synchronize()
        except RuntimeError:
            continue
        ms = per_step_ms(graph_of(lambda i: run(), 1, 20), 20, 2, 5)
        if best is None or ms < best[2]:
            best = (backend.name, run, ms)
    if best is None:
        raise SystemExit("no SDPA backend runs this shape")
    return best[0], best[1]


def rotation(batch: int, hkv: int, seq: int, dim: int) -> tuple[int, int]:
    """(copies, steps): copies of a layer's cache for consecutive steps to rotate over, so that they miss
    L2 (sized on the smaller DHSA reads), and the steps one CUDA graph holds."""
    dhsa_min = batch * (math.ceil(seq / CHUNK) * dim * 4 + hkv * 1024 * dim * 2 * 2)
    copies = max(1, min(16, math.ceil(3 * L2_BYTES / dhsa_min)))
    return copies, copies * max(1, math.ceil(24 / copies))


def decode_fn(kernels, q, k, v, budget):
    """One DhsaDecodeAttention step of the query q (B, Hq, 1, D) against the cache k, v, chunked as the
    benchmark chunks it."""
    bd = reference.chunk_boundaries(k, None, "fixed", BLOCK, BETA, CHUNK, 2, 1, 0.0, 0)
    sums = reference.decode_chunk_sums(k, bd)
    dim = q.shape[-1]
    return lambda: kernels.decode_attention(q, k, v, bd, sums, budget, LOCAL, GLOBAL, dim ** -0.5, 0.0, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4096,16384,32768,65536,131072")
    ap.add_argument("--budgets", default="1024,2048")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--shapes", default="gemma2-2b,llama-8b")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    kernels = cuda_kernels()
    t = torch.bfloat16
    rows = []
    for shape in args.shapes.split(","):
        hq, hkv, dim = SHAPES[shape]
        for batch in map(int, args.batches.split(",")):
            for seq in map(int, args.lengths.split(",")):
                kv_bytes = batch * hkv * seq * dim * 2 * 2
                chunks = math.ceil(seq / CHUNK)
                copies, steps = rotation(batch, hkv, seq, dim)
                caches = []
                for _ in range(copies):
                    k = torch.randn(batch, hkv, seq, dim, device="cuda", dtype=t)
                    v = torch.randn(batch, hkv, seq, dim, device="cuda", dtype=t)
                    bd = reference.chunk_boundaries(k, None, "fixed", BLOCK, BETA, CHUNK, 2, 1, 0.0, 0)
                    caches.append((k, v, bd, reference.decode_chunk_sums(k, bd)))
                q = torch.randn(batch, hq, 1, dim, device="cuda", dtype=t)
                backend, dense = dense_step(q, caches[0][0], caches[0][1])
                qg = q.view(batch, hkv, hq // hkv, dim)

                def dense_i(i):
                    with sdpa_kernel([getattr(SDPBackend, backend)]):
                        return F.scaled_dot_product_attention(qg, caches[i][0], caches[i][1])

                dense_ms = per_step_ms(graph_of(dense_i, copies, steps), steps, args.warmup, args.runs)
                for budget in map(int, args.budgets.split(",")):
                    def dhsa_i(i, budget=budget):
                        k, v, bd, sums = caches[i]
                        return kernels.decode_attention(q, k, v, bd, sums, budget, LOCAL, GLOBAL, dim ** -0.5, 0.0, 0)

                    # Correctness on this very input before timing it.
                    want = reference.decode_attention(q, *caches[0], budget, LOCAL, GLOBAL, dim ** -0.5, 0.0, 0)
                    err = (dhsa_i(0).float() - want.float()).abs().max().item()
                    dhsa_ms = per_step_ms(graph_of(dhsa_i, copies, steps), steps, args.warmup, args.runs)
                    count = min(budget, seq)
                    dhsa_bytes = batch * (chunks * dim * 4 + chunks * 4 * 3 + hkv * count * dim * 2 * 2)
                    row = {"shape": shape, "batch": batch, "seq": seq, "budget": budget,
                           "dense_ms": round(dense_ms, 4), "dense_backend": backend, "dhsa_ms": round(dhsa_ms, 4),
                           "speedup": round(dense_ms / dhsa_ms, 2), "bytes_read": dhsa_bytes,
                           "achieved_GBps": round(dhsa_bytes / dhsa_ms / 1e6, 1), "dense_bytes_read": kv_bytes,
                           "dense_GBps": round(kv_bytes / dense_ms / 1e6, 1), "max_abs_err_vs_reference": err,
                           "cache_copies": copies}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del caches
                torch.cuda.empty_cache()
    meta = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "peak_GBps": peak_gbps(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "machine": platform.machine(),
            "dtype": "bfloat16", "timing": "median over replays of a CUDA graph of consecutive steps, per step",
            "dhsa": {"block_size": BLOCK, "chunk_beta": BETA, "chunk": CHUNK, "local_tokens": LOCAL,
                     "global_tokens": GLOBAL, "softcap": 0.0},
            "command": "python scripts/dev/bench_decode.py " + " ".join(sys.argv[1:])}
    print("| shape | batch | K | budget | dense ms | DHSA ms | speedup | DHSA GB/s | dense GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['batch']} | {r['seq']} | {r['budget']} | {r['dense_ms']:.4f} | {r['dhsa_ms']:.4f} | "
              f"{r['speedup']:.1f}x | {r['achieved_GBps']:.0f} | {r['dense_GBps']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
