"""DhsaDecodeAttention in every runtime against the PyTorch reference (reference.decode_attention) on
fresh random cases: the ONNX Runtime CPU op, the portable flavour's standard ops, and, where a GPU is,
the CUDA kernels (also at 32K-128K caches and inside a CUDA graph). Outputs are poisoned first."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dhsa_export.ops import reference
from dhsa_export.ops.spec import DECODE_ATTENTION

from . import ort_ops
from .cases import DecodeCase, decode_tensors, random_decode_case
from .compare import decode_selection_is_clear

N_CASES = 100
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _clear(c: DecodeCase, q, full, sums) -> bool:
    return decode_selection_is_clear(q.float().cpu(), sums.cpu(), full.cpu(), c.cache_len, c.budget, c.local_tokens,
                                     c.global_tokens, c.sliding_window)


def _check(got: torch.Tensor, want: torch.Tensor, dtype, c) -> None:
    assert not got.isnan().any(), ("unwritten (poisoned) output", c)
    err = (got.double() - want.double()).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, want.abs().max().item()), (err, c)


def ort_decode(q, k, v, full, sums, attrs, provider="CPUExecutionProvider"):
    feeds = {"query": q, "key": k, "value": v, "boundaries": full, "chunk_sums": sums}
    return ort_ops.run(DECODE_ATTENTION, feeds, {"output": (q.dtype, q.shape)}, attrs, provider)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ort_cpu_op_matches_the_reference(dtype, seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    clear = 0
    for _ in range(N_CASES):
        c = random_decode_case(rng, dims=(8, 32, 64, 96))
        q, k, v, _, full, sums = decode_tensors(c, gen, dtype)
        if not _clear(c, q, full, sums):
            continue
        clear += 1
        want = reference.decode_attention(q, k, v, full, sums, **c.attrs)
        got = ort_decode(q.numpy(), k.numpy(), v.numpy(), full.numpy(), sums.numpy(), c.attrs)
        _check(torch.from_numpy(got), want, dtype, c)
    assert clear >= 0.9 * N_CASES, clear


def test_ort_cpu_op_output_takes_the_query_buffer(seed, tmp_path):
    """In an exported layer the query is an intermediate: ORT gives the op's output its buffer (the spec's
    may_take), and the result must not change."""
    import onnx
    from onnx import helper

    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    c = random_decode_case(rng, dims=(64,))
    q, k, v, _, full, sums = decode_tensors(c, gen)
    f, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    nodes = [helper.make_node("Mul", ["q_in", "one"], ["q"]),
             helper.make_node("DhsaDecodeAttention", ["q", "k", "v", "bd", "sums"], ["o"], domain="dhsa", **c.attrs),
             helper.make_node("Mul", ["o", "one"], ["out"])]  # a graph output would get its own buffer
    info = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "step", [info("q_in", f, ["B", "Hq", 1, "D"]), info("one", f, [1]),
                                          info("k", f, ["B", "Hkv", "K", "D"]), info("v", f, ["B", "Hkv", "K", "D"]),
                                          info("bd", i32, ["B", "M1"]), info("sums", f, ["B", "M", "D"])],
                          [info("out", f, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                                ir_version=9), tmp_path / "step.onnx")
    feeds = dict(q_in=q.numpy(), one=np.ones(1, np.float32), k=k.numpy(), v=v.numpy(), bd=full.numpy(),
                 sums=sums.numpy())
    (got,), log = ort_ops.run_logged(tmp_path / "step.onnx", feeds, tmp_path)
    assert log.count("DhsaDecodeAttention: output written in place of Q") == 1
    _check(torch.from_numpy(got), reference.decode_attention(q, k, v, full, sums, **c.attrs), torch.float32, c)


@pytest.mark.parametrize("change,message", [
    (dict(boundaries=np.array([[0, 4, 9]], np.int32)), "must start at 0 and end at L = 10"),
    (dict(boundaries=np.array([[0, 7, 4, 10]], np.int32), chunk_sums=np.zeros((1, 3, 8), np.float32)),
     "non-decreasing"),
    (dict(chunk_sums=np.zeros((1, 3, 8), np.float32)), "chunk_sums"),
    (dict(query=np.zeros((1, 2, 2, 8), np.float32)), "one position"),
])
def test_ort_cpu_op_rejects_bad_inputs(change, message):
    feeds = dict(query=np.zeros((1, 2, 1, 8), np.float32), key=np.zeros((1, 1, 10, 8), np.float32),
                 value=np.zeros((1, 1, 10, 8), np.float32), boundaries=np.array([[0, 4, 10]], np.int32),
                 chunk_sums=np.zeros((1, 2, 8), np.float32)) | change
    attrs = dict(budget=4, local_tokens=1, global_tokens=1, scale=0.3, softcap=0.0, sliding_window=0)
    with pytest.raises(Exception, match=f"DhsaDecodeAttention: .*{message}"):
        ort_decode(*feeds.values(), attrs)


@pytest.mark.parametrize("case_id", range(4))
def test_portable_decomposition_matches_the_reference(case_id, seed):
    """The portable flavour's standard-op graph of the op (what `--ops portable` writes) on stock ORT."""
    import onnx_ir as ir

    from dhsa_export.onnx import lowering

    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(25):
        c = random_decode_case(rng, dims=(8, 32, 64))
        q, k, v, _, full, sums = decode_tensors(c, gen)
        if not _clear(c, q, full, sums):
            continue
        feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "boundaries": full.numpy(),
                 "chunk_sums": sums.numpy()}
        model = ir.from_proto(ort_ops.single_node(DECODE_ATTENTION, feeds, {"output": (np.float32, 4)}, c.attrs))
        assert lowering.lower_to_portable(model) == 1
        import onnxruntime as ort

        sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
        _check(torch.from_numpy(got), reference.decode_attention(q, k, v, full, sums, **c.attrs), torch.float32, c)


# ---- CUDA ----------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def kernels():
    from dhsa_export.native import cuda_kernels

    return cuda_kernels()


def _cuda_case(rng: random.Random) -> DecodeCase:
    """Kernel-sized cases: head dims of real models (and an odd one), caches up to 5000, budgets to 2048."""
    c = random_decode_case(rng, dims=(64, 96, 128, 256, 8), max_prompt=rng.choice([200, 5000]))
    c.block_size = rng.choice([c.block_size, 64, 128])
    c.budget = rng.choice([c.budget, rng.randint(c.budget, 2048)])
    c.cache_len = c.prompt_len + rng.choice([1, rng.randint(1, 300)])
    return c


def _check_on_gpu(decode, c: DecodeCase, gen: torch.Generator, dtype):
    """One case through decode(q, k, v, boundaries, sums, *attrs, out=) into a poisoned output, checked
    against the reference: (inputs, output), or None for a case whose selection hinges on a near tie."""
    q, k, v, _, full, sums = (t.cuda() for t in decode_tensors(c, gen, dtype))
    if not _clear(c, q, full, sums):
        return None
    out = torch.full_like(q, float("nan"))
    decode(q, k, v, full, sums, *c.attrs.values(), out=out)
    _check(out, reference.decode_attention(q, k, v, full, sums, **c.attrs), dtype, c)
    return (q, k, v, full, sums), out


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_kernels_match_the_reference(kernels, dtype, seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    clear = 0
    for _ in range(N_CASES):
        c = _cuda_case(rng)
        checked = _check_on_gpu(kernels.decode_attention, c, gen, dtype)
        if checked is None:
            continue
        clear += 1
        (q, k, v, full, sums), out = checked
        in_place = q.clone()  # the output may take the query's buffer
        kernels.decode_attention(in_place, k, v, full, sums, *c.attrs.values(), out=in_place)
        assert torch.equal(in_place, out), c
    assert clear >= 0.9 * N_CASES, clear


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_tensorrt_plugin_enqueue_matches_the_reference(dtype, seed):
    """The TensorRT plugin of the op, driven as TensorRT drives it (tests/trt_plugins.py), on 100 cases."""
    import os

    from dhsa_export.errors import DHSAError

    from .trt_plugins import TrtPlugins

    try:
        trt = TrtPlugins()
    except DHSAError as err:
        if not os.environ.get("TensorRT_INCLUDE_DIR"):
            pytest.skip(f"TensorRT plugin library not built: {err}")
        raise
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(N_CASES):
        _check_on_gpu(trt.decode_attention, _cuda_case(rng), gen, dtype)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_order_tied_chunks_as_the_rule(kernels, dtype, seed):
    """Chunks of equal length and equal key sums score exactly alike: the budget's cut-off then falls
    inside a group of tied chunks, which the rule takes from the latest position down."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(20):
        b, hkv, d, chunk = rng.choice([1, 3]), rng.choice([1, 4]), rng.choice([64, 256]), rng.choice([4, 16])
        cache_len = chunk * rng.randint(40, 300) + rng.randint(1, chunk)
        q = torch.randn(b, 2 * hkv, 1, d, generator=gen).to(dtype)
        k, v = (torch.randn(b, hkv, cache_len, d, generator=gen).to(dtype) for _ in range(2))
        bd = torch.tensor([[*range(0, cache_len, chunk), cache_len]] * b, dtype=torch.int32)
        m = bd.shape[1] - 1
        distinct = torch.randn(b, rng.randint(2, 5), d, generator=gen)
        sums = distinct[:, torch.randint(0, distinct.shape[1], (m,), generator=gen)].contiguous()
        budget = rng.randint(64, 1024)
        attrs = dict(budget=budget, local_tokens=rng.randint(0, 32), global_tokens=rng.randint(0, 32), scale=d ** -0.5,
                     softcap=0.0, sliding_window=0)
        q, k, v, bd, sums = (t.cuda() for t in (q, k, v, bd, sums))
        want = reference.decode_attention(q, k, v, bd, sums, **attrs)
        out = torch.full_like(q, float("nan"))
        kernels.decode_attention(q, k, v, bd, sums, *attrs.values(), out=out)
        _check(out, want, dtype, (b, hkv, d, chunk, cache_len, attrs))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("path", ["cluster", "one CTA, chunks in shared memory", "one CTA, few chunks",
                                  "one CTA, chunks in global memory"])
def test_cuda_selection_paths_match_the_reference(kernels, path, seed):
    """Each way the kernels may select, forced: a cluster of CTAs per sample (Hopper; 4096 chunks and
    more), one CTA with its chunks staged in shared memory (a few hundred of them, or thousands), one
    CTA reading them from global memory (too many for shared memory)."""
    if path == "cluster" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread block clusters need compute capability 9.0")
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    kernels.use_hopper_kernels(path == "cluster")
    kernels.set_shared_memory_limit(20 * 1024 if path.endswith("global memory") else 0)
    checked = 0
    try:
        for _ in range(12):
            c = _cuda_case(rng)
            if path == "cluster":  # chunks of 4 tokens: 4250-5500 of them, where the cluster selects
                c.prompt_len, c.block_size, c.chunk_beta = rng.randint(17000, 22000), 16, 4
            elif path == "one CTA, few chunks":  # chunks of 16 tokens: 37-250 of them
                c.prompt_len, c.block_size, c.chunk_beta = rng.randint(600, 4000), 128, 8
            else:  # chunks of 2-8 tokens: 625-6000 of them
                c.prompt_len, c.block_size = rng.randint(5000, 12000), rng.choice([16, 32])
                c.chunk_beta = rng.choice([4, 8])
            c.cache_len = c.prompt_len + rng.randint(1, 40)
            c.budget = rng.randint(min(300, c.prompt_len // 2), min(2048, c.prompt_len // 2))  # fewer than eligible
            c.local_tokens, c.global_tokens = rng.randint(0, 128), rng.randint(0, 128)
            dtype = rng.choice([torch.float32, torch.bfloat16])
            checked += _check_on_gpu(kernels.decode_attention, c, gen, dtype) is not None
    finally:
        kernels.use_hopper_kernels(True)
        kernels.set_shared_memory_limit(0)
    assert checked >= 6, checked


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("cache_len,batch,hq,hkv,dim,chunk", [(32768, 1, 8, 4, 256, 16), (131072, 1, 8, 4, 256, 16),
                                                               (131075, 2, 32, 8, 128, 4), (40000, 8, 4, 1, 256, 16)])
def test_cuda_kernels_long_caches_bf16(kernels, cache_len, batch, hq, hkv, dim, chunk, seed):
    """Real sizes; with 4-token chunks at 128K the selection has more chunks than shared memory holds."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    c = DecodeCase(batch=batch, hq=hq, hkv=hkv, dim=dim, block_size=128, chunk_beta=8, prompt_len=cache_len - 37,
                   cache_len=cache_len, budget=2048, local_tokens=128, global_tokens=128, sliding_window=0,
                   softcap=50.0 if dim == 256 else 0.0)
    t = torch.bfloat16
    q = torch.randn(batch, hq, 1, dim, generator=gen, device="cuda").to(t)
    k = torch.randn(batch, hkv, cache_len, dim, generator=gen, device="cuda").to(t)
    v = torch.randn(batch, hkv, cache_len, dim, generator=gen, device="cuda").to(t)
    prompt_bd = reference.chunk_boundaries(k[:, :, :c.prompt_len], None, "fixed", 128, 128 // chunk, chunk, 2, 1, 0.0,
                                           0)
    full = reference.decode_boundaries(prompt_bd, c.prompt_len, cache_len, reference.decode_chunk_size(128, 8))
    sums = reference.decode_chunk_sums(k, full)
    want = reference.decode_attention(q, k, v, full, sums, **c.attrs)
    out = torch.full_like(q, float("nan"))
    kernels.decode_attention(q, k, v, full, sums, *c.attrs.values(), out=out)
    if _clear(c, q, full, sums):
        _check(out, want, t, c)
    else:  # a near tie at the cut-off: the same count of keys, an output of the same scale
        assert not out.isnan().any() and (out.float() - want.float()).abs().max() < 0.5


@cuda
@pytest.mark.cuda
def test_cuda_kernels_replay_as_a_cuda_graph(kernels, seed):
    """Captured once, replayed on fresh queries and caches: bit for bit the eager result."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    b, hq, hkv, seq, d = 2, 8, 4, 9001, 256
    bd = reference.decode_boundaries(torch.tensor([[0, *range(16, 8960, 16), 8960]] * b, dtype=torch.int32,
                                                  device="cuda"), 8960, seq, 16)
    attrs = (2048, 128, 128, d ** -0.5, 50.0, 0)

    def inputs():
        q, k, v = (torch.randn(b, h, n, d, generator=gen, device="cuda").to(torch.bfloat16)
                   for h, n in ((hq, 1), (hkv, seq), (hkv, seq)))
        return [q, k, v, reference.decode_chunk_sums(k, bd)]

    static = inputs()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kernels.decode_attention(static[0], static[1], static[2], bd, static[3], *attrs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = kernels.decode_attention(static[0], static[1], static[2], bd, static[3], *attrs)
    for _ in range(2):
        for dst, src in zip(static, inputs()):
            dst.copy_(src)
        captured.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, kernels.decode_attention(static[0], static[1], static[2], bd, static[3], *attrs))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ort_cuda_ep_matches_the_reference(dtype, seed):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider")
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    tdt = torch.float16 if dtype == np.float16 else torch.float32
    for _ in range(N_CASES):
        c = _cuda_case(rng)
        q, k, v, _, full, sums = decode_tensors(c, gen, tdt)
        if not _clear(c, q, full, sums):
            continue
        got = ort_decode(q.numpy(), k.numpy(), v.numpy(), full.numpy(), sums.numpy(), c.attrs, "CUDAExecutionProvider")
        _check(torch.from_numpy(got), reference.decode_attention(q, k, v, full, sums, **c.attrs), tdt, c)
