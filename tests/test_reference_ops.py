"""The reference ops against independent naive computations (tests/naive.py) on random cases."""

import random

import numpy as np
import pytest
import torch

from dhsa_export.ops import OpInputError, reference
from dhsa_export.ops import library as ops

from . import naive
from .cases import random_boundaries, random_case, tensors

N_CASES = 60


def _boundaries_list(bd: torch.Tensor, i: int) -> list[int]:
    row = bd[i].tolist()
    seq = row[-1]
    return row[: row.index(seq) + 1]


@pytest.mark.parametrize("case_id", range(N_CASES))
def test_boundaries_match_naive(case_id, seed):
    rng = random.Random(seed)
    case = random_case(rng)
    gen = torch.Generator().manual_seed(seed)
    _, k, _ = tensors(case, gen)
    window, radius = rng.choice([1, 2, 4]), rng.choice([0, 1, 8])
    threshold = rng.choice([0.0, 0.5, -1.0])
    n = reference.num_chunks(case.seq, case.block_size, case.chunk_beta)

    ref_scores = reference.similarity_scores(k, window)
    np.testing.assert_allclose(ref_scores.double().numpy(), naive.cut_scores_similarity(k, window),
                               rtol=0, atol=1e-5)
    bd = ops.chunk_boundaries(k, None, "similarity", case.block_size, case.chunk_beta, case.block_size,
                              window, radius, threshold, case.instruction_tokens)
    assert bd.dtype == torch.int32 and tuple(bd.shape) == (case.batch, n + 1)
    for i in range(case.batch):
        expect = naive.boundaries_from_scores(ref_scores[i].double().numpy(), case.seq, n - 1, radius,
                                              threshold, case.instruction_tokens)
        assert _boundaries_list(bd, i) == expect
        assert bd[i, len(expect):].eq(case.seq).all()

    # Given scores (the learned predictor's path): same selection on the valid positions.
    given = torch.randn(case.batch, case.seq, generator=gen)
    bd = ops.chunk_boundaries(k, given, "scores", case.block_size, case.chunk_beta, case.block_size,
                              window, radius, 0.3, case.instruction_tokens)
    masked = np.full((case.batch, case.seq), -np.inf)
    masked[:, window - 1 : max(window - 1, case.seq - window)] = given.numpy()[:, window - 1 : case.seq - window]
    for i in range(case.batch):
        assert _boundaries_list(bd, i) == naive.boundaries_from_scores(
            masked[i], case.seq, n - 1, radius, 0.3, case.instruction_tokens)


@pytest.mark.parametrize("seq,chunk,beta,block", [(1, 4, 1, 4), (300, 64, 2, 128), (64, 64, 1, 64), (65, 7, 8, 32)])
def test_fixed_boundaries(seq, chunk, beta, block):
    k = torch.randn(2, 1, seq, 4)
    bd = ops.chunk_boundaries(k, None, "fixed", block, beta, chunk, 4, 8, 0.0, 0)
    expect = list(range(0, seq, chunk)) + [seq]
    assert _boundaries_list(bd, 0) == expect and _boundaries_list(bd, 1) == expect


def _random_selection(seed: int):
    """A random case, its tensors, random boundaries and their selection."""
    rng = random.Random(seed)
    c = random_case(rng)
    q, k, v = tensors(c, torch.Generator().manual_seed(seed))
    bd = random_boundaries(rng, c.batch, c.seq, reference.num_chunks(c.seq, c.block_size, c.chunk_beta))
    idx, cnt = ops.select_keys(q, k, bd, c.block_size, c.budget, c.local_tokens, c.global_tokens, c.sliding_window,
                               c.instruction_tokens)
    return c, (q, k, v), bd, idx, cnt


@pytest.mark.parametrize("case_id", range(20))
def test_attended_pairs_count_what_the_attention_sees(case_id, seed):
    """attended_pairs against a count over every (query, key): selected (or in the dense tail) and visible."""
    case, _, _, idx, cnt = _random_selection(seed)
    tail0 = reference.dense_tail_start(case.seq, case.instruction_tokens)
    w = case.sliding_window
    attended = visible = 0
    for b in range(case.batch):
        for t in range(case.seq):
            keys = range(case.seq) if t >= tail0 else idx[b, t // case.block_size, : cnt[b, t // case.block_size]].tolist()
            see = [j for j in keys if j <= t and (w == 0 or j > t - w)]
            attended += len(see)
            visible += t + 1 - (max(0, t - w + 1) if w else 0)
    assert reference.attended_pairs(idx, cnt, case.seq, case.block_size, w, case.instruction_tokens) == (attended,
                                                                                                        visible)


@pytest.mark.parametrize("case_id", range(N_CASES))
def test_select_keys_match_naive(case_id, seed):
    rng = random.Random(seed)
    case = random_case(rng)
    gen = torch.Generator().manual_seed(seed)
    q, k, _ = tensors(case, gen)
    n = reference.num_chunks(case.seq, case.block_size, case.chunk_beta)
    bd = random_boundaries(rng, case.batch, case.seq, n)

    scores = reference.selection_scores(q, k, bd, case.block_size, case.instruction_tokens)
    np.testing.assert_allclose(scores.double().numpy(),
                               naive.chunk_scores(q, k, bd, case.block_size, case.instruction_tokens),
                               rtol=1e-5, atol=1e-5)
    idx, cnt = ops.select_keys(q, k, bd, case.block_size, case.budget, case.local_tokens,
                               case.global_tokens, case.sliding_window, case.instruction_tokens)
    nqb = -(-case.seq // case.block_size)
    assert tuple(idx.shape) == (case.batch, nqb, case.budget) and tuple(cnt.shape) == (case.batch, nqb)
    expect = naive.select(scores.double().numpy(), bd, case.seq, case.block_size, case.budget,
                          case.local_tokens, case.global_tokens, case.sliding_window, case.instruction_tokens)
    for i in range(case.batch):
        for blk in range(nqb):
            c = int(cnt[i, blk])
            assert idx[i, blk, :c].tolist() == expect[i][blk], (i, blk)
            assert idx[i, blk, c:].eq(-1).all()


@pytest.mark.parametrize("case_id", range(N_CASES))
def test_sparse_attention_match_naive(case_id, seed):
    rng = random.Random(seed)
    case = random_case(rng)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = tensors(case, gen)
    n = reference.num_chunks(case.seq, case.block_size, case.chunk_beta)
    bd = random_boundaries(rng, case.batch, case.seq, n)
    idx, cnt = ops.select_keys(q, k, bd, case.block_size, case.budget, case.local_tokens,
                               case.global_tokens, case.sliding_window, case.instruction_tokens)
    out = ops.sparse_attention(q, k, v, idx, cnt, case.block_size, case.scale, case.softcap,
                               case.sliding_window, case.instruction_tokens)
    selected = [[idx[i, blk, : int(cnt[i, blk])].tolist() for blk in range(idx.shape[1])]
                for i in range(case.batch)]
    expect = naive.sparse_attention(q, k, v, selected, case.block_size, case.scale, case.softcap,
                                    case.sliding_window, case.instruction_tokens)
    torch.testing.assert_close(out.double(), expect, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case_id", range(20))
def test_full_budget_is_dense(case_id, seed):
    """With budget >= L every eligible key is kept, so DHSA is exactly dense attention."""
    rng = random.Random(seed)
    case = random_case(rng)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = tensors(case, gen)
    bd = ops.chunk_boundaries(k, None, "similarity", case.block_size, case.chunk_beta, case.block_size,
                              4, 8, 0.0, case.instruction_tokens)
    budget = max(case.seq, case.local_tokens + case.global_tokens)
    idx, cnt = ops.select_keys(q, k, bd, case.block_size, budget, case.local_tokens, case.global_tokens,
                               case.sliding_window, case.instruction_tokens)
    out = ops.sparse_attention(q, k, v, idx, cnt, case.block_size, case.scale, case.softcap,
                               case.sliding_window, case.instruction_tokens)
    dense = reference.dense_attention(q, k, v, case.scale, case.softcap, case.sliding_window)
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-5)


def test_bf16_inputs_accumulate_in_fp32(seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 4, 77, 32, generator=gen) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    bd = ops.chunk_boundaries(k, None, "fixed", 16, 8, 16, 4, 8, 0.0, 0)
    idx, cnt = ops.select_keys(q, k, bd, 16, 48, 16, 16, 0, 0)
    ref = ops.sparse_attention(q, k, v, idx, cnt, 16, 32 ** -0.5, 0.0, 0, 0)
    low = ops.sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), idx, cnt, 16, 32 ** -0.5, 0.0, 0, 0)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=3e-2)


@pytest.mark.parametrize("bad,match", [
    (dict(budget=0), "budget must be >= 1"),
    (dict(budget=10, local_tokens=8, global_tokens=8), "local_tokens \\+ global_tokens"),
    (dict(block_size=0), "block_size must be >= 1"),
])
def test_select_keys_rejects_bad_attributes(bad, match):
    q, k = torch.randn(1, 2, 20, 8), torch.randn(1, 1, 20, 8)
    bd = torch.tensor([[0, 10, 20]], dtype=torch.int32)
    args = dict(block_size=4, budget=16, local_tokens=4, global_tokens=4, sliding_window=0, instruction_tokens=0)
    args.update(bad)
    with pytest.raises(OpInputError, match=match):
        reference.select_keys(q, k, bd, **args)


@pytest.mark.parametrize("bd,match", [
    ([[0, 15, 10, 20]], "non-decreasing"),
    ([[1, 10, 20]], "start at 0"),
    ([[0, 10, 19]], "end at L"),
])
def test_select_keys_rejects_bad_boundaries(bd, match):
    q, k = torch.randn(1, 2, 20, 8), torch.randn(1, 1, 20, 8)
    with pytest.raises(OpInputError, match=match):
        reference.select_keys(q, k, torch.tensor(bd, dtype=torch.int32), 4, 16, 4, 4, 0, 0)


def test_sparse_attention_rejects_gqa_mismatch():
    q, k = torch.randn(1, 3, 8, 4), torch.randn(1, 2, 8, 4)
    idx = torch.zeros(1, 2, 4, dtype=torch.int32)
    cnt = torch.ones(1, 2, dtype=torch.int32)
    with pytest.raises(OpInputError, match="multiple of Hkv"):
        reference.sparse_attention(q, k, k, idx, cnt, 4, 0.5, 0.0, 0, 0)


def test_sparse_attention_rejects_out_of_range_index():
    q = torch.randn(1, 1, 8, 4)
    idx = torch.full((1, 2, 4), 9, dtype=torch.int32)
    cnt = torch.ones(1, 2, dtype=torch.int32)
    with pytest.raises(OpInputError, match="indices within counts"):
        reference.sparse_attention(q, q, q, idx, cnt, 4, 0.5, 0.0, 0, 0)


@pytest.mark.parametrize("case_id", range(20))
def test_select_attention_is_selection_then_attention(case_id, seed):
    c, (q, k, v), bd, idx, cnt = _random_selection(seed)
    apart = ops.sparse_attention(q, k, v, idx, cnt, c.block_size, c.scale, c.softcap, c.sliding_window,
                                 c.instruction_tokens)
    fused = ops.select_attention(q, k, v, bd, c.block_size, c.budget, c.local_tokens, c.global_tokens, c.scale,
                                 c.softcap, c.sliding_window, c.instruction_tokens)
    assert torch.equal(fused, apart)


@pytest.mark.parametrize("bad,match", [
    (dict(budget=0), "^DhsaSelectAttention: budget must be >= 1"),
    (dict(softcap=-1.0), "^DhsaSelectAttention: softcap must be >= 0"),
    (dict(value=torch.zeros(1, 1, 19, 8)), "^DhsaSelectAttention: key .* and value .* must be"),
])
def test_select_attention_errors_name_the_fused_op(bad, match):
    q, k = torch.randn(1, 2, 20, 8), torch.randn(1, 1, 20, 8)
    args = dict(query=q, key=k, value=k, boundaries=torch.tensor([[0, 10, 20]], dtype=torch.int32), block_size=4,
                budget=16, local_tokens=4, global_tokens=4, scale=0.5, softcap=0.0, sliding_window=0,
                instruction_tokens=0) | bad
    with pytest.raises(OpInputError, match=match):
        reference.select_attention(**args)
