#!/usr/bin/env python3
"""Where one DHSA layer's time goes on the GPU: every CTA of every kernel, from a trace build of the
CUDA library (CMake -DDHSA_TRACE=ON), for boundaries + DhsaSelectAttention replayed as a CUDA graph
the way bench_attention.py times it, or (--decode) one DhsaDecodeAttention step the way
bench_decode.py times it. Prints each kernel's span, the attention's work items by class
(dense-tail splits, fitting blocks, selected blocks), the chain of items on the SMs that finish last,
and the SM time left idle; --out writes every record as JSON.

    cmake -S plugins -B build/trace -DDHSA_CUDA=ON -DDHSA_TRACE=ON -DCMAKE_CUDA_ARCHITECTURES=90a
    cmake --build build/trace --target dhsa_cuda
    DHSA_CUDA_LIBRARY=build/trace/libdhsa_cuda.so python scripts/dev/trace_pipeline.py --seq 4096
    DHSA_CUDA_LIBRARY=build/trace/libdhsa_cuda.so python scripts/dev/trace_pipeline.py --decode --seq 131072
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export.native import CudaKernels, cuda_library  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import SHAPES, as_graph, dhsa_fn  # noqa: E402  (its settings and launch)
import bench_decode  # noqa: E402

KERNELS = {1: "cut scores", 2: "cut selection", 3: "representations", 4: "selection", 5: "attention", 6: "merge",
           7: "decode scores", 8: "decode selection", 9: "decode attention", 10: "decode merge"}
CLASSES = {0: "tail split", 1: "fitting block", 2: "selected block"}
SELECT_PHASES = ("staging", "radix select", "taken and offsets", "writes")  # decode selection's steps


class Record(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("ready", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("kernel", ctypes.c_uint32), ("sm", ctypes.c_uint32), ("cta", ctypes.c_uint32),
                ("item", ctypes.c_uint32)]


def take(kernels: CudaKernels, cap: int = 1 << 17) -> list[dict]:
    buf = (Record * cap)()
    n = kernels.lib.dhsa_cuda_trace_take(buf, cap)
    if n < 0:
        raise SystemExit("this CUDA library records no trace: build it with -DDHSA_TRACE=ON (see --help)")
    return [{f: getattr(buf[i], f) for f, _ in Record._fields_} for i in range(n)]


def describe(rows: list[dict], t0: int) -> dict:
    us = lambda v: (v - t0) / 1000.0  # noqa: E731
    run = [us(r["end"]) - us(max(r["start"], r["ready"])) for r in rows]
    return {"ctas": len(rows), "start": (min(us(r["start"]) for r in rows), max(us(r["start"]) for r in rows)),
            "ready": (min(us(r["ready"]) for r in rows), max(us(r["ready"]) for r in rows)),
            "end": (min(us(r["end"]) for r in rows), max(us(r["end"]) for r in rows)),
            "run_us": (min(run), statistics.median(run), max(run))}


def label(r: dict) -> str:
    if r["kernel"] == 8:
        return "decode sel: " + SELECT_PHASES[min(r["item"], len(SELECT_PHASES) - 1)]
    if r["kernel"] != 5:
        return KERNELS.get(r["kernel"], str(r["kernel"]))
    cls, hk, v = r["item"] >> 28, (r["item"] >> 20) & 0xFF, r["item"] & 0xFFFFF
    return f"{CLASSES[cls]} {v} h{hk}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gemma2-2b", choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--decode", action="store_true", help="one cached decode step (DhsaDecodeAttention)")
    ap.add_argument("--replays", type=int, default=5, help="graph replays before the traced one")
    ap.add_argument("--out", help="JSON file for every record")
    args = ap.parse_args()
    kernels = CudaKernels(cuda_library())
    hq, hkv, dim = SHAPES[args.shape]
    gen = torch.Generator(device="cuda").manual_seed(args.seq)
    q, k, v = (torch.randn(args.batch, h, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
               for h, n in ((hq, 1 if args.decode else args.seq), (hkv, args.seq), (hkv, args.seq)))
    if args.decode:  # the newest query against the cache
        graph = as_graph(bench_decode.decode_fn(kernels, q, k, v, args.budget))
    else:
        graph = as_graph(dhsa_fn(kernels, q, k, v, args.budget))
    for _ in range(args.replays):
        graph()
    torch.cuda.synchronize()
    take(kernels)  # drop the warm-up's records
    graph()
    rows = take(kernels)
    t0 = min(r["start"] for r in rows)
    t_end = max(r["end"] for r in rows)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{args.shape} batch={args.batch} L={args.seq} budget={args.budget}: {len(rows)} CTAs, span {(t_end - t0) / 1000:.1f} us "
          f"(us from the first CTA's start)")
    print(f"{'kernel / item class':<26} {'CTAs':>5} {'start':>15} {'ready':>15} {'end':>15} {'run min/med/max':>20}")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        name = KERNELS.get(r["kernel"], "?")
        if r["kernel"] == 5:
            name = "attn: " + CLASSES[r["item"] >> 28]
        elif r["kernel"] == 8:
            name = label(r)
        groups.setdefault(name, []).append(r)
    for name, rs in sorted(groups.items(), key=lambda kv: min(r["start"] for r in kv[1])):
        d = describe(rs, t0)
        f = lambda a: f"{a[0]:6.1f}-{a[1]:6.1f}"  # noqa: E731
        print(f"{name:<26} {d['ctas']:>5} {f(d['start']):>15} {f(d['ready']):>15} {f(d['end']):>15} "
              f"{d['run_us'][0]:6.1f}/{d['run_us'][1]:5.1f}/{d['run_us'][2]:5.1f}")
    # SM time: busy = some CTA resident; the attention's CTAs that wait hold their SM while they do.
    per_sm: dict[int, list[dict]] = {}
    for r in rows:
        per_sm.setdefault(r["sm"], []).append(r)
    idle = 0.0
    for sm in range(sms):
        spans = sorted((r["start"], r["end"]) for r in per_sm.get(sm, []))
        busy, cur_s, cur_e = 0, None, None
        for s, e in spans:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    busy += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            busy += cur_e - cur_s
        idle += (t_end - t0 - busy) / 1000.0
    attn = [r for r in rows if r["kernel"] == (9 if args.decode else 5)]
    wait = sum(max(0, r["ready"] - r["start"]) for r in attn) / 1000.0
    work = sum(r["end"] - max(r["start"], r["ready"]) for r in attn) / 1000.0
    print(f"SM time: {sms} SMs x {(t_end - t0) / 1000:.1f} us; no CTA resident {idle:.0f} SM-us; attention CTAs "
          f"waiting for the selection {wait:.0f} SM-us, working {work:.0f} SM-us")
    last = sorted(per_sm.items(), key=lambda kv: -max(r["end"] for r in kv[1]))[:6]
    print("SMs that finish last (items in order, us):")
    for sm, rs in last:
        chain = " | ".join(f"{label(r)} {(r['start'] - t0) / 1000:.0f}-{(r['end'] - t0) / 1000:.0f}"
                           for r in sorted(rs, key=lambda r: r["start"]))
        print(f"  SM {sm:3d}: {chain}")
    if args.out:
        Path(args.out).write_text(json.dumps({"shape": args.shape, "seq": args.seq, "budget": args.budget,
                                              "t0": t0, "records": rows}))


if __name__ == "__main__":
    main()
