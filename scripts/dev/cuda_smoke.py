#!/usr/bin/env python3
"""A representative subset of the CUDA kernels on small inputs, for compute-sanitizer (memcheck,
racecheck): every dtype and head-dim path, GQA, sliding window, soft-cap, dense tail (one and several
key splits), L < budget, the fused selection + attention (separate output and in place of the
query), selection over groups of query blocks (512 and 1024 threads), output in place
of the query, cut scores over 16-, 32- and 64-position tiles, cut selection in one CTA (candidates in
shared memory, and in global memory without NMS) and device-wide; on Hopper both attention kernels,
and cut selection and selection both in clusters of CTAs and without; decode steps with their
selection in a cluster, in one CTA, and from global memory."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dhsa_export.native import cuda_kernels  # noqa: E402

k_ = cuda_kernels()
torch.manual_seed(0)
cases = [  # (B, Hq, Hkv, L, D, dtype, block, budget, window, instr, softcap)
    (2, 4, 2, 300, 128, torch.bfloat16, 64, 128, 0, 16, 0.0),
    (1, 8, 4, 700, 256, torch.float16, 128, 256, 200, 64, 50.0),
    (1, 2, 2, 100, 64, torch.bfloat16, 32, 512, 0, 0, 0.0),
    (2, 4, 1, 97, 96, torch.float16, 16, 48, 0, 5, 0.0),
    (1, 4, 2, 200, 32, torch.float32, 16, 64, 40, 8, 30.0),
    (1, 4, 2, 8500, 128, torch.bfloat16, 16, 64, 0, 64, 0.0),  # 4 tail splits, 4 query blocks per selection CTA
]
hopper = [True, False] if torch.cuda.get_device_capability() == (9, 0) else [True]
for (b, hq, hkv, seq, dim, dt, block, budget, window, instr, cap), wgmma in ((c, h) for c in cases for h in hopper):
    k_.use_hopper_kernels(wgmma)
    q = torch.randn(b, hq, seq, dim, device="cuda", dtype=dt)
    k = torch.randn(b, hkv, seq, dim, device="cuda", dtype=dt)
    v = torch.randn(b, hkv, seq, dim, device="cuda", dtype=dt)
    local = glob = min(block, budget // 4) if budget // 4 >= block else budget // 4
    local = max(local, block) if budget >= 2 * block else budget // 2
    glob = min(glob, budget - local)
    for method in ("similarity", "fixed"):
        bd = k_.chunk_boundaries(k, None, method, block, 4, block, 4, 2, 0.0, instr)
        idx, cnt = k_.select_keys(q, k, bd, block, budget, local, glob, window, instr)
        out = k_.sparse_attention(q, k, v, idx, cnt, block, dim ** -0.5, cap, window, instr)
    k_.select_attention(q, k, v, bd, block, budget, local, glob, dim ** -0.5, cap, window, instr)  # fused
    k_.sparse_attention(q, k, v, idx, cnt, block, dim ** -0.5, cap, window, instr, out=q)  # in place
    k_.select_attention(q, k, v, bd, block, budget, local, glob, dim ** -0.5, cap, window, instr, out=q)
    scores = torch.randn(b, seq, device="cuda")
    k_.chunk_boundaries(k, scores, "scores", block, 4, block, 4, 2, 0.0, instr)
    k_.chunk_boundaries(k, None, "similarity", block, 4, block, 16, 0, 0.0, instr)  # widest tiled window, no NMS
# Selection whose shared memory allows one CTA per SM (then 1024 threads): 8192 chunks, 4 blocks per CTA.
qs, ks = torch.randn(1, 2, 16384, 64, device="cuda", dtype=torch.bfloat16), torch.randn(1, 1, 16384, 64, device="cuda",
                                                                                      dtype=torch.bfloat16)
k_.select_keys(qs, ks, k_.chunk_boundaries(ks, None, "fixed", 16, 8, 2, 4, 2, 0.0, 16), 16, 256, 16, 16, 0, 16)
# Cut selection past one CTA's range: a cluster of 8 CTAs per sample on Hopper, else a device-wide sort and scan.
k40 = torch.randn(2, 1, 40000, 64, device="cuda", dtype=torch.bfloat16)
for clusters in hopper:
    k_.use_hopper_kernels(clusters)
    k_.chunk_boundaries(k40, None, "similarity", 64, 4, 64, 4, 2, 0.0, 16)
# Decode steps: one split and several, window, soft-cap, cache shorter than the budget; selection in a
# cluster (Hopper, 4096 chunks and more), in one CTA from shared memory, and from global memory
# (shared memory capped).
for b, hq, hkv, seq, dim, dt, budget, window, cap in [(2, 8, 4, 17000, 256, torch.bfloat16, 2048, 0, 50.0),
                                                     (1, 4, 1, 3001, 96, torch.float16, 512, 700, 0.0),
                                                     (3, 2, 2, 100, 64, torch.float32, 256, 0, 0.0)]:
    q = torch.randn(b, hq, 1, dim, device="cuda", dtype=dt)
    k = torch.randn(b, hkv, seq, dim, device="cuda", dtype=dt)
    v = torch.randn(b, hkv, seq, dim, device="cuda", dtype=dt)
    bd = torch.tensor([[*range(0, seq, 4), seq]] * b, dtype=torch.int32, device="cuda")
    sums = torch.randn(b, bd.shape[1] - 1, dim, device="cuda")
    for clusters, cap_smem in [(c, 0) for c in hopper] + [(False, 20 * 1024)]:
        k_.use_hopper_kernels(clusters)
        k_.set_shared_memory_limit(cap_smem)
        k_.decode_attention(q, k, v, bd, sums, budget, 64, 64, dim ** -0.5, cap, window)
        k_.decode_attention(q, k, v, bd, sums, budget, 64, 64, dim ** -0.5, cap, window, out=q.clone())
k_.set_shared_memory_limit(0)
k_.use_hopper_kernels(True)
torch.cuda.synchronize()
print("cuda_smoke: ok")
