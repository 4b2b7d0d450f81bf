"""The ONNX Runtime custom ops (CPU) against the PyTorch reference, op by op, on random cases, plus
every invalid-input rule. Outputs are poisoned before each run."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from dhsa_export.ops import reference

from . import ort_ops
from .cases import Case, random_boundaries, random_case, tensors
from .compare import assert_same_boundaries, assert_same_selection

N_CASES = 100
DIMS = (64, 128, 256)
GQA = (1, 2, 4, 8)


def _case(seed: int) -> tuple[Case, torch.Generator, random.Random]:
    rng = random.Random(seed)
    return random_case(rng, dims=DIMS, gqa=GQA), torch.Generator().manual_seed(seed), rng


def _attrs_select(c: Case) -> dict:
    return dict(block_size=c.block_size, budget=c.budget, local_tokens=c.local_tokens,
                global_tokens=c.global_tokens, sliding_window=c.sliding_window,
                instruction_tokens=c.instruction_tokens)


def _attrs_attention(c: Case) -> dict:
    return dict(block_size=c.block_size, scale=c.scale, softcap=c.softcap, sliding_window=c.sliding_window,
                instruction_tokens=c.instruction_tokens)


@pytest.mark.parametrize("case_id", range(N_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_select_keys(case_id, dtype, seed):
    c, gen, rng = _case(seed)
    q, k, _ = tensors(c, gen)
    tdt = torch.float16 if dtype == np.float16 else torch.float32
    q, k = q.to(tdt), k.to(tdt)
    n = reference.num_chunks(c.seq, c.block_size, c.chunk_beta)
    bd = random_boundaries(rng, c.batch, c.seq, n).numpy()
    ref_idx, ref_cnt = reference.select_keys(q, k, torch.from_numpy(bd), **_attrs_select(c))
    nqb = ref_idx.shape[1]
    idx, cnt = ort_ops.select_keys(q.numpy(), k.numpy(), bd, _attrs_select(c), nqb)
    scores = reference.selection_scores(q, k, torch.from_numpy(bd), c.block_size, c.instruction_tokens).numpy()
    assert_same_selection(idx, cnt, ref_idx.numpy(), ref_cnt.numpy(), scores, bd)


@pytest.mark.parametrize("case_id", range(N_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_sparse_attention(case_id, dtype, seed):
    c, gen, rng = _case(seed)
    tdt = torch.float16 if dtype == np.float16 else torch.float32
    q, k, v = (t.to(tdt) for t in tensors(c, gen))
    n = reference.num_chunks(c.seq, c.block_size, c.chunk_beta)
    bd = random_boundaries(rng, c.batch, c.seq, n)
    idx, cnt = reference.select_keys(q, k, bd, **_attrs_select(c))
    ref = reference.sparse_attention(q, k, v, idx, cnt, **_attrs_attention(c))
    got = ort_ops.sparse_attention(q.numpy(), k.numpy(), v.numpy(), idx.numpy(), cnt.numpy(), _attrs_attention(c))
    assert not np.isnan(got).any(), "unwritten (poisoned) output elements"
    tol = 1e-5 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(got.astype(np.float64), ref.double().numpy(), rtol=0, atol=tol)


@pytest.mark.parametrize("case_id", range(30))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_select_attention(case_id, dtype, seed):
    """The fused op equals the two ops it chains, run by ORT, bit for bit; and the reference attention
    on that selection."""
    c, gen, rng = _case(seed)
    tdt = torch.float16 if dtype == np.float16 else torch.float32
    q, k, v = (t.to(tdt) for t in tensors(c, gen))
    bd = random_boundaries(rng, c.batch, c.seq, reference.num_chunks(c.seq, c.block_size, c.chunk_beta)).numpy()
    attrs = _attrs_select(c) | _attrs_attention(c)
    got = ort_ops.select_attention(q.numpy(), k.numpy(), v.numpy(), bd, attrs)
    assert not np.isnan(got).any(), "unwritten (poisoned) output elements"
    nqb = reference.num_query_blocks(c.seq, c.block_size)
    idx, cnt = ort_ops.select_keys(q.numpy(), k.numpy(), bd, _attrs_select(c), nqb)
    apart = ort_ops.sparse_attention(q.numpy(), k.numpy(), v.numpy(), idx, cnt, _attrs_attention(c))
    np.testing.assert_array_equal(got, apart)
    ref = reference.sparse_attention(q, k, v, torch.from_numpy(idx), torch.from_numpy(cnt), **_attrs_attention(c))
    np.testing.assert_allclose(got.astype(np.float64), ref.double().numpy(), rtol=0,
                               atol=1e-5 if dtype == np.float32 else 2e-3)


@pytest.mark.parametrize("case_id", range(N_CASES))
def test_chunk_boundaries(case_id, seed):
    c, gen, rng = _case(seed)
    _, k, _ = tensors(c, gen)
    n = reference.num_chunks(c.seq, c.block_size, c.chunk_beta)
    window, radius = rng.choice([1, 2, 4]), rng.choice([0, 2, 8])
    base = dict(block_size=c.block_size, chunk_beta=c.chunk_beta, chunk_size=c.block_size, window=window,
                nms_radius=radius, instruction_tokens=c.instruction_tokens)
    # Given scores: selection logic must agree exactly.
    scores = torch.randn(c.batch, c.seq, generator=gen)
    ref = reference.chunk_boundaries(k, scores, "scores", c.block_size, c.chunk_beta, c.block_size, window, radius,
                                     0.25, c.instruction_tokens)
    got = ort_ops.boundaries(k.numpy(), scores.numpy(), base | dict(method="scores", threshold=0.25), (c.batch, n + 1))
    np.testing.assert_array_equal(got, ref.numpy())
    # Fixed chunks.
    ref = reference.chunk_boundaries(k, None, "fixed", c.block_size, c.chunk_beta, c.block_size, window, radius,
                                     0.0, c.instruction_tokens)
    got = ort_ops.boundaries(k.numpy(), None, base | dict(method="fixed", threshold=0.0), (c.batch, n + 1))
    np.testing.assert_array_equal(got, ref.numpy())
    # Similarity: equal unless the computed cut scores hold a near tie.
    ref = reference.chunk_boundaries(k, None, "similarity", c.block_size, c.chunk_beta, c.block_size, window, radius,
                                     0.0, c.instruction_tokens)
    got = ort_ops.boundaries(k.numpy(), None, base | dict(method="similarity", threshold=0.0), (c.batch, n + 1))
    assert_same_boundaries(got, ref.numpy(), reference.similarity_scores(k, window).numpy())


def test_fp16_boundaries_and_select_match_fp32_inputs(seed):
    """fp16 keys are upcast exactly: the op on fp16 equals the reference on the same fp16 values."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 2, 150, 64, generator=gen).half()
    attrs = dict(method="similarity", block_size=32, chunk_beta=4, chunk_size=32, window=4, nms_radius=2,
                 threshold=0.0, instruction_tokens=10)
    got = ort_ops.boundaries(k.numpy(), None, attrs, (2, 4 * 5 + 1))
    ref = reference.chunk_boundaries(k, None, "similarity", 32, 4, 32, 4, 2, 0.0, 10)
    np.testing.assert_array_equal(got, ref.numpy())


# ---- invalid inputs: an ORT error naming op, input and rule; never a crash ----------------------

def _expect_error(model: onnx.ModelProto, feeds: dict, match: str):
    with pytest.raises(Exception) as err:
        ort_ops.session(model).run(None, feeds)
    assert match in str(err.value), str(err.value)


def _select_model(attrs, q_rank=4):
    node = helper.make_node("DhsaSelectKeys", ["query", "key", "boundaries"], ["indices", "counts"], domain="dhsa",
                            **attrs)
    f = onnx.TensorProto.FLOAT
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("query", f, [None] * q_rank),
                                        helper.make_tensor_value_info("key", f, [None] * 4),
                                        helper.make_tensor_value_info("boundaries", onnx.TensorProto.INT32, None)],
                          [helper.make_tensor_value_info("indices", onnx.TensorProto.INT32, None),
                           helper.make_tensor_value_info("counts", onnx.TensorProto.INT32, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                             ir_version=9)


GOOD = dict(block_size=4, budget=16, local_tokens=4, global_tokens=4, sliding_window=0, instruction_tokens=0)
Q, K = np.random.randn(1, 2, 20, 8).astype(np.float32), np.random.randn(1, 1, 20, 8).astype(np.float32)
BD = np.array([[0, 10, 20]], dtype=np.int32)


@pytest.mark.parametrize("attrs,match", [
    (GOOD | dict(budget=0), "DhsaSelectKeys: attribute budget must be >= 1, got 0"),
    (GOOD | dict(block_size=0), "DhsaSelectKeys: attribute block_size must be >= 1"),
    (GOOD | dict(budget=6), "budget (6) must be >= local_tokens + global_tokens (4 + 4)"),
    ({k: v for k, v in GOOD.items() if k != "budget"}, "DhsaSelectKeys: missing int attribute 'budget'"),
])
def test_select_rejects_attributes(attrs, match):
    _expect_error(_select_model(attrs), {"query": Q, "key": K, "boundaries": BD}, match)


@pytest.mark.parametrize("feeds,match", [
    (dict(query=Q[0]), "input 'query' must be rank 4"),
    (dict(key=np.random.randn(1, 3, 20, 8).astype(np.float32)), "Hq (2) must be a multiple of Hkv (3)"),
    (dict(key=np.random.randn(2, 1, 20, 8).astype(np.float32)), "does not match 'query'"),
    (dict(boundaries=np.array([[0, 15, 10, 20]], dtype=np.int32)), "must be non-decreasing"),
    (dict(boundaries=np.array([[0, 10, 19]], dtype=np.int32)), "must start at 0 and end at L = 20"),
    (dict(boundaries=np.array([[0, 10, 20], [0, 5, 20]], dtype=np.int32)), "input 'boundaries' must be int32 (B = 1"),
])
def test_select_rejects_inputs(feeds, match):
    base = {"query": Q, "key": K, "boundaries": BD}
    rank = feeds["query"].ndim if "query" in feeds else 4
    _expect_error(_select_model(GOOD, q_rank=rank), base | feeds, match)


def _attention_model(attrs):
    node = helper.make_node("DhsaSparseAttention", ["q", "k", "v", "i", "c"], ["o"], domain="dhsa", **attrs)
    f, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, f, None) for n in "qkv"]
                          + [helper.make_tensor_value_info(n, i32, None) for n in "ic"],
                          [helper.make_tensor_value_info("o", f, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                             ir_version=9)


ATT = dict(block_size=4, scale=0.5, softcap=0.0, sliding_window=0, instruction_tokens=0)


@pytest.mark.parametrize("idx,cnt,match", [
    (np.full((1, 5, 4), 25, np.int32), np.full((1, 5), 2, np.int32), "within counts must lie in [0, L = 20)"),
    (np.full((1, 5, 4), -1, np.int32), np.full((1, 5), 1, np.int32), "within counts must lie in [0, L = 20)"),
    (np.zeros((1, 5, 4), np.int32), np.full((1, 5), 5, np.int32), "'counts' must lie in [0, Nb = 4]"),
    (np.zeros((1, 4, 4), np.int32), np.zeros((1, 4), np.int32), "input 'indices' must be int32 (B, ceil(L / b), Nb)"),
])
def test_attention_rejects_bad_indices(idx, cnt, match):
    q = np.random.randn(1, 2, 20, 8).astype(np.float32)
    k = np.random.randn(1, 1, 20, 8).astype(np.float32)
    _expect_error(_attention_model(ATT), {"q": q, "k": k, "v": k, "i": idx, "c": cnt}, match)


def _fused_model(attrs):
    node = helper.make_node("DhsaSelectAttention", ["q", "k", "v", "bd"], ["o"], domain="dhsa", **attrs)
    f, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, f, None) for n in "qkv"]
                          + [helper.make_tensor_value_info("bd", i32, None)],
                          [helper.make_tensor_value_info("o", f, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                             ir_version=9)


FUSED = GOOD | dict(scale=0.5, softcap=0.0)


@pytest.mark.parametrize("attrs,feeds,match", [
    (FUSED | dict(budget=0), {}, "DhsaSelectAttention: attribute budget must be >= 1, got 0"),
    ({k: v for k, v in FUSED.items() if k != "scale"}, {}, "DhsaSelectAttention: missing float attribute 'scale'"),
    (FUSED | dict(softcap=-1.0), {}, "DhsaSelectAttention: attribute softcap must be >= 0"),
    (FUSED, dict(v=np.zeros((1, 1, 19, 8), np.float32)), "DhsaSelectAttention: inputs 'key' (1, 1, 20, 8) and 'value'"),
    (FUSED, dict(k=np.zeros((1, 3, 20, 8), np.float32)), "DhsaSelectAttention: Hq (2) must be a multiple of Hkv (3)"),
])
def test_select_attention_rejects(attrs, feeds, match):
    _expect_error(_fused_model(attrs), {"q": Q, "k": K, "v": K, "bd": BD} | feeds, match)


def test_attention_rejects_negative_softcap():
    q = np.random.randn(1, 1, 4, 8).astype(np.float32)
    _expect_error(_attention_model(ATT | dict(softcap=-1.0)),
                  {"q": q, "k": q, "v": q, "i": np.zeros((1, 1, 4), np.int32), "c": np.ones((1, 1), np.int32)},
                  "attribute softcap must be >= 0")


def test_boundaries_reject_bad_method_and_missing_scores():
    def model(attrs):
        node = helper.make_node("DhsaChunkBoundaries", ["key"], ["bd"], domain="dhsa", **attrs)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("key", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("bd", onnx.TensorProto.INT32, None)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                                 ir_version=9)

    attrs = dict(block_size=4, chunk_beta=2, chunk_size=4, window=2, nms_radius=1, threshold=0.0,
                 instruction_tokens=0)
    key = np.random.randn(1, 1, 12, 8).astype(np.float32)
    _expect_error(model(attrs | dict(method="magic")), {"key": key}, "method must be 'similarity', 'scores' or 'fixed'")
    _expect_error(model(attrs | dict(method="scores")), {"key": key}, "method 'scores' needs the optional input")
    _expect_error(model(attrs | dict(method="fixed", chunk_size=1, chunk_beta=2)), {"key": key},
                  "chunk_size * chunk_beta must be >= block_size")


# In an exported layer Q is an intermediate (projection, RoPE) read by the selection and then the
# attention: ORT should give the attention's output Q's buffer (MayInplace), and the result must not change.
@pytest.mark.parametrize("case_id", range(3))
@pytest.mark.parametrize("fused", [False, True])
def test_attention_output_takes_the_query_buffer(case_id, fused, seed, tmp_path):
    c, gen, rng = _case(seed)
    q, k, v = tensors(c, gen)
    n = reference.num_chunks(c.seq, c.block_size, c.chunk_beta)
    bd = random_boundaries(rng, c.batch, c.seq, n)
    f, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    attend = [helper.make_node("DhsaSelectAttention", ["q", "k", "v", "bd"], ["o"], domain="dhsa",
                               **(_attrs_select(c) | _attrs_attention(c)))] if fused else [
        helper.make_node("DhsaSelectKeys", ["q", "k", "bd"], ["idx", "cnt"], domain="dhsa", **_attrs_select(c)),
        helper.make_node("DhsaSparseAttention", ["q", "k", "v", "idx", "cnt"], ["o"], domain="dhsa",
                         **_attrs_attention(c))]
    nodes = [helper.make_node("Mul", ["q_in", "q_scale"], ["q"]), *attend,
             helper.make_node("Mul", ["o", "q_scale"], ["out"])]  # a graph output would get its own buffer
    act = lambda name, heads: helper.make_tensor_value_info(name, f, ["B", heads, "L", "D"])  # noqa: E731
    g = helper.make_graph(nodes, "layer", [act("q_in", "Hq"), helper.make_tensor_value_info("q_scale", f, [1]),
                                           act("k", "Hkv"), act("v", "Hkv"),
                                           helper.make_tensor_value_info("bd", i32, ["B", "N"])],
                          [helper.make_tensor_value_info("out", f, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                              ir_version=9)
    onnx.save(model, tmp_path / "layer.onnx")
    feeds = dict(q_in=q.numpy(), q_scale=np.ones(1, np.float32), k=k.numpy(), v=v.numpy(), bd=bd.numpy())
    (got,), log = ort_ops.run_logged(tmp_path / "layer.onnx", feeds, tmp_path)
    assert log.count(ort_ops.FUSED_IN_PLACE_LOG if fused else ort_ops.IN_PLACE_LOG) == 1
    idx, cnt = reference.select_keys(q, k, bd, **_attrs_select(c))
    ref = reference.sparse_attention(q, k, v, idx, cnt, **_attrs_attention(c))
    np.testing.assert_allclose(got.astype(np.float64), ref.double().numpy(), rtol=0, atol=1e-5)

