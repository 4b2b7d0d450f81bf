"""Comparisons of selections that tolerate float near-ties: two correct implementations may order
two chunks whose scores differ by rounding error differently. Anything else must match exactly."""

from __future__ import annotations

import numpy as np


def assert_same_selection(got_idx, got_cnt, ref_idx, ref_cnt, scores, bd, tol=1e-5):
    """Equal counts; equal index lists except where the differing tokens' chunk scores lie within
    rounding of the reference's cut-off score (the last selected chunk's)."""
    got_idx, got_cnt, ref_idx, ref_cnt = map(np.asarray, (got_idx, got_cnt, ref_idx, ref_cnt))
    np.testing.assert_array_equal(got_cnt, ref_cnt)
    assert ((got_idx >= -1) & (got_idx < max(1, int(bd[:, -1].max())))).all(), "indices out of range / unwritten"
    for b, i in zip(*np.nonzero((got_idx != ref_idx).any(-1))):
        c = ref_cnt[b, i]
        a, r = set(got_idx[b, i, :c].tolist()), set(ref_idx[b, i, :c].tolist())
        assert len(a) == c, ("duplicate indices", b, i)
        chunk = np.searchsorted(bd[b], sorted(a ^ r), side="right") - 1
        ref_chunks = np.searchsorted(bd[b], sorted(r), side="right") - 1
        cutoff = scores[b, i, ref_chunks].min()
        assert np.abs(scores[b, i, chunk] - cutoff).max() <= tol * max(1.0, np.abs(scores[b, i]).max()), (b, i)
        np.testing.assert_array_equal(got_idx[b, i, c:], -1)
        assert np.all(np.diff(got_idx[b, i, :c]) > 0), "indices not ascending"


def assert_same_boundaries(got, ref, cut_scores, tol=1e-5):
    """Equal, unless the cut scores hold a near tie (|s_p - s_q| below rounding for some p, q)."""
    got, ref = np.asarray(got), np.asarray(ref)
    if np.array_equal(got, ref):
        return
    assert got.shape == ref.shape
    for b in np.nonzero((got != ref).any(-1))[0]:
        s = cut_scores[b]
        finite = np.sort(s[np.isfinite(s)])
        scale = max(1.0, np.abs(finite).max()) if finite.size else 1.0
        assert finite.size > 1 and np.diff(finite).min() < tol * scale, f"boundaries of sample {b} differ without a near tie"
        assert got[b, 0] == 0 and np.all(np.diff(got[b]) >= 0), "boundaries not ascending"


def decode_selection_is_clear(query, chunk_sums, boundaries, cache_len: int, budget: int, local_tokens: int,
                              global_tokens: int, sliding_window: int, tol: float = 1e-4) -> bool:
    """False when the sparse-decode selection of some sample hinges on a near tie: chunks ranked next to
    the budget's cut-off with scores within rounding, which two correct implementations may order
    differently (and so attend to different keys)."""
    q = np.asarray(query, dtype=np.float64).mean(1)[:, 0]  # (B, D)
    sums, bd = np.asarray(chunk_sums, dtype=np.float64), np.asarray(boundaries, dtype=np.int64)
    t = cache_len - 1
    lo = max(0, t - sliding_window + 1) if sliding_window > 0 else 0
    if cache_len - lo <= budget:
        return True
    f0, f1 = lo + global_tokens, cache_len - local_tokens
    need = budget - global_tokens - local_tokens
    for b in range(q.shape[0]):
        length = np.maximum(bd[b, 1:] - bd[b, :-1], 1)
        scores = sums[b] @ q[b] / np.sqrt(length)
        weight = np.clip(np.minimum(bd[b, 1:], f1) - np.maximum(bd[b, :-1], f0), 0, None)
        live = np.nonzero(weight > 0)[0]
        order = live[np.lexsort((-live, -scores[live]))]
        cum = np.cumsum(weight[order])
        cut = int(np.searchsorted(cum, need))  # the chunk where the budget runs out
        near = scores[order[max(0, cut - 1): cut + 2]]
        if near.size > 1 and np.abs(np.diff(near)).min() <= tol * max(1.0, np.abs(scores).max()):
            return False
    return True
