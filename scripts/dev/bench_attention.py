#!/usr/bin/env python3
"""One attention layer, DHSA (boundaries + selection + sparse attention, native CUDA kernels) against
dense causal attention through torch SDPA's fastest backend, measured in the same run.

Medians of CUDA-event timings after warm-up, both sides replayed as CUDA graphs (how TensorRT or an
ORT session with graph capture launches them; the Python harness's per-op launch cost is reported
separately as dhsa_eager_ms); DHSA as exported: boundaries, then DhsaSelectAttention (selection and
attention in one op, overlapped), and dhsa_separate_ops_ms with the two as separate ops; TFLOP/s on the selected work; peak memory above the inputs, with the
output in its own buffer and in Q's (as ORT runs it: the op lets the session reuse Q's buffer). Writes a
JSON (one row per case) and prints a Markdown table.

    python scripts/dev/bench_attention.py --out benchmarks/attention-h200.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export.native import cuda_kernels  # noqa: E402

from cuda_timing import SHAPES, as_graph, timed  # noqa: E402

BLOCK, LOCAL, GLOBAL, INSTR, BETA = 128, 128, 128, 64, 8


def peak_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def dense_fn(q, k, v):
    """Every SDPA backend that runs this shape (GQA natively, else on K/V expanded before timing)."""
    group = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    out = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for gqa in (True, False):
            def run(backend=backend, gqa=gqa):
                with sdpa_kernel([backend]):
                    if gqa:
                        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
            try:
                run()
            except RuntimeError:
                continue
            out[backend.name + ("" if gqa else "+expanded-kv")] = run
            break
    if not out:
        raise SystemExit("no SDPA backend runs this shape")
    return out


def boundaries(kernels, k):
    """The chunk boundaries every DHSA run here uses (training-free similarity cuts)."""
    return kernels.chunk_boundaries(k, None, "similarity", BLOCK, BETA, BLOCK, 4, 2, 0.0, INSTR)


def dhsa_fn(kernels, q, k, v, budget, in_place=False):
    """The layer as exported: boundaries, then selection + attention as one op (DhsaSelectAttention,
    which overlaps the two). in_place: the output overwrites Q, as in an ORT session, which hands the
    attention Q's buffer."""
    dim = q.shape[-1]

    def run():
        bd = boundaries(kernels, k)
        return kernels.select_attention(q, k, v, bd, BLOCK, budget, LOCAL, GLOBAL, dim ** -0.5, 0.0, 0, INSTR,
                                        out=q if in_place else None)

    return run


def dhsa_separate_fn(kernels, q, k, v, budget):
    """The same with selection and attention as two ops (how layers that share selections run)."""
    dim = q.shape[-1]

    def run():
        bd = boundaries(kernels, k)
        idx, cnt = kernels.select_keys(q, k, bd, BLOCK, budget, LOCAL, GLOBAL, 0, INSTR)
        return kernels.sparse_attention(q, k, v, idx, cnt, BLOCK, dim ** -0.5, 0.0, 0, INSTR)

    return run


def selected_flops(cnt: torch.Tensor, hq: int, dim: int, seq: int) -> float:
    """4 * D * Hq * (sum over sparse query rows of their block's key count + dense tail keys)."""
    tail0 = seq - min(INSTR, seq)
    rows = torch.clamp(tail0 - torch.arange(cnt.shape[1], device=cnt.device) * BLOCK, 0, BLOCK)
    sparse = (cnt[0].double() * rows.double()).sum().item()
    tail = sum(t + 1 for t in range(tail0, seq))
    return 4.0 * dim * hq * (sparse + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--budgets", default="1024,2048,4096")
    ap.add_argument("--shapes", default="gemma2-2b,llama-8b")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/attention-h200.json")
    ap.add_argument("--portable", action="store_true", help="the mma.sync attention kernel even on Hopper")
    args = ap.parse_args()
    kernels = cuda_kernels()
    kernels.use_hopper_kernels(not args.portable)
    dev = torch.cuda.get_device_properties(0)
    rows = []
    for shape in args.shapes.split(","):
        hq, hkv, dim = SHAPES[shape]
        for seq in (int(x) for x in args.lengths.split(",")):
            gen = torch.Generator(device="cuda").manual_seed(seq)
            q = torch.randn(1, hq, seq, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            k = torch.randn(1, hkv, seq, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            v = torch.randn(1, hkv, seq, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            dense = {}
            for name, fn in dense_fn(q, k, v).items():
                graph = as_graph(fn)
                dense[name] = (statistics.median(timed(graph, args.warmup, args.runs)), fn)
            best = min(dense, key=lambda n: dense[n][0])
            dense_ms, dense_run = dense[best]
            dense_mem = peak_mib(dense_run)
            dense_flops = 4.0 * dim * hq * seq * (seq + 1) / 2
            for budget in (int(x) for x in args.budgets.split(",")):
                run = dhsa_fn(kernels, q, k, v, budget)
                eager_ms = statistics.median(timed(run, args.warmup, args.runs))
                graph, separate = as_graph(run), as_graph(dhsa_separate_fn(kernels, q, k, v, budget))
                ms = statistics.median(timed(graph, args.warmup, args.runs))
                separate_ms = statistics.median(timed(separate, args.warmup, args.runs))
                mem = peak_mib(run)
                q_work = q.clone()  # the in-place run's Q, allocated before the measurement like q
                mem_in_place = peak_mib(dhsa_fn(kernels, q_work, k, v, budget, in_place=True))
                del q_work
                bd = boundaries(kernels, k)
                idx, cnt = kernels.select_keys(q, k, bd, BLOCK, budget, LOCAL, GLOBAL, 0, INSTR)
                stages = {
                    "boundaries_ms": lambda: boundaries(kernels, k),
                    "selection_ms": lambda: kernels.select_keys(q, k, bd, BLOCK, budget, LOCAL, GLOBAL, 0, INSTR),
                    "attention_ms": lambda: kernels.sparse_attention(q, k, v, idx, cnt, BLOCK, dim ** -0.5, 0.0, 0,
                                                                     INSTR),
                }
                stage = {name: statistics.median(timed(as_graph(fn), 2, 10)) for name, fn in stages.items()}
                flops = selected_flops(cnt, hq, dim, seq)
                row = {"shape": shape, "hq": hq, "hkv": hkv, "dim": dim, "seq": seq, "budget": budget,
                       "dtype": "bf16", "dense_backend": best, "dense_ms": round(dense_ms, 4),
                       "dense_tflops": round(dense_flops / dense_ms / 1e9, 1), "dhsa_ms": round(ms, 4),
                       "speedup": round(dense_ms / ms, 2), "dhsa_eager_ms": round(eager_ms, 4),
                       "dhsa_separate_ops_ms": round(separate_ms, 4),
                       **{k_: round(v_, 4) for k_, v_ in stage.items()},
                       "attention_tflops_selected": round(flops / stage["attention_ms"] / 1e9, 1),
                       "dense_peak_mib": round(dense_mem, 1), "dhsa_peak_mib": round(mem, 1),
                       "dhsa_in_place_peak_mib": round(mem_in_place, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    meta = {"gpu": dev.name, "sm_count": dev.multi_processor_count, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "attention_kernel": kernels.attention_kernel(), "timing": "CUDA graph replay (dhsa_eager_ms: "
            "launched op by op from Python)", "runs": args.runs, "warmup": args.warmup, "block": BLOCK, "local": LOCAL, "global": GLOBAL,
            "instruction_tokens": INSTR, "chunk_beta": BETA, "boundaries": "similarity, window 4, nms radius 2",
            "pipeline": "DhsaChunkBoundaries + DhsaSelectAttention (dhsa_separate_ops_ms: + DhsaSelectKeys + "
                        "DhsaSparseAttention)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{dev.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, attention kernel "
          f"{meta['attention_kernel']}; medians of {args.runs} runs\n")
    print("| shape | L | budget | dense ms (backend) | DHSA ms | speedup | attn TFLOP/s | peak MiB dense / DHSA / "
          "DHSA in place |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['seq'] // 1024}K | {r['budget']} | {r['dense_ms']:.2f} ({r['dense_backend']}) | "
              f"{r['dhsa_ms']:.2f} | {r['speedup']:.1f}x | {r['attention_tflops_selected']} | "
              f"{r['dense_peak_mib']:.0f} / {r['dhsa_peak_mib']:.0f} / {r['dhsa_in_place_peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
