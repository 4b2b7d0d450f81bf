"""Decompositions of the dhsa ops into standard ONNX ops (the `--ops portable` flavour).

They implement docs/ops.md exactly, so stock ONNX Runtime runs the model without plugins and
TensorRT can parse it without plugins. The price (README, "Two flavours"): the selection works on
token-level scores, O(L^2 / b) memory per layer, and the chunking runs TopK over all positions.
Where the reference breaks ties by index, these rely on ONNX TopK's documented tie order (lower
index first), reversing the axis where the reference prefers the higher index.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxscript import opset18 as op

INF = float("inf")


# -- constants ---------------------------------------------------------------------------------

def _i64(*values: int):
    """1-D int64 constant."""
    return op.Constant(value=onnx.numpy_helper.from_array(np.array(values, dtype=np.int64)))


def _s64(value: int):
    """Scalar int64 constant."""
    return op.Constant(value=onnx.numpy_helper.from_array(np.array(value, dtype=np.int64)))


def _f32(value: float):
    return op.Constant(value=onnx.numpy_helper.from_array(np.array(value, dtype=np.float32)))


def _dim(x, axis: int):
    """Scalar int64: x.shape[axis]."""
    return op.Squeeze(op.Shape(x, start=axis, end=axis + 1), _i64(0))


def _vec(*scalars):
    """1-D int64 tensor from scalar int64 tensors (for Reshape / Expand shapes)."""
    return op.Concat(*[op.Unsqueeze(s, _i64(0)) for s in scalars], axis=0)


def _ceil_div(a, b: int):
    return op.Div(op.Add(a, _s64(b - 1)), _s64(b))


def _range(start, end):
    return op.Range(start, end, _s64(1))


def _slice(x, start, end, axis: int):
    return op.Slice(x, op.Unsqueeze(start, _i64(0)), op.Unsqueeze(end, _i64(0)), _i64(axis))


def _topk(x, k, largest: bool):
    """TopK over the last axis with a scalar int64 k."""
    return op.TopK(x, op.Unsqueeze(k, _i64(0)), axis=-1, largest=1 if largest else 0, sorted=1)


def _sort_ascending(x, k):
    values, _ = _topk(x, k, largest=False)
    return values


def _tail_start(seq, instruction_tokens: int):
    return op.Sub(seq, op.Min(_s64(instruction_tokens), seq))


# -- DhsaChunkBoundaries ----------------------------------------------------------------------

def _similarity_scores(key, seq, window: int):
    """(B, L) 1 - cos(sum of w keys left of the cut, sum of w keys right of it)."""
    batch = _dim(key, 0)
    x = op.Transpose(op.Cast(key, to=onnx.TensorProto.FLOAT), perm=[0, 2, 1, 3])
    x = op.Reshape(x, _vec(batch, seq, _s64(-1)))  # (B, L, Hkv * D)
    xp = op.Pad(x, _i64(0, window - 1, 0, 0, window, 0))  # zeros: windows near the ends exist but are masked
    span = op.Add(seq, _s64(window))
    sums = _slice(xp, _s64(0), span, 1)
    for i in range(1, window):
        sums = op.Add(sums, _slice(xp, _s64(i), op.Add(span, _s64(i)), 1))
    left = _slice(sums, _s64(0), seq, 1)
    right = _slice(sums, _s64(window), op.Add(seq, _s64(window)), 1)
    dot = op.ReduceSum(op.Mul(left, right), _i64(-1), keepdims=0)
    norm = op.Mul(op.Sqrt(op.ReduceSum(op.Mul(left, left), _i64(-1), keepdims=0)),
                  op.Sqrt(op.ReduceSum(op.Mul(right, right), _i64(-1), keepdims=0)))
    return op.Sub(_f32(1.0), op.Div(dot, op.Max(norm, _f32(1e-12))))


def chunk_boundaries(key, scores, method, block_size, chunk_beta, chunk_size, window, nms_radius, threshold,
                     instruction_tokens):
    batch, seq = _dim(key, 0), _dim(key, 2)
    n_chunks = op.Mul(_s64(chunk_beta), _ceil_div(seq, block_size))
    width = op.Add(n_chunks, _s64(1))
    if method == "fixed":
        cuts = op.Min(op.Mul(_range(_s64(0), width), _s64(chunk_size)), seq)
        return op.Cast(op.Expand(op.Unsqueeze(cuts, _i64(0)), _vec(batch, width)), to=onnx.TensorProto.INT32)

    if method == "scores":
        raw = op.Cast(scores, to=onnx.TensorProto.FLOAT)
    else:
        raw = _similarity_scores(key, seq, window)
    pos = _range(_s64(0), seq)
    valid = op.And(op.GreaterOrEqual(pos, _s64(window - 1)), op.Less(pos, op.Sub(seq, _s64(window))))
    s = op.Where(valid, raw, _f32(-INF))  # (B, L)

    cand = op.And(op.Greater(s, _f32(threshold)), op.And(op.Greater(s, _f32(-INF)), op.Less(s, _f32(INF))))
    r = nms_radius
    if r > 0:
        sp = op.Pad(s, _i64(0, r, 0, r), _f32(-INF))
        left = _slice(sp, _s64(0), seq, 1)
        right = _slice(sp, _s64(r + 1), op.Add(seq, _s64(r + 1)), 1)
        for k in range(1, r):
            left = op.Max(left, _slice(sp, _s64(k), op.Add(seq, _s64(k)), 1))
            right = op.Max(right, _slice(sp, _s64(r + 1 + k), op.Add(seq, _s64(r + 1 + k)), 1))
        cand = op.And(cand, op.And(op.Greater(s, left), op.GreaterOrEqual(s, right)))

    take = op.Sub(n_chunks, _s64(1))
    seq_f = op.Cast(seq, to=onnx.TensorProto.FLOAT)
    forced_b = None
    if instruction_tokens > 0:
        forced = op.Sub(_tail_start(seq, instruction_tokens), _s64(1))  # cut position p = L - T - 1
        forced_ok = op.And(op.Less(_s64(instruction_tokens), seq), op.GreaterOrEqual(n_chunks, _s64(2)))
        cand = op.And(cand, op.Or(op.Not(forced_ok), op.Less(pos, op.Sub(forced, _s64(r)))))
        take = op.Sub(take, op.Cast(forced_ok, to=onnx.TensorProto.INT64))
        forced_b = op.Where(forced_ok, op.Cast(op.Add(forced, _s64(1)), to=onnx.TensorProto.FLOAT), seq_f)

    k = op.Min(op.Sub(n_chunks, _s64(1)), seq)
    values, idx = _topk(op.Where(cand, s, _f32(-INF)), k, largest=True)  # ties: lower position first
    ok = op.And(op.Greater(values, _f32(-INF)), op.Less(_range(_s64(0), k), take))
    cuts = op.Where(ok, op.Cast(op.Add(idx, _s64(1)), to=onnx.TensorProto.FLOAT), seq_f)  # (B, k), L = unused
    if forced_b is not None:
        cuts = op.Concat(cuts, op.Expand(forced_b, _vec(batch, _s64(1))), axis=1)
        k = op.Add(k, _s64(1))
    cuts = _sort_ascending(cuts, k)
    pad = op.Expand(seq_f, _vec(batch, op.Sub(n_chunks, k)))
    zero = op.Expand(_f32(0.0), _vec(batch, _s64(1)))
    return op.Cast(op.Concat(zero, cuts, pad, axis=1), to=onnx.TensorProto.INT32)


# -- DhsaSelectKeys ----------------------------------------------------------------------------

def select_keys(query, key, boundaries, block_size, budget, local_tokens, global_tokens, sliding_window,
                instruction_tokens):
    f32 = onnx.TensorProto.FLOAT
    batch, seq, dim = _dim(query, 0), _dim(query, 2), _dim(query, 3)
    nqb = _ceil_div(seq, block_size)
    padded = op.Mul(nqb, _s64(block_size))
    tail0 = _tail_start(seq, instruction_tokens)
    qbar = op.ReduceMean(op.Cast(query, to=f32), _i64(1), keepdims=0)  # (B, L, D)
    kbar = op.ReduceMean(op.Cast(key, to=f32), _i64(1), keepdims=0)

    # Query block representation: mean over the block's sparse (non-tail) queries.
    qpos = _range(_s64(0), padded)
    live = op.Cast(op.Less(qpos, tail0), to=f32)  # (Lp,)
    qpad = op.Pad(qbar, op.Concat(_i64(0, 0, 0, 0), op.Unsqueeze(op.Sub(padded, seq), _i64(0)), _i64(0), axis=0))
    qsum = op.ReduceSum(op.Reshape(op.Mul(qpad, op.Unsqueeze(live, _i64(0, 2))),
                                   _vec(batch, nqb, _s64(block_size), dim)), _i64(2), keepdims=0)
    qcnt = op.Max(op.ReduceSum(op.Reshape(live, _vec(nqb, _s64(block_size))), _i64(1), keepdims=0), _f32(1.0))
    qrep = op.Div(qsum, op.Unsqueeze(qcnt, _i64(0, 2)))  # (B, nQB, D)

    # Chunk representation: sum / sqrt(length) through a membership matrix (no prefix-sum cancellation).
    bd = op.Cast(boundaries, to=onnx.TensorProto.INT64)
    n_bd = _dim(boundaries, 1)
    starts = op.Unsqueeze(_slice(bd, _s64(0), op.Sub(n_bd, _s64(1)), 1), _i64(2))  # (B, N, 1)
    ends = op.Unsqueeze(_slice(bd, _s64(1), n_bd, 1), _i64(2))
    kpos = _range(_s64(0), seq)
    member = op.Cast(op.And(op.GreaterOrEqual(kpos, starts), op.Less(kpos, ends)), to=f32)  # (B, N, L)
    length = op.ReduceSum(member, _i64(2), keepdims=1)
    krep = op.Div(op.MatMul(member, kbar), op.Sqrt(op.Max(length, _f32(1.0))))  # (B, N, D)
    scores = op.MatMul(qrep, op.Transpose(krep, perm=[0, 2, 1]))  # (B, nQB, N)
    chunk_of = op.ArgMax(member, axis=1, keepdims=1)  # (B, 1, L)
    tok = op.GatherElements(scores, op.Expand(chunk_of, _vec(batch, nqb, seq)), axis=2)

    # Eligible keys per block, forced local / global tokens, ranking (score desc, index desc).
    blk = op.Unsqueeze(_range(_s64(0), nqb), _i64(1))  # (nQB, 1)
    s0 = op.Mul(blk, _s64(block_size))
    e0 = op.Min(op.Add(s0, _s64(block_size)), tail0)
    lo = op.Max(op.Sub(s0, _s64(sliding_window - 1)), _s64(0)) if sliding_window > 0 else op.Mul(s0, _s64(0))
    hi = op.Where(op.Greater(e0, s0), e0, lo)
    eligible = op.And(op.GreaterOrEqual(kpos, lo), op.Less(kpos, hi))  # (nQB, L)
    forced = op.And(eligible, op.Or(op.Less(kpos, op.Add(lo, _s64(global_tokens))),
                                    op.GreaterOrEqual(kpos, op.Sub(hi, _s64(local_tokens)))))
    prio = op.Where(forced, _f32(INF), op.Where(eligible, tok, _f32(-INF)))  # (B, nQB, L)
    flipped = op.Slice(prio, _i64(-1), _i64(np.iinfo(np.int64).min), _i64(2), _i64(-1))
    k = op.Min(_s64(budget), seq)
    _, fidx = _topk(flipped, k, largest=True)
    chosen = op.Sub(op.Sub(seq, _s64(1)), fidx)  # back to key positions
    count = op.Min(op.Max(op.Sub(hi, lo), _s64(0)), _s64(budget))  # (nQB, 1)
    keep = op.Less(_range(_s64(0), k), count)  # (nQB, k)
    seq_f = op.Cast(seq, to=f32)
    picked = _sort_ascending(op.Where(keep, op.Cast(chosen, to=f32), seq_f), k)
    picked = op.Where(op.Equal(picked, seq_f), _f32(-1.0), picked)
    fill = op.Expand(_f32(-1.0), _vec(batch, nqb, op.Sub(_s64(budget), k)))
    indices = op.Cast(op.Concat(picked, fill, axis=2), to=onnx.TensorProto.INT32)
    counts = op.Cast(op.Expand(op.Squeeze(count, _i64(1)), _vec(batch, nqb)), to=onnx.TensorProto.INT32)
    return indices, counts


# -- DhsaSparseAttention -----------------------------------------------------------------------

def _scaled_logits(q, k_t, scale: float, softcap: float):
    x = op.Mul(op.MatMul(q, k_t), _f32(scale))
    if softcap > 0:
        x = op.Mul(op.Tanh(op.Div(x, _f32(softcap))), _f32(softcap))
    return x


def _masked_softmax(logits, allowed):
    """softmax over the allowed keys; rows without any allowed key give 0."""
    p = op.Softmax(op.Where(allowed, logits, _f32(-INF)), axis=-1)
    any_key = op.Greater(op.ReduceMax(op.Cast(allowed, to=onnx.TensorProto.FLOAT), _i64(-1), keepdims=1),
                         _f32(0.0))
    return op.Where(any_key, p, _f32(0.0))


def sparse_attention(query, key, value, indices, counts, block_size, scale, softcap, sliding_window,
                     instruction_tokens):
    f32 = onnx.TensorProto.FLOAT
    batch, hq, seq, dim = _dim(query, 0), _dim(query, 1), _dim(query, 2), _dim(query, 3)
    hkv = _dim(key, 1)
    groups = op.Div(hq, hkv)
    nqb = _ceil_div(seq, block_size)
    padded = op.Mul(nqb, _s64(block_size))
    nb = _dim(indices, 2)
    tail0 = _tail_start(seq, instruction_tokens)
    qf, kf, vf = (op.Cast(x, to=f32) for x in (query, key, value))

    # Sparse part: gather each block's keys once per kv head, shared by the head group.
    qpad = op.Pad(qf, op.Concat(_i64(0, 0, 0, 0, 0, 0), op.Unsqueeze(op.Sub(padded, seq), _i64(0)), _i64(0),
                                axis=0))
    qb = op.Reshape(qpad, _vec(batch, hkv, groups, nqb, _s64(block_size), dim))
    live = op.Less(_range(_s64(0), nb), op.Unsqueeze(op.Cast(counts, to=onnx.TensorProto.INT64), _i64(2)))  # (B, nQB, Nb)
    idx = op.Where(live, op.Cast(indices, to=onnx.TensorProto.INT64), _s64(0))
    base = op.Mul(op.Add(op.Mul(op.Unsqueeze(_range(_s64(0), batch), _i64(1)), hkv),
                         op.Unsqueeze(_range(_s64(0), hkv), _i64(0))), seq)  # (B, Hkv)
    flat = op.Add(op.Unsqueeze(base, _i64(2, 3)), op.Unsqueeze(idx, _i64(1)))  # (B, Hkv, nQB, Nb)
    ks = op.Gather(op.Reshape(kf, _vec(_s64(-1), dim)), flat, axis=0)  # (B, Hkv, nQB, Nb, D)
    vs = op.Gather(op.Reshape(vf, _vec(_s64(-1), dim)), flat, axis=0)
    logits = _scaled_logits(qb, op.Unsqueeze(op.Transpose(ks, perm=[0, 1, 2, 4, 3]), _i64(2)), scale, softcap)
    t = op.Reshape(_range(_s64(0), padded), _vec(_s64(1), nqb, _s64(block_size), _s64(1)))
    j = op.Unsqueeze(idx, _i64(2))  # (B, nQB, 1, Nb)
    allowed = op.And(op.And(op.Unsqueeze(live, _i64(2)), op.LessOrEqual(j, t)), op.Less(t, tail0))
    if sliding_window > 0:
        allowed = op.And(allowed, op.Greater(j, op.Sub(t, _s64(sliding_window))))
    p = _masked_softmax(logits, op.Unsqueeze(allowed, _i64(1, 2)))  # (B, Hkv, g, nQB, b, Nb)
    out = op.MatMul(p, op.Unsqueeze(vs, _i64(2)))
    out = op.Reshape(out, _vec(batch, hq, padded, dim))

    if instruction_tokens > 0:  # dense tail: the last min(T, L) queries see every allowed key
        qt = op.Reshape(_slice(qf, tail0, seq, 2), _vec(batch, hkv, groups, _s64(-1), dim))
        lt = _scaled_logits(qt, op.Unsqueeze(op.Transpose(kf, perm=[0, 1, 3, 2]), _i64(2)), scale, softcap)
        tq = op.Unsqueeze(_range(tail0, seq), _i64(1))
        kp = _range(_s64(0), seq)
        ok = op.LessOrEqual(kp, tq)
        if sliding_window > 0:
            ok = op.And(ok, op.Greater(kp, op.Sub(tq, _s64(sliding_window))))
        tail = op.MatMul(_masked_softmax(lt, ok), op.Unsqueeze(vf, _i64(2)))
        out = op.Concat(_slice(out, _s64(0), tail0, 2), op.Reshape(tail, _vec(batch, hq, _s64(-1), dim)), axis=2)
    else:
        out = _slice(out, _s64(0), seq, 2)
    return op.CastLike(out, query)


# -- DhsaSelectAttention -----------------------------------------------------------------------

def select_attention(query, key, value, boundaries, block_size, budget, local_tokens, global_tokens, scale, softcap,
                     sliding_window, instruction_tokens):
    indices, counts = select_keys(query, key, boundaries, block_size, budget, local_tokens, global_tokens,
                                  sliding_window, instruction_tokens)
    return sparse_attention(query, key, value, indices, counts, block_size, scale, softcap, sliding_window,
                            instruction_tokens)


# -- DhsaDecodeAttention -----------------------------------------------------------------------

def decode_attention(query, key, value, boundaries, chunk_sums, budget, local_tokens, global_tokens, scale, softcap,
                     sliding_window):
    """Token scores through the chunk each key belongs to, the same (score desc, index desc) TopK as
    DhsaSelectKeys over the eligible keys [lo, K), then attention over the gathered selection."""
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    batch, hq, dim = _dim(query, 0), _dim(query, 1), _dim(query, 3)
    hkv, seq = _dim(key, 1), _dim(key, 2)
    groups = op.Div(hq, hkv)
    t = op.Sub(seq, _s64(1))
    lo = op.Max(op.Sub(t, _s64(sliding_window - 1)), _s64(0)) if sliding_window > 0 else _s64(0)

    bd = op.Cast(boundaries, to=i64)
    n_bd = _dim(boundaries, 1)
    starts = _slice(bd, _s64(0), op.Sub(n_bd, _s64(1)), 1)  # (B, M)
    ends = _slice(bd, _s64(1), n_bd, 1)
    length = op.Max(op.Cast(op.Sub(ends, starts), to=f32), _f32(1.0))
    reps = op.Div(chunk_sums, op.Unsqueeze(op.Sqrt(length), _i64(2)))  # (B, M, D)
    qbar = op.ReduceMean(op.Cast(query, to=f32), _i64(1), keepdims=0)  # (B, 1, D)
    scores = op.Squeeze(op.MatMul(reps, op.Transpose(qbar, perm=[0, 2, 1])), _i64(2))  # (B, M)
    kpos = _range(_s64(0), seq)
    member = op.And(op.GreaterOrEqual(kpos, op.Unsqueeze(starts, _i64(2))),
                    op.Less(kpos, op.Unsqueeze(ends, _i64(2))))  # (B, M, K)
    chunk_of = op.ArgMax(op.Cast(member, to=f32), axis=1, keepdims=0)  # (B, K)
    tok = op.GatherElements(scores, chunk_of, axis=1)  # (B, K)

    eligible = op.GreaterOrEqual(kpos, lo)
    forced = op.And(eligible, op.Or(op.Less(kpos, op.Add(lo, _s64(global_tokens))),
                                    op.GreaterOrEqual(kpos, op.Sub(seq, _s64(local_tokens)))))
    prio = op.Where(forced, _f32(INF), op.Where(eligible, tok, _f32(-INF)))
    flipped = op.Slice(prio, _i64(-1), _i64(np.iinfo(np.int64).min), _i64(1), _i64(-1))
    count = op.Min(op.Sub(seq, lo), _s64(budget))
    _, fidx = _topk(flipped, count, largest=True)
    chosen = op.Sub(t, fidx)  # (B, count) key positions
    picked = op.Cast(_sort_ascending(op.Cast(chosen, to=f32), count), to=i64)

    base = op.Mul(op.Add(op.Mul(op.Unsqueeze(_range(_s64(0), batch), _i64(1)), hkv),
                         op.Unsqueeze(_range(_s64(0), hkv), _i64(0))), seq)  # (B, Hkv)
    flat = op.Add(op.Unsqueeze(base, _i64(2)), op.Unsqueeze(picked, _i64(1)))  # (B, Hkv, count)
    ks = op.Gather(op.Reshape(op.Cast(key, to=f32), _vec(_s64(-1), dim)), flat, axis=0)  # (B, Hkv, count, D)
    vs = op.Gather(op.Reshape(op.Cast(value, to=f32), _vec(_s64(-1), dim)), flat, axis=0)
    q = op.Reshape(op.Cast(query, to=f32), _vec(batch, hkv, groups, dim))  # (B, Hkv, g, D)
    logits = _scaled_logits(q, op.Transpose(ks, perm=[0, 1, 3, 2]), scale, softcap)  # (B, Hkv, g, count)
    out = op.MatMul(op.Softmax(logits, axis=-1), vs)  # every selected key is visible to t
    return op.CastLike(op.Reshape(out, _vec(batch, hq, _s64(1), dim)), query)
