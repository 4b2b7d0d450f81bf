"""libdhsa_trt.so (IPluginV3 plugins of the dhsa ops) driven as TensorRT drives them, without
TensorRT: creators from getCreators, plugins from the fields TensorRT's ONNX parser makes, the build
queries (types, shapes, formats, aliasing, workspace), serialization and, on a GPU, enqueue against
the PyTorch reference through the CUDA op checks of test_cuda_ops.py."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dhsa_export.errors import DHSAError
from dhsa_export.ops.reference import OpInputError
from dhsa_export.ops.spec import (ALL_OPS, CHUNK_BOUNDARIES, DECODE_ATTENTION, SELECT_ATTENTION, SELECT_KEYS,
                                  SPARSE_ATTENTION)

from . import test_cuda_ops as cuda_checks


@pytest.fixture(scope="module")
def trt():
    import os

    from .trt_plugins import TrtPlugins

    try:
        return TrtPlugins()
    except DHSAError as err:
        if not os.environ.get("TensorRT_INCLUDE_DIR"):  # built only against TensorRT's headers
            pytest.skip(f"TensorRT plugin library not built (no TensorRT_INCLUDE_DIR): {err}")
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def capi():
    from dhsa_export.native import cuda_kernels

    return cuda_kernels()


ATTRS = {  # valid attribute values per op, in spec order
    CHUNK_BOUNDARIES: ("similarity", 64, 8, 64, 4, 2, 0.0, 16),
    SELECT_KEYS: (64, 256, 64, 64, 0, 16),
    SPARSE_ATTENTION: (64, 0.125, 50.0, 0, 16),
    SELECT_ATTENTION: (64, 256, 64, 64, 0.125, 0.0, 0, 16),
    DECODE_ATTENTION: (2048, 128, 128, 0.0625, 50.0, 0),
}
_TYPE = {int: 10, float: 1, str: 6}  # PluginFieldType kINT64, kFLOAT32, kCHAR


def test_creators_advertise_the_op_table(trt):
    lines = trt.creators()
    assert len(lines) == len(ALL_OPS)
    for spec, line in zip(ALL_OPS, lines):
        fields = " ".join(f"{a.name}:{_TYPE[a.type]}" for a in spec.attrs)
        assert line == f"{spec.onnx_name} dhsa {spec.version} PLUGIN CREATOR_V3ONE {fields}"


@pytest.mark.parametrize("spec", ALL_OPS, ids=lambda s: s.onnx_name)
def test_plugin_identity_and_aliasing(trt, spec):
    p = trt.create(spec, ATTRS[spec])
    aliases = " ".join("0" if t.may_take == "query" else "-1" for t in spec.outputs)
    assert trt.describe(p) == f"{spec.onnx_name} dhsa {spec.version} {len(spec.outputs)} {aliases}"
    q = trt.clone(p)
    assert trt.describe(q) == trt.describe(p)
    r = trt.recreate(p)  # getFieldsToSerialize -> createPlugin in the runtime phase
    assert trt.describe(r) == trt.describe(p)
    for h in (p, q, r):
        trt.release(h)


@pytest.mark.parametrize("spec,index,value,message", [
    (SELECT_KEYS, 1, 0, "DhsaSelectKeys: attribute budget must be >= 1, got 0"),
    (SELECT_KEYS, 1, 100, "DhsaSelectKeys: budget (100) must be >= local_tokens + global_tokens (64 + 64)"),
    (SPARSE_ATTENTION, 2, -1.0, "DhsaSparseAttention: attribute softcap must be >= 0, got -1"),
    (CHUNK_BOUNDARIES, 0, "magic", "DhsaChunkBoundaries: attribute method must be 'similarity', 'scores' or 'fixed', "
                                   "got 'magic'"),
    (SELECT_ATTENTION, 0, 0, "DhsaSelectAttention: attribute block_size must be >= 1, got 0"),
    (DECODE_ATTENTION, 1, 4000, "DhsaDecodeAttention: budget (2048) must be >= local_tokens + global_tokens "
                                "(4000 + 128)"),
])
def test_bad_fields_are_refused_with_the_core_message(trt, capi, spec, index, value, message):
    attrs = list(ATTRS[spec])
    attrs[index] = value
    with pytest.raises(OpInputError) as err:
        trt.create(spec, attrs)
    assert str(err.value) == message
    with pytest.raises(OpInputError) as capi_err:  # the same words as the other bindings
        capi.check(spec, [torch.zeros(1, 1, 8, 8)] * len(spec.inputs), attrs)
    assert str(capi_err.value) == message


def test_missing_field_is_named(trt):
    names = [a.name for a in SELECT_KEYS.attrs if a.name != "budget"]
    values = [v for a, v in zip(SELECT_KEYS.attrs, ATTRS[SELECT_KEYS]) if a.name != "budget"]
    with pytest.raises(OpInputError, match="^DhsaSelectKeys: missing int attribute 'budget'$"):
        trt.create(SELECT_KEYS, values, names=names)


def _inputs(spec, b, hq, hkv, seq, dim, dtype, n1=None):
    """CPU tensors of the op's input shapes (only their descriptions are read)."""
    q, k = torch.zeros(b, hq, seq, dim, dtype=dtype), torch.zeros(b, hkv, seq, dim, dtype=dtype)
    nqb = -(-seq // 64)
    bd = torch.zeros(b, n1 or 8 * nqb + 1, dtype=torch.int32)
    idx, cnt = torch.zeros(b, nqb, 256, dtype=torch.int32), torch.zeros(b, nqb, dtype=torch.int32)
    step, sums = torch.zeros(b, hq, 1, dim, dtype=dtype), torch.zeros(b, bd.shape[1] - 1, dim)
    return {CHUNK_BOUNDARIES: [k], SELECT_KEYS: [q, k, bd], SPARSE_ATTENTION: [q, k, k, idx, cnt],
            SELECT_ATTENTION: [q, k, k, bd], DECODE_ATTENTION: [step, k, k, bd, sums]}[spec]


@pytest.mark.parametrize("spec", ALL_OPS, ids=lambda s: s.onnx_name)
def test_output_types_and_shapes_follow_the_core(trt, capi, spec, seed):
    """getOutputDataTypes / getOutputShapes (IExprBuilder expressions, folded here) against the shapes
    the C API's checks give, on random shapes: odd L, L < block, L = 1, batch > 1, GQA."""
    rng = random.Random(seed)
    p = trt.create(spec, ATTRS[spec])
    for _ in range(20):
        hkv = rng.choice([1, 2, 4])
        shape = (rng.randint(1, 3), hkv * rng.choice([1, 2, 4]), hkv, rng.choice([1, 7, 63, 64, 65, 300, 1031]),
                 rng.choice([64, 128]))
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            inputs = _inputs(spec, *shape, dtype)
            want, _ = capi.check(spec, inputs + [None] * (len(spec.inputs) - len(inputs)), ATTRS[spec])
            assert trt.outputs(p, inputs, len(spec.outputs)) == want, (shape, dtype)
    trt.release(p)


@pytest.mark.parametrize("spec", ALL_OPS, ids=lambda s: s.onnx_name)
def test_format_combinations(trt, spec):
    p = trt.create(spec, ATTRS[spec])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        inputs = _inputs(spec, 1, 2, 1, 100, 64, dtype)
        outs = [torch.zeros(1, dtype=getattr(torch, dt)) for dt, _ in trt.outputs(p, inputs, len(spec.outputs))]
        io = inputs + outs
        for pos in range(len(io)):
            assert trt.supports(p, pos, inputs, outs), (pos, dtype)
            wrong = list(io)
            wrong[pos] = torch.zeros(1, dtype=torch.int64 if io[pos].dtype != torch.int64 else torch.float32)
            assert not trt.supports(p, pos, wrong[: len(inputs)], wrong[len(inputs):]), (pos, dtype)
        if len(io) > 1 and io[1].dtype.is_floating_point:  # one activation type per node
            other = torch.float16 if dtype != torch.float16 else torch.float32
            mixed = [io[0], io[1].to(other), *io[2:]]
            assert not trt.supports(p, 1, mixed[: len(inputs)], mixed[len(inputs):])
    trt.release(p)


# ---- on a GPU: enqueue against the reference ---------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
N_CASES = 30


@gpu
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case_id", range(N_CASES))
@pytest.mark.parametrize("check", ["sparse_attention", "select_keys", "chunk_boundaries", "select_attention"])
def test_enqueue_matches_the_reference(trt, check, case_id, dtype, seed):
    getattr(cuda_checks, f"_check_{check}")(trt, dtype, seed)


@gpu
@pytest.mark.cuda
@pytest.mark.parametrize("case_id", range(10))
@pytest.mark.parametrize("check", ["sparse_attention", "select_attention"])
def test_enqueue_writes_over_the_query(trt, check, case_id, seed):
    """The attention outputs alias the query (getAliasedInput): written over Q, still right."""
    getattr(cuda_checks, f"_check_{check}")(trt, "bf16", seed, in_place=True)


@gpu
@pytest.mark.cuda
@pytest.mark.parametrize("case_id", range(10))
def test_serialized_plugins_give_bit_identical_outputs(trt, case_id, seed):
    """A plugin re-created from getFieldsToSerialize (an engine load) computes exactly what the built one did."""
    from .trt_plugins import TrtPlugins

    c, rng, gen = cuda_checks._case(seed)
    q, k, v = cuda_checks._qkv(c, gen, torch.bfloat16)
    attrs = ("similarity", c.block_size, c.chunk_beta, c.block_size, 4, 2, 0.0, c.instruction_tokens)
    fused = (c.block_size, c.budget, c.local_tokens, c.global_tokens, c.scale, c.softcap, c.sliding_window,
             c.instruction_tokens)
    runtime = TrtPlugins()
    runtime.runtime_phase = True
    outs = []
    for plugins in (trt, runtime):
        bd = plugins.chunk_boundaries(k, None, *attrs)
        outs.append((bd, plugins.select_attention(q, k, v, bd, *fused)))
    torch.cuda.synchronize()
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert np.isfinite(outs[0][1].float().cpu().numpy()).all()
