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
