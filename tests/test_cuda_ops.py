"""The CUDA kernels against the PyTorch reference on random cases, outputs poisoned before every
launch. Needs a GPU and libdhsa_cuda.so; skipped elsewhere (run through scripts/dev/gpu_check.sh)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from dhsa_export.errors import DHSAError
from dhsa_export.ops import reference

from .cases import Case, random_boundaries, random_case
from .compare import assert_same_boundaries, assert_same_selection

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

N_CASES = 100
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Max abs error vs the float32 reference on the same low-precision inputs (outputs are O(1)).
TOL = {"fp16": 3e-3, "bf16": 1.6e-2, "fp32": 2e-5}
POISON_INT = 0x7F7F7F7F


@pytest.fixture(scope="module")
def kernels():
    from dhsa_export.native import cuda_kernels

    return cuda_kernels()


def _case(seed: int, dims=(64, 128, 256, 96), max_seq: int = 1500) -> tuple[Case, random.Random, torch.Generator]:
    rng = random.Random(seed)
    c = random_case(rng, max_seq=max_seq, dims=dims, gqa=(1, 2, 4, 8))
    c.block_size = rng.choice([c.block_size, 64, 128])
    c.local_tokens = max(c.local_tokens, c.block_size)
    c.budget = max(c.budget, c.local_tokens + c.global_tokens)
    return c, rng, torch.Generator(device="cuda").manual_seed(seed)


def _qkv(c: Case, gen, dtype):
    q = torch.randn(c.batch, c.hq, c.seq, c.dim, generator=gen, device="cuda").to(dtype)
    k = torch.randn(c.batch, c.hkv, c.seq, c.dim, generator=gen, device="cuda").to(dtype)
    v = torch.randn(c.batch, c.hkv, c.seq, c.dim, generator=gen, device="cuda").to(dtype)
    return q, k, v


def _sel_attrs(c):
    return (c.block_size, c.budget, c.local_tokens, c.global_tokens, c.sliding_window, c.instruction_tokens)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(N_CASES))
def test_sparse_attention(kernels, dtype, case_id, seed):
    _check_sparse_attention(kernels, dtype, seed)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(30))
def test_sparse_attention_in_place(kernels, dtype, case_id, seed):
    _check_sparse_attention(kernels, dtype, seed, in_place=True)


# The portable (mma.sync) kernel other GPUs run, here at the H200's own shared memory (a build without
# sm_90a) and at the limits of smaller GPUs (sm_80/87: 163 KB, sm_86/89/120: 99 KB), where it takes
# fewer pipeline stages / smaller tiles. On other GPUs these are the default path anyway.
PORTABLE = {"227KB": 0, "163KB": 166912, "99KB": 101376}


@pytest.fixture
def portable(kernels):
    kernels.use_hopper_kernels(False)
    yield kernels
    kernels.use_hopper_kernels(True)
    kernels.set_shared_memory_limit(0)


@pytest.mark.parametrize("limit", PORTABLE)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("case_id", range(20))
def test_sparse_attention_portable_kernel(portable, limit, dtype, case_id, seed):
    portable.set_shared_memory_limit(PORTABLE[limit])
    _check_sparse_attention(portable, dtype, seed, dims=(64, 128, 256))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("case_id", range(10))
def test_sparse_attention_portable_kernel_in_place(portable, dtype, case_id, seed):
    _check_sparse_attention(portable, dtype, seed, dims=(64, 128, 256), in_place=True)


def test_torch_ops_on_cuda_reject_malformed_inputs_as_ort_does(kernels):
    """torch.ops.dhsa on CUDA tensors goes through the C API's checks: the message ORT gives
    (tests/test_bindings.py compares the two on every malformed case)."""
    from dhsa_export.native import enable_cuda_kernels
    from dhsa_export.ops import library as ops

    enable_cuda_kernels()
    q = torch.randn(1, 2, 20, 8, device="cuda")
    k, v = torch.randn(1, 1, 20, 8, device="cuda"), torch.randn(1, 1, 19, 8, device="cuda")
    bd = torch.tensor([[0, 10, 20]], device="cuda", dtype=torch.int32)
    with pytest.raises(reference.OpInputError) as err:
        ops.select_attention(q, k, v, bd, 4, 16, 4, 4, 0.5, 0.0, 0, 0)
    assert str(err.value) == "DhsaSelectAttention: inputs 'key' (1, 1, 20, 8) and 'value' (1, 1, 19, 8) differ"


def test_sparse_attention_rejects_a_bad_out_buffer(kernels):
    q = torch.zeros(1, 2, 70, 64, device="cuda", dtype=torch.bfloat16)
    idx = torch.zeros(1, 2, 64, device="cuda", dtype=torch.int32)
    cnt = torch.ones(1, 2, device="cuda", dtype=torch.int32)
    for out in (torch.zeros(1, 2, 70, 64, device="cuda"),  # float32
                torch.zeros(1, 2, 69, 64, device="cuda", dtype=torch.bfloat16),
                torch.zeros(1, 2, 64, 70, device="cuda", dtype=torch.bfloat16).transpose(2, 3)):
        with pytest.raises(DHSAError, match=r"out must be a contiguous torch.bfloat16 tensor of the query's shape"):
            kernels.sparse_attention(q, q[:, :1], q[:, :1], idx, cnt, 64, 0.125, 0.0, 0, 0, out=out)
    big = torch.zeros(2 * q.numel(), device="cuda", dtype=torch.bfloat16)
    q2 = big[: q.numel()].view(q.shape)
    with pytest.raises(DHSAError, match="overlaps the query"):
        kernels.sparse_attention(q2, q2[:, :1], q2[:, :1], idx, cnt, 64, 0.125, 0.0, 0, 0,
                                 out=big[64: 64 + q.numel()].view(q.shape))


def test_hopper_gpus_take_the_wgmma_kernel(kernels):
    """On an sm_90 GPU the sm_90a build (scripts/dev/gpu_check.sh) runs the wgmma kernel, so the tests above
    check it; test_sparse_attention_portable_kernel checks the kernel every other GPU runs."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("not a compute capability 9.0 GPU")
    assert kernels.attention_kernel() == "wgmma (sm_90a)"
    kernels.use_hopper_kernels(False)
    try:
        assert kernels.attention_kernel() == "mma.sync"
    finally:
        kernels.use_hopper_kernels(True)


def test_sparse_attention_too_little_shared_memory(kernels):
    q = torch.zeros(1, 2, 70, 256, device="cuda", dtype=torch.bfloat16)
    k = torch.zeros(1, 1, 70, 256, device="cuda", dtype=torch.bfloat16)
    idx = torch.arange(64, device="cuda", dtype=torch.int32).expand(1, 2, 64).contiguous()
    cnt = torch.full((1, 2), 64, device="cuda", dtype=torch.int32)
    kernels.set_shared_memory_limit(48 * 1024)
    try:
        with pytest.raises(reference.OpInputError, match="head dim 256 needs .* bytes of shared memory"):
            kernels.sparse_attention(q, k, k, idx, cnt, 64, 0.0625, 0.0, 0, 0)
    finally:
        kernels.set_shared_memory_limit(0)


def _check_sparse_attention(kernels, dtype, seed, dims=(64, 128, 256, 96), in_place=False):
    """in_place: the output overwrites the query (how ORT reuses Q's buffer); a row left unwritten keeps
    its query values, which the comparison with the reference catches as the NaN poison would."""
    c, rng, gen = _case(seed, dims=dims)
    q, k, v = _qkv(c, gen, DTYPES[dtype])
    bd = random_boundaries(rng, c.batch, c.seq, reference.num_chunks(c.seq, c.block_size, c.chunk_beta), "cuda")
    idx, cnt = reference.select_keys(q.float(), k.float(), bd, *_sel_attrs(c))
    ref = reference.sparse_attention(q.float(), k.float(), v.float(), idx, cnt, c.block_size, c.scale, c.softcap,
                                     c.sliding_window, c.instruction_tokens)
    out = q.clone() if in_place else torch.full_like(q, float("nan"))
    kernels.sparse_attention(out if in_place else q, k, v, idx, cnt, c.block_size, c.scale, c.softcap,
                             c.sliding_window, c.instruction_tokens, out=out)
    assert not out.isnan().any(), "unwritten (poisoned) output"
    err = (out.float() - ref).abs().max().item()
    assert err <= TOL[dtype], (err, c)
    rel = ((out.float() - ref).norm() / ref.norm().clamp_min(1e-6)).item()
    assert rel <= TOL[dtype], (rel, c)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(N_CASES))
def test_select_keys(kernels, dtype, case_id, seed):
    _check_select_keys(kernels, dtype, seed)


def _check_select_keys(kernels, dtype, seed):
    c, rng, gen = _case(seed)
    q, k, _ = _qkv(c, gen, DTYPES[dtype])
    bd = random_boundaries(rng, c.batch, c.seq, reference.num_chunks(c.seq, c.block_size, c.chunk_beta), "cuda")
    nqb = reference.num_query_blocks(c.seq, c.block_size)
    out = (torch.full((c.batch, nqb, c.budget), POISON_INT, dtype=torch.int32, device="cuda"),
           torch.full((c.batch, nqb), -7, dtype=torch.int32, device="cuda"))
    kernels.select_keys(q, k, bd, *_sel_attrs(c), out=out)
    ref_idx, ref_cnt = reference.select_keys(q, k, bd, *_sel_attrs(c))
    scores = reference.selection_scores(q, k, bd, c.block_size, c.instruction_tokens)
    assert_same_selection(out[0].cpu().numpy(), out[1].cpu().numpy(), ref_idx.cpu().numpy(), ref_cnt.cpu().numpy(),
                          scores.cpu().numpy(), bd.cpu().numpy(), tol=1e-4 if dtype != "fp32" else 1e-5)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(N_CASES))
def test_chunk_boundaries(kernels, dtype, case_id, seed):
    _check_chunk_boundaries(kernels, dtype, seed)


def _check_chunk_boundaries(kernels, dtype, seed):
    c, rng, gen = _case(seed)
    _, k, _ = _qkv(c, gen, DTYPES[dtype])
    n = reference.num_chunks(c.seq, c.block_size, c.chunk_beta)
    window, radius = rng.choice([1, 2, 4, 7, 16, 17]), rng.choice([0, 2, 8])  # 16: the widest tiled window
    common = (c.block_size, c.chunk_beta, c.block_size, window, radius)
    for method, thr in (("scores", 0.25), ("fixed", 0.0), ("similarity", 0.0)):
        scores = torch.randn(c.batch, c.seq, generator=gen, device="cuda") if method == "scores" else None
        out = torch.full((c.batch, n + 1), POISON_INT, dtype=torch.int32, device="cuda")
        kernels.chunk_boundaries(k, scores, method, *common, thr, c.instruction_tokens, out=out)
        ref = reference.chunk_boundaries(k, scores, method, *common, thr, c.instruction_tokens)
        if method == "similarity":
            assert_same_boundaries(out.cpu().numpy(), ref.cpu().numpy(),
                                   reference.similarity_scores(k, window).cpu().numpy(), tol=1e-4)
        else:
            np.testing.assert_array_equal(out.cpu().numpy(), ref.cpu().numpy(), err_msg=method)


# Hopper GPUs select cuts and keys with clusters of CTAs where other GPUs use one CTA: the portable
# path, on the same random cases.
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(20))
def test_boundaries_and_selection_without_clusters(portable, dtype, case_id, seed):
    _check_chunk_boundaries(portable, dtype, seed)
    _check_select_keys(portable, dtype, seed)


# Cut selection takes one CTA per sample up to 16K positions (a cluster of 8 on Hopper: up to 128K)
# and a device-wide sort beyond: both sides of each switch, batch 2, with more candidates than cuts
# (threshold 0) and fewer (high thresholds: similarity scores of random keys sit near 1, uniform
# scores above 0.995 are 0.5 % of positions).
@pytest.mark.parametrize("seq", [9001, 40000, 131072, 131073])
@pytest.mark.parametrize("few", [False, True])
def test_chunk_boundaries_long(kernels, seq, few, seed):
    _check_long_boundaries(kernels, seq, few, seed)


@pytest.mark.parametrize("seq", [9001, 16384, 16385, 40000])
@pytest.mark.parametrize("few", [False, True])
def test_chunk_boundaries_long_without_clusters(portable, seq, few, seed):
    _check_long_boundaries(portable, seq, few, seed)


def _check_long_boundaries(kernels, seq, few, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    k = torch.randn(2, 2, seq, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
    scores = torch.rand(2, seq, generator=gen, device="cuda")
    for method, given, threshold in (("similarity", None, 1.1 if few else 0.0),
                                     ("scores", scores, 0.995 if few else 0.0)):
        out = kernels.chunk_boundaries(k, given, method, 64, 8, 64, 4, 2, threshold, 64)
        ref = reference.chunk_boundaries(k, given, method, 64, 8, 64, 4, 2, threshold, 64)
        if method == "similarity":
            assert_same_boundaries(out.cpu().numpy(), ref.cpu().numpy(),
                                   reference.similarity_scores(k, 4).cpu().numpy(), tol=1e-4)
        else:
            np.testing.assert_array_equal(out.cpu().numpy(), ref.cpu().numpy())


# Selection CTAs score 1, 2, 4 or 8 consecutive query blocks, chosen from the block count x batch, the
# SM count and shared memory; on a 132-SM H200 these pick 2 (2 x 200 blocks) and 8 (2 x 1056 blocks, few
# chunks) — the other tests reach only 1 and 4.
@pytest.mark.parametrize("seq,block,beta", [(12800, 64, 8), (16896, 16, 1)])
def test_select_keys_grouped_blocks(kernels, seq, block, beta, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(2, 4, seq, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, seq, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
    bd = reference.chunk_boundaries(k, None, "similarity", block, beta, block, 4, 2, 0.0, 64)
    idx, cnt = kernels.select_keys(q, k, bd, block, 512, 64, 64, 0, 64)
    ref_idx, ref_cnt = reference.select_keys(q, k, bd, block, 512, 64, 64, 0, 64)
    scores = reference.selection_scores(q, k, bd, block, 64)
    assert_same_selection(idx.cpu().numpy(), cnt.cpu().numpy(), ref_idx.cpu().numpy(), ref_cnt.cpu().numpy(),
                          scores.cpu().numpy(), bd.cpu().numpy(), tol=1e-4)


@pytest.mark.parametrize("seq,hq,hkv,dim", [(32768, 8, 4, 256), (131072, 8, 4, 256), (131072, 32, 8, 128),
                                            (100003, 8, 4, 256)])
def test_long_sequences_bf16(kernels, seq, hq, hkv, dim, seed):
    """The whole pipeline at long L (gemma2-2b and llama-8b shapes): boundaries, selection, attention."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, hq, seq, dim, generator=gen, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, seq, dim, generator=gen, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hkv, seq, dim, generator=gen, device="cuda", dtype=torch.bfloat16)
    block, budget, local, glob, instr = 128, 2048, 128, 128, 64
    bd = kernels.chunk_boundaries(k, None, "similarity", block, 8, block, 4, 2, 0.0, instr)
    bd_ref = reference.chunk_boundaries(k, None, "similarity", block, 8, block, 4, 2, 0.0, instr)
    assert_same_boundaries(bd.cpu().numpy(), bd_ref.cpu().numpy(),
                           reference.similarity_scores(k, 4).cpu().numpy(), tol=1e-4)
    idx, cnt = kernels.select_keys(q, k, bd_ref, block, budget, local, glob, 0, instr)
    ref_idx, ref_cnt = reference.select_keys(q, k, bd_ref, block, budget, local, glob, 0, instr)
    scores = reference.selection_scores(q, k, bd_ref, block, instr)
    assert_same_selection(idx.cpu().numpy(), cnt.cpu().numpy(), ref_idx.cpu().numpy(), ref_cnt.cpu().numpy(),
                          scores.cpu().numpy(), bd_ref.cpu().numpy(), tol=1e-4)
    out = torch.full_like(q, float("nan"))
    kernels.sparse_attention(q, k, v, ref_idx, ref_cnt, block, dim ** -0.5, 0.0, 0, instr, out=out)
    ref = reference.sparse_attention(q, k, v, ref_idx, ref_cnt, block, dim ** -0.5, 0.0, 0, instr)
    assert not out.isnan().any()
    err = (out.float() - ref.float()).abs()
    worst = divmod(int(err.flatten().argmax()) // dim, seq)  # (head, position)
    assert err.max().item() <= 2 * TOL["bf16"], (err.max().item(), "head/position", worst)
    kernels.sparse_attention(q, k, v, ref_idx, ref_cnt, block, dim ** -0.5, 0.0, 0, instr, out=q)  # in place
    assert torch.equal(q, out), "in place differs from out of place"


@pytest.mark.parametrize("seq,batch,hq,hkv,dim,dtype", [(9001, 2, 8, 4, 256, "bf16"), (20000, 1, 8, 2, 128, "fp16"),
                                                          (3000, 3, 4, 4, 64, "bf16")])
def test_pipeline_replayed_as_a_cuda_graph(kernels, seq, batch, hq, hkv, dim, dtype, seed):
    """Captured in a CUDA graph (as TensorRT and ORT run it), the kernels of all three ops become a
    chain of programmatic-launch edges; replays on fresh inputs must equal eager runs bit for bit."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    t = DTYPES[dtype]
    block, budget, local, glob, instr = 128, 2048, 128, 128, 64

    def pipeline(q, k, v):
        bd = kernels.chunk_boundaries(k, None, "similarity", block, 8, block, 4, 2, 0.0, instr)
        idx, cnt = kernels.select_keys(q, k, bd, block, budget, local, glob, 0, instr)
        return bd, idx, cnt, kernels.sparse_attention(q, k, v, idx, cnt, block, dim ** -0.5, 0.0, 0, instr)

    _check_replays(pipeline, lambda: [torch.randn(batch, h, seq, dim, generator=gen, device="cuda").to(t)
                                      for h in (hq, hkv, hkv)])


def _check_replays(pipeline, inputs):
    """pipeline(*inputs()) -> tensors, captured in a CUDA graph: two replays on fresh inputs (outputs
    poisoned before each) equal eager runs bit for bit."""
    static = inputs()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pipeline(*static)  # lazy initialisation outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pipeline(*static)
    for _ in range(2):
        fresh = inputs()
        for dst, src in zip(static, fresh):
            dst.copy_(src)
        for c in captured:
            c.fill_(-1 if c.dtype == torch.int32 else float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(captured, pipeline(*fresh)):
            assert torch.equal(got, want)


def _check_select_attention(kernels, dtype, seed, dims=(64, 128, 256, 96), in_place=False):
    """The fused op against the two ops it chains (bit for bit: the same kernels, only overlapped) and
    the attention against the reference on the selection the kernels made. in_place: the output
    overwrites the query, which the selection reads while the attention's first blocks run."""
    c, rng, gen = _case(seed, dims=dims)
    q, k, v = _qkv(c, gen, DTYPES[dtype])
    bd = random_boundaries(rng, c.batch, c.seq, reference.num_chunks(c.seq, c.block_size, c.chunk_beta), "cuda")
    out = q.clone() if in_place else torch.full_like(q, float("nan"))
    kernels.select_attention(out if in_place else q, k, v, bd, c.block_size, c.budget, c.local_tokens,
                             c.global_tokens, c.scale, c.softcap, c.sliding_window, c.instruction_tokens, out=out)
    idx, cnt = kernels.select_keys(q, k, bd, *_sel_attrs(c))
    apart = kernels.sparse_attention(q, k, v, idx, cnt, c.block_size, c.scale, c.softcap, c.sliding_window,
                                     c.instruction_tokens)
    assert not out.isnan().any(), "unwritten (poisoned) output"
    assert torch.equal(out, apart), ((out.float() - apart.float()).abs().max().item(), c)
    ref = reference.sparse_attention(q.float(), k.float(), v.float(), idx, cnt, c.block_size, c.scale, c.softcap,
                                     c.sliding_window, c.instruction_tokens)
    assert (out.float() - ref).abs().max().item() <= TOL[dtype], c


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(N_CASES))
def test_select_attention(kernels, dtype, case_id, seed):
    _check_select_attention(kernels, dtype, seed)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(30))
def test_select_attention_in_place(kernels, dtype, case_id, seed):
    _check_select_attention(kernels, dtype, seed, in_place=True)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("case_id", range(20))
def test_select_attention_portable_kernel(portable, dtype, case_id, seed):
    _check_select_attention(portable, dtype, seed, dims=(64, 128, 256))


@pytest.mark.parametrize("seq,batch,hq,hkv,dim,window,softcap", [
    (4096, 1, 8, 4, 256, 0, 0.0), (8191, 2, 8, 4, 256, 0, 50.0), (16384, 1, 8, 4, 256, 4096, 50.0),
    (32768, 1, 32, 8, 128, 0, 0.0), (2000, 3, 4, 1, 64, 0, 0.0)])
def test_select_attention_long_bf16(kernels, seq, batch, hq, hkv, dim, window, softcap, seed):
    """gemma2-2b (global and sliding layers) and llama-8b shapes at budget 2048: many blocks before and
    after the budget's reach, a tail in key splits; L = 2000 < budget: every block fits, no CTA waits."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(batch, h, seq, dim, generator=gen, device="cuda", dtype=torch.bfloat16)
               for h in (hq, hkv, hkv))
    attrs = (128, 2048, 128, 128, dim ** -0.5, softcap, window, 64)
    bd = kernels.chunk_boundaries(k, None, "similarity", 128, 8, 128, 4, 2, 0.0, 64)
    out = torch.full_like(q, float("nan"))
    kernels.select_attention(q, k, v, bd, *attrs, out=out)
    idx, cnt = kernels.select_keys(q, k, bd, 128, 2048, 128, 128, window, 64)
    apart = kernels.sparse_attention(q, k, v, idx, cnt, 128, dim ** -0.5, softcap, window, 64)
    assert torch.equal(out, apart)
    ref = reference.sparse_attention(q, k, v, idx, cnt, 128, dim ** -0.5, softcap, window, 64)
    assert (out.float() - ref.float()).abs().max().item() <= 2 * TOL["bf16"]


def test_select_attention_replayed_as_a_cuda_graph(kernels, seed):
    """Boundaries and the fused op in a CUDA graph: replays on fresh inputs equal eager runs bit for bit."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def pipeline(q, k, v):
        bd = kernels.chunk_boundaries(k, None, "similarity", 128, 8, 128, 4, 2, 0.0, 64)
        return bd, kernels.select_attention(q, k, v, bd, 128, 2048, 128, 128, 0.0625, 0.0, 0, 64)

    _check_replays(pipeline, lambda: [torch.randn(2, h, 9001, 256, generator=gen, device="cuda",
                                                  dtype=torch.bfloat16) for h in (8, 4, 4)])


def test_select_attention_without_a_workspace(kernels, seed):
    """ORT's CUDA EP passes no workspace: the launcher takes one from the stream-ordered allocator."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(2, h, 3000, 128, generator=gen, device="cuda", dtype=torch.bfloat16) for h in (8, 4, 4))
    bd = kernels.chunk_boundaries(k, None, "similarity", 128, 8, 128, 4, 2, 0.0, 64)
    attrs = (128, 512, 128, 128, 128 ** -0.5, 0.0, 0, 64)
    want = kernels.select_attention(q, k, v, bd, *attrs)
    out = torch.full_like(q, float("nan"))
    kernels.select_attention(q, k, v, bd, *attrs, out=out, workspace=False)
    torch.cuda.synchronize()
    assert torch.equal(out, want)


def test_select_attention_rejects_an_overlapping_out(kernels):
    shape = (1, 2, 70, 64)
    bd = torch.tensor([[0, 35, 70]], device="cuda", dtype=torch.int32)
    big = torch.zeros(2 * 2 * 70 * 64, device="cuda", dtype=torch.bfloat16)
    n = math.prod(shape)
    q, shifted = big[:n].view(shape), big[64: 64 + n].view(shape)
    out = torch.zeros(shape, device="cuda", dtype=torch.bfloat16)
    for query, key, dst in ((q, q[:, :1], shifted), (q, out[:, :1], out)):  # part of the query; the key
        with pytest.raises(DHSAError, match="overlaps the key, the value or part of the query"):
            kernels.select_attention(query, key, key, bd, 64, 64, 16, 16, 0.125, 0.0, 0, 0, out=dst)


def test_softcap_and_sliding_window_long(kernels, seed):
    """Gemma2 sliding layer at 16K: window 4096, soft-capping 50."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, 8, 16384, 256, generator=gen, device="cuda", dtype=torch.bfloat16) * 3
    k = torch.randn(1, 4, 16384, 256, generator=gen, device="cuda", dtype=torch.bfloat16) * 3
    v = torch.randn(1, 4, 16384, 256, generator=gen, device="cuda", dtype=torch.bfloat16)
    bd = reference.chunk_boundaries(k, None, "similarity", 128, 8, 128, 4, 2, 0.0, 64)
    idx, cnt = reference.select_keys(q, k, bd, 128, 2048, 128, 128, 4096, 64)
    out = torch.full_like(q, float("nan"))
    kernels.sparse_attention(q, k, v, idx, cnt, 128, 256 ** -0.5, 50.0, 4096, 64, out=out)
    ref = reference.sparse_attention(q, k, v, idx, cnt, 128, 256 ** -0.5, 50.0, 4096, 64)
    assert (out.float() - ref.float()).abs().max().item() <= 2 * TOL["bf16"]


def test_torch_ops_dispatch_to_cuda_kernels(seed):
    """After enable_cuda_kernels(), torch.ops.dhsa.* on CUDA tensors run the native kernels."""
    from dhsa_export.native import enable_cuda_kernels
    from dhsa_export.ops import library as ops

    enable_cuda_kernels()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(2, 4, 500, 128, generator=gen, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 2, 500, 128, generator=gen, device="cuda", dtype=torch.float16)
    bd = ops.chunk_boundaries(k, None, "fixed", 64, 8, 64, 4, 2, 0.0, 16)
    idx, cnt = ops.select_keys(q, k, bd, 64, 256, 64, 64, 0, 16)
    out = ops.sparse_attention(q, k, k, idx, cnt, 64, 0.1, 0.0, 0, 16)
    ref = reference.sparse_attention(q, k, k, *reference.select_keys(q, k, bd, 64, 256, 64, 64, 0, 16), 64, 0.1, 0.0,
                                     0, 16)
    assert (out.float() - ref.float()).abs().max().item() <= TOL["fp16"]
    fused = ops.select_attention(q, k, k, bd, 64, 256, 64, 64, 0.1, 0.0, 0, 16)
    assert torch.equal(fused, out)
