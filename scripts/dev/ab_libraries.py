#!/usr/bin/env python3
"""Same-call A/B of CUDA library builds: one DHSA layer (boundaries + DhsaSelectAttention, as
bench_attention.py times it; with --decode one DhsaDecodeAttention step, as bench_decode.py times it)
per library, each captured as a CUDA graph, timed in interleaved rounds (medians of --replays replays
per round) next to dense SDPA; prints each library's median over
the rounds, its change against the first library, and its largest output difference from it.
Libraries built from other trees time a few per cent apart on identical work (docs/performance.md),
so read small differences against the spread between rounds.

    python scripts/dev/ab_libraries.py build/a/libdhsa_cuda.so build/b/libdhsa_cuda.so --seqs 4096,8192
    python scripts/dev/ab_libraries.py A.so B.so --decode --batch 8 --shapes llama-8b --seqs 4096,131072

A library whose C API differs from this checkout's is given as LIB@SRC, SRC being the source tree it
was built from: its own dhsa_export/native.py then loads it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export.native import CudaKernels  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import SHAPES, as_graph, dhsa_fn, timed  # noqa: E402
import bench_decode  # noqa: E402


def kernels_for(arg: str):
    """LIB, or LIB@SRC: the library through the Python binding of the tree it was built from."""
    lib, _, src = arg.partition("@")
    if not src:
        return CudaKernels(Path(lib))
    name = f"dhsa_export_{abs(hash(src))}"
    spec = importlib.util.spec_from_file_location(name, Path(src) / "dhsa_export" / "__init__.py",
                                                  submodule_search_locations=[str(Path(src) / "dhsa_export")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    import dhsa_export.ops  # the op definitions exist once per process: the old binding shares ours

    sys.modules[f"{name}.ops"] = dhsa_export.ops
    sys.modules[f"{name}.ops.reference"] = dhsa_export.ops.reference
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.native").CudaKernels(Path(lib))


def median_ms(replay, n: int) -> float:
    return statistics.median(timed(replay, 0, n))


def layer_graphs(libs, shape: str, seq: int, budget: int):
    """One prefill layer per library and dense causal attention (cuDNN): (graph replays, first outputs)."""
    hq, hkv, dim = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(seq)
    q, k, v = (torch.randn(1, h, seq, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for h in (hq, hkv, hkv))
    outs, graphs = [], []
    for kern in libs:
        run = dhsa_fn(kern, q, k, v, budget)
        outs.append(run().float())
        graphs.append(as_graph(run))

    def dense():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return graphs + [as_graph(dense)], outs, 1


def decode_graphs(libs, shape: str, seq: int, budget: int, batch: int):
    """Consecutive decode steps over rotating cache copies per library, and dense attention of the new query
    (bench_decode.py's setting): (graph replays, first outputs, steps per replay)."""
    hq, hkv, dim = SHAPES[shape]
    torch.manual_seed(seq)
    copies, steps = bench_decode.rotation(batch, hkv, seq, dim)
    caches = [(torch.randn(batch, hkv, seq, dim, device="cuda", dtype=torch.bfloat16),
               torch.randn(batch, hkv, seq, dim, device="cuda", dtype=torch.bfloat16)) for _ in range(copies)]
    q = torch.randn(batch, hq, 1, dim, device="cuda", dtype=torch.bfloat16)
    outs, graphs = [], []
    for kern in libs:
        fns = [bench_decode.decode_fn(kern, q, k, v, budget) for k, v in caches]
        outs.append(fns[0]().float())
        graphs.append(bench_decode.graph_of(lambda i, fns=fns: fns[i](), copies, steps))
    backend, _ = bench_decode.dense_step(q, *caches[0])
    qg = q.view(batch, hkv, hq // hkv, dim)

    def dense_i(i):
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            return F.scaled_dot_product_attention(qg, *caches[i])

    return graphs + [bench_decode.graph_of(dense_i, copies, steps)], outs, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("libraries", nargs="+")
    ap.add_argument("--shapes", default="gemma2-2b")
    ap.add_argument("--seqs", default="4096,8192")
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replays", type=int, default=25)
    ap.add_argument("--decode", action="store_true", help="one decode step against a cache of each length")
    ap.add_argument("--batch", type=int, default=1, help="--decode: samples per step")
    args = ap.parse_args()
    libs = [kernels_for(p) for p in args.libraries]
    names = [str(Path(p.split("@")[0]).parent.name or p) for p in args.libraries]
    for shape in args.shapes.split(","):
        for seq in (int(s) for s in args.seqs.split(",")):
            if args.decode:
                graphs, outs, steps = decode_graphs(libs, shape, seq, args.budget, args.batch)
            else:
                graphs, outs, steps = layer_graphs(libs, shape, seq, args.budget)
            for g in graphs:  # warm-up
                median_ms(g, 5)
            times = [[] for _ in graphs]
            for _ in range(args.rounds):
                for i, g in enumerate(graphs):
                    times[i].append(median_ms(g, args.replays) / steps)
            dense_ms = statistics.median(times[-1])
            base = statistics.median(times[0])
            what = f"decode batch={args.batch}" if args.decode else "layer"
            print(f"{shape} {what} L={seq} budget={args.budget}: dense {dense_ms:.4f} ms "
                  f"[{min(times[-1]):.4f}-{max(times[-1]):.4f}]")
            for i, name in enumerate(names):
                med = statistics.median(times[i])
                diff = (outs[i] - outs[0]).abs().max().item()
                print(f"  {name:<14} {med:.4f} ms [{min(times[i]):.4f}-{max(times[i]):.4f}]  {100 * (med / base - 1):+5.1f} %"
                      f"  {dense_ms / med:.3f}x dense  max |out - {names[0]}| {diff:.3g}")
            del outs, graphs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
