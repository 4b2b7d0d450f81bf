#!/usr/bin/env python3
"""Per-kernel GPU time of the DHSA pipeline (boundaries, selection, attention) from torch.profiler:
mean over 5 runs after 3 warm-ups, gemma2-2b and llama-8b shapes, budget 2048, L = 8K / 32K / 128K.
The breakdowns in benchmarks/NOTES.md come from this script (DHSA_CUDA_LIBRARY picks the build).
On compute capability 9.0+ the kernels use programmatic dependent launch: a kernel may start while
its predecessor drains and then waits for it, so a short kernel's span here includes that wait (the
merge after the attention most visibly); bench_attention.py's per-op graphs are the figures to quote.

    python scripts/profile_kernels.py
"""
import sys, torch, collections
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from dhsa_export.native import cuda_kernels
from torch.profiler import profile, ProfilerActivity
K = cuda_kernels()
for (hq, hkv, dim) in ((8, 4, 256), (32, 8, 128)):
  for seq in (8192, 32768, 131072):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, hq, seq, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, hkv, seq, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, hkv, seq, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    def run():
        bd = K.chunk_boundaries(k, None, "similarity", 128, 8, 128, 4, 2, 0.0, 64)
        idx, cnt = K.select_keys(q, k, bd, 128, 2048, 128, 128, 0, 64)
        return K.sparse_attention(q, k, v, idx, cnt, 128, dim ** -0.5, 0.0, 0, 64)
    for _ in range(3): run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): run()
        torch.cuda.synchronize()
    agg = collections.defaultdict(float)
    for e in prof.events():
        if e.device_type.name == "CUDA":
            agg[e.name.replace("dhsa::cuda::(anonymous namespace)::","")[:70]] += e.device_time / 5 if hasattr(e, "device_time") else e.cuda_time / 5
    print(f"--- H {hq}/{hkv} D {dim} L {seq}: total GPU {sum(agg.values())/1000:.3f} ms")
    for n_, t in sorted(agg.items(), key=lambda x: -x[1])[:10]:
        print(f"  {t/1000:8.3f} ms  {n_}")
