"""The sparse-decode rule's reference (dhsa_export/ops/reference.py, "Sparse decode") against the
written rules (tests/naive.py) on fresh random cases: batch, GQA, window, soft-cap, cache lengths that
are multiples of nothing, caches shorter than the budget, one generated token or many."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dhsa_export.ops import reference as ref

from . import naive
from .cases import decode_tensors, random_decode_case
from .compare import decode_selection_is_clear


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_matches_the_written_rule(dtype, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    for _ in range(100):
        c = random_decode_case(rng)
        q, k, v, prompt_bd, full, sums = decode_tensors(c, gen, dtype)
        idx, cnt = ref.decode_select_keys(q, sums, full, c.cache_len, c.budget, c.local_tokens, c.global_tokens,
                                          c.sliding_window)
        got = ref.decode_attention(q, k, v, full, sums, **c.attrs)
        tail = ref.decode_chunk_size(c.block_size, c.chunk_beta)
        want_sel, want = naive.decode(q, k, v, prompt_bd.tolist(), c.prompt_len, tail, c.budget, c.local_tokens,
                                      c.global_tokens, c.sliding_window, c.scale, c.softcap)
        for i in range(c.batch):
            row = idx[i, : int(cnt[i])].tolist()
            assert row == want_sel[i], (i, c)
            assert (idx[i, int(cnt[i]):] == -1).all()
        err = (got.double() - want).abs().max().item()
        assert err <= tol * max(1.0, want.abs().max().item()), err


def test_chunk_sums_follow_the_boundaries():
    k = torch.arange(2 * 2 * 5 * 3, dtype=torch.float32).view(2, 2, 5, 3)
    bd = torch.tensor([[0, 2, 2, 5]] * 2, dtype=torch.int32)
    sums = ref.decode_chunk_sums(k, bd)
    kbar = k.mean(1)
    torch.testing.assert_close(sums[:, 0], kbar[:, :2].sum(1))
    torch.testing.assert_close(sums[:, 1], torch.zeros(2, 3))
    torch.testing.assert_close(sums[:, 2], kbar[:, 2:].sum(1))


def test_cache_within_the_budget_is_dense(seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(2, 4, 1, 16, generator=gen), torch.randn(2, 2, 37, 16, generator=gen), \
        torch.randn(2, 2, 37, 16, generator=gen)
    bd = ref.decode_boundaries(torch.tensor([[0, 10, 30, 30]] * 2, dtype=torch.int32), 30, 37, 4)
    sums = ref.decode_chunk_sums(k, bd)
    idx, cnt = ref.decode_select_keys(q, sums, bd, 37, 64, 8, 8, 0)
    assert cnt.tolist() == [37, 37] and idx[:, :37].tolist() == [list(range(37))] * 2
    got = ref.decode_attention(q, k, v, bd, sums, 64, 8, 8, 0.25, 0.0, 0)
    want = ref.dense_attention(torch.cat([torch.zeros(2, 4, 36, 16), q], 2), k, v, 0.25, 0.0, 0)[:, :, -1:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change,message", [
    (dict(query=torch.zeros(1, 2, 2, 8)), "one position"),
    (dict(chunk_sums=torch.zeros(1, 3, 8, dtype=torch.float64)), "chunk_sums must be float32"),
    (dict(boundaries=torch.tensor([[0, 4, 9]], dtype=torch.int32)), "end at L = 10"),
    (dict(key=torch.zeros(1, 3, 10, 8), value=torch.zeros(1, 3, 10, 8)), "multiple of Hkv"),
])
def test_malformed_decode_inputs_are_named(change, message):
    args = dict(query=torch.zeros(1, 2, 1, 8), key=torch.zeros(1, 1, 10, 8), value=torch.zeros(1, 1, 10, 8),
                boundaries=torch.tensor([[0, 4, 10]], dtype=torch.int32), chunk_sums=torch.zeros(1, 2, 8)) | change
    with pytest.raises(ref.OpInputError, match=message):
        ref.decode_attention(**args, budget=8, local_tokens=2, global_tokens=2, scale=0.3, softcap=0.0,
                             sliding_window=0)


def test_runtime_state_selects_as_the_written_chunks(seed):
    """decode_state (prompt state + one update per step, empty chunks left behind) attends exactly as the
    rule's boundary row (decode_boundaries) with sums recomputed from the cache, step after step."""
    from dhsa_export import decode_state

    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(20):
        c = random_decode_case(rng)
        steps = c.cache_len - c.prompt_len
        q_all = torch.randn(c.batch, c.hq, steps, c.dim, generator=gen)
        k = torch.randn(c.batch, c.hkv, c.cache_len, c.dim, generator=gen)
        v = torch.randn(c.batch, c.hkv, c.cache_len, c.dim, generator=gen)
        prompt_bd = ref.chunk_boundaries(k[:, :, :c.prompt_len], None, "similarity", c.block_size, c.chunk_beta,
                                         c.block_size, 2, 1, 0.0, 0)
        tail = ref.decode_chunk_size(c.block_size, c.chunk_beta)
        bd, sums = decode_state.prompt_state(k[:, :, :c.prompt_len], prompt_bd)
        for i in range(steps):
            n = c.prompt_len + i + 1
            bd, sums = decode_state.step_state(bd, sums, k[:, :, n - 1:n], tail)
            assert bd.shape[1] == prompt_bd.shape[1] + 2 + i and bd[:, -1].tolist() == [n] * c.batch
            q = q_all[:, :, i:i + 1]
            got = ref.decode_attention(q, k[:, :, :n], v[:, :, :n], bd, sums, **c.attrs)
            rule = ref.decode_boundaries(prompt_bd, c.prompt_len, n, tail)
            rule_sums = ref.decode_chunk_sums(k[:, :, :n], rule)
            if not decode_selection_is_clear(q, rule_sums, rule, n, c.budget, c.local_tokens, c.global_tokens,
                                             c.sliding_window):
                continue  # sums accumulated in another order may order near-tied chunks otherwise
            want = ref.decode_attention(q, k[:, :, :n], v[:, :, :n], rule, rule_sums, **c.attrs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decode_boundaries_layout():
    bd = torch.tensor([[0, 5, 9, 12, 12]], dtype=torch.int32)
    assert ref.decode_boundaries(bd, 12, 13, 4).tolist() == [[0, 5, 9, 12, 12, 13]]
    assert ref.decode_boundaries(bd, 12, 21, 4).tolist() == [[0, 5, 9, 12, 12, 16, 20, 21]]
    assert ref.decode_chunk_size(64, 8) == 8 and ref.decode_chunk_size(4, 8) == 1


def test_sparse_decode_in_the_model(seed):
    """enable_dhsa(decode="sparse"): single-token cached steps select per token; with the whole cache within
    the budget they equal dense decode; past it the prompt's logits agree and the cached steps' do not."""
    from dhsa_export import attention, runtime

    from .models import tiny

    recipe, model = tiny("tiny-gemma2")
    ids = np.random.default_rng(seed).integers(3, 512, 300)
    rows = {}
    for mode in ("dense", "sparse"):
        rt = attention.enable_dhsa(model, recipe.dhsa, decode=mode)
        _, rows[mode] = runtime.TorchLM(model).cached_greedy(ids[:20], 12)
        assert sorted(rt.chunk_state) == ([] if mode == "dense" else [0, 1, 2, 3])
    for a, b in zip(rows["dense"], rows["sparse"]):  # 20 + 12 keys < budget 64: nothing to leave out
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    long = {}
    for mode in ("dense", "sparse"):  # 300 keys, budget 64: the selection leaves most of the cache out
        attention.enable_dhsa(model, recipe.dhsa, decode=mode)
        _, long[mode] = runtime.TorchLM(model).cached_greedy(ids, 6, forced=[5] * 6)
    attention.disable_dhsa(model)
    np.testing.assert_allclose(long["dense"][0], long["sparse"][0], rtol=1e-4, atol=1e-4)  # the prefill's
    assert all(np.isfinite(r).all() for r in long["sparse"])
    assert any(not np.allclose(a, b, atol=1e-3) for a, b in zip(long["dense"][1:], long["sparse"][1:]))
    with pytest.raises(Exception, match="decode must be"):
        attention.enable_dhsa(model, recipe.dhsa, decode="fast")
