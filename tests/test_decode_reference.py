"""The sparse-decode rule's reference (dhsa_export/ops/reference.py, "Sparse decode") against the
written rules (tests/naive.py) on fresh random cases: batch, GQA, window, soft-cap, cache lengths that
are multiples of nothing, caches shorter than the budget, one generated token or many."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dhsa_export.ops import reference as ref

from . import naive


def _case(rng):
    b = int(rng.integers(1, 4))
    hkv = int(rng.choice([1, 2, 4]))
    hq = hkv * int(rng.choice([1, 2, 4]))
    d = int(rng.choice([8, 16, 32]))
    block = int(rng.choice([4, 8, 16]))
    beta = int(rng.choice([1, 2, 4]))
    prompt_len = int(rng.integers(1, 200))
    cache_len = prompt_len + int(rng.integers(1, 60))
    budget = int(rng.integers(4, 160))
    local = int(rng.integers(0, budget // 2 + 1))
    glob = int(rng.integers(0, budget - local + 1))
    window = int(rng.choice([0, 0, int(rng.integers(1, 120))]))
    softcap = float(rng.choice([0.0, 0.0, 20.0]))
    return b, hq, hkv, d, block, beta, prompt_len, cache_len, budget, local, glob, window, softcap


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_matches_the_written_rule(dtype, seed):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    tol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    for _ in range(100):
        b, hq, hkv, d, block, beta, prompt_len, cache_len, budget, local, glob, window, softcap = _case(rng)
        q = torch.randn(b, hq, 1, d, generator=gen).to(dtype)
        k = torch.randn(b, hkv, cache_len, d, generator=gen).to(dtype)
        v = torch.randn(b, hkv, cache_len, d, generator=gen).to(dtype)
        prompt_key = k[:, :, :prompt_len]
        bd = ref.chunk_boundaries(prompt_key, None, "similarity", block, beta, block, 2, 1, 0.0, 0)
        tail = ref.decode_chunk_size(block, beta)
        full = ref.decode_boundaries(bd, prompt_len, cache_len, tail)
        idx, cnt = ref.decode_select_keys(q, k, full, budget, local, glob, window)
        scale = d ** -0.5
        got = ref.decode_attention(q, k, v, idx, cnt, scale, softcap, window)
        want_sel, want = naive.decode(q, k, v, bd.tolist(), prompt_len, tail, budget, local, glob, window, scale,
                                      softcap)
        for i in range(b):
            row = idx[i, : int(cnt[i])].tolist()
            assert row == want_sel[i], (i, prompt_len, cache_len, budget, window)
            assert (idx[i, int(cnt[i]):] == -1).all()
        err = (got.double() - want).abs().max().item()
        assert err <= tol * max(1.0, want.abs().max().item()), err


def test_cache_within_the_budget_is_dense(seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(2, 4, 1, 16, generator=gen), torch.randn(2, 2, 37, 16, generator=gen), \
        torch.randn(2, 2, 37, 16, generator=gen)
    bd = ref.decode_boundaries(torch.tensor([[0, 10, 30, 30]] * 2, dtype=torch.int32), 30, 37, 4)
    idx, cnt = ref.decode_select_keys(q, k, bd, 64, 8, 8, 0)
    assert cnt.tolist() == [37, 37] and idx[:, :37].tolist() == [list(range(37))] * 2
    got = ref.decode_attention(q, k, v, idx, cnt, 0.25, 0.0, 0)
    want = ref.dense_attention(torch.cat([torch.zeros(2, 4, 36, 16), q], 2), k, v, 0.25, 0.0, 0)[:, :, -1:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


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
        assert sorted(rt.prompt) == ([] if mode == "dense" else [0, 1, 2, 3])
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
