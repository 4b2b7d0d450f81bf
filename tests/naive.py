"""Independent, deliberately naive versions of the DHSA op semantics (Python loops, float64,
explicit masks). They share nothing with dhsa_export.ops.reference but the written contract."""

from __future__ import annotations

import math

import numpy as np
import torch


def cut_scores_similarity(key: torch.Tensor, window: int) -> np.ndarray:
    k = key.double().permute(0, 2, 1, 3).reshape(key.shape[0], key.shape[2], -1).numpy()
    b, seq, _ = k.shape
    out = np.full((b, seq), -np.inf)
    for i in range(b):
        for p in range(window - 1, seq - window):
            left = k[i, p - window + 1 : p + 1].sum(0)
            right = k[i, p + 1 : p + window + 1].sum(0)
            out[i, p] = 1.0 - left @ right / max(np.linalg.norm(left) * np.linalg.norm(right), 1e-12)
    return out


def boundaries_from_scores(scores: np.ndarray, seq: int, max_cuts: int, nms_radius: int,
                           threshold: float, instruction_tokens: int) -> list[int]:
    """One sample: local maxima above the threshold, forced instruction cut, top by score."""
    cands = []
    for p in range(seq):
        s = scores[p]
        if not np.isfinite(s) or s <= threshold:
            continue
        if any(scores[q] >= s for q in range(max(0, p - nms_radius), p)):
            continue
        if any(scores[q] > s for q in range(p + 1, min(seq, p + nms_radius + 1))):
            continue
        cands.append(p)
    tail = min(instruction_tokens, seq)
    cuts = []
    if 0 < tail < seq and max_cuts >= 1:
        forced = seq - tail - 1
        cuts.append(forced)
        cands = [p for p in cands if p < forced - nms_radius]
    cands.sort(key=lambda p: (-scores[p], p))
    cuts += cands[: max(0, max_cuts - len(cuts))]
    return [0] + sorted(c + 1 for c in cuts) + [seq]


def chunk_scores(query: torch.Tensor, key: torch.Tensor, boundaries: torch.Tensor, block_size: int,
                 instruction_tokens: int) -> np.ndarray:
    """S[b, i, c] in float64 from the definitions (head means, block mean, sqrt-normalised sums)."""
    q = query.double().mean(1).numpy()
    k = key.double().mean(1).numpy()
    bd = boundaries.numpy()
    b, seq, _ = q.shape
    nqb = math.ceil(seq / block_size)
    tail0 = seq - min(instruction_tokens, seq)
    out = np.zeros((b, nqb, bd.shape[1] - 1))
    for i in range(b):
        for blk in range(nqb):
            s0, e0 = blk * block_size, min((blk + 1) * block_size, tail0)
            if e0 <= s0:
                continue
            qr = q[i, s0:e0].mean(0)
            for c in range(bd.shape[1] - 1):
                lo, hi = bd[i, c], bd[i, c + 1]
                if hi > lo:
                    out[i, blk, c] = qr @ (k[i, lo:hi].sum(0) / math.sqrt(hi - lo))
    return out


def select(scores: np.ndarray, boundaries: torch.Tensor, seq: int, block_size: int, budget: int,
           local_tokens: int, global_tokens: int, sliding_window: int, instruction_tokens: int):
    """Per (sample, block): the selected key list, from the written rules."""
    bd = boundaries.numpy()
    b, nqb, _ = scores.shape
    tail0 = seq - min(instruction_tokens, seq)
    result = []
    for i in range(b):
        rows = []
        for blk in range(nqb):
            s0, e0 = blk * block_size, min((blk + 1) * block_size, tail0)
            if e0 <= s0:
                rows.append([])
                continue
            lo = max(0, s0 - sliding_window + 1) if sliding_window > 0 else 0
            eligible = list(range(lo, e0))
            if len(eligible) <= budget:
                rows.append(eligible)
                continue
            forced = set(range(lo, lo + global_tokens)) | set(range(e0 - local_tokens, e0))
            chunk = lambda j: int(np.searchsorted(bd[i], j, side="right") - 1)  # noqa: E731
            rest = [j for j in eligible if j not in forced]
            rest.sort(key=lambda j: (-scores[i, blk, chunk(j)], -j))
            rows.append(sorted(forced | set(rest[: budget - len(forced)])))
        result.append(rows)
    return result


def sparse_attention(query, key, value, selected, block_size: int, scale: float, softcap: float,
                     sliding_window: int, instruction_tokens: int) -> torch.Tensor:
    """Full attention in float64 with an explicit (B, L, L) mask built from the selected lists."""
    b, hq, seq, d = query.shape
    hkv = key.shape[1]
    tail0 = seq - min(instruction_tokens, seq)
    mask = torch.zeros((b, seq, seq), dtype=torch.bool)
    for i in range(b):
        for t in range(seq):
            keys = range(seq) if t >= tail0 else selected[i][t // block_size]
            for j in keys:
                if j <= t and (sliding_window == 0 or j > t - sliding_window):
                    mask[i, t, j] = True
    k = key.double().repeat_interleave(hq // hkv, 1)
    v = value.double().repeat_interleave(hq // hkv, 1)
    logits = query.double() @ k.transpose(-1, -2) * scale
    if softcap > 0:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    p = torch.softmax(logits, -1).nan_to_num(0.0)
    return p @ v


def decode(query, key, value, prompt_boundaries: list[list[int]], prompt_len: int, tail_chunk: int, budget: int,
           local_tokens: int, global_tokens: int, sliding_window: int, scale: float, softcap: float):
    """Sparse decode of the newest position from the written rules, in float64: (selected lists per sample,
    output (B, Hq, 1, D))."""
    b, hq, _, d = query.shape
    hkv, seq = key.shape[1], key.shape[2]
    t = seq - 1
    out = torch.zeros((b, hq, 1, d), dtype=torch.float64)
    selected = []
    for i in range(b):
        cuts = list(prompt_boundaries[i]) + list(range(prompt_len + tail_chunk, seq, tail_chunk))
        cuts += [seq] if seq > prompt_len else []
        q = query[i, :, 0].double().mean(0)
        kbar = key[i].double().mean(0)

        def score(j):
            c = max(c for c in range(len(cuts) - 1) if cuts[c] <= j < cuts[c + 1])
            lo_c, hi_c = cuts[c], cuts[c + 1]
            return float(q @ (kbar[lo_c:hi_c].sum(0) / math.sqrt(hi_c - lo_c)))

        lo = max(0, t - sliding_window + 1) if sliding_window > 0 else 0
        eligible = list(range(lo, seq))
        if len(eligible) <= budget:
            keys = eligible
        else:
            forced = set(range(lo, lo + global_tokens)) | set(range(seq - local_tokens, seq))
            rest = sorted((j for j in eligible if j not in forced), key=lambda j: (-score(j), -j))
            keys = sorted(forced | set(rest[: budget - len(forced)]))
        selected.append(keys)
        for h in range(hq):
            kv = h // (hq // hkv)
            ks, vs = key[i, kv, keys].double(), value[i, kv, keys].double()
            x = ks @ query[i, h, 0].double() * scale
            if softcap > 0:
                x = torch.tanh(x / softcap) * softcap
            out[i, h, 0] = torch.softmax(x, 0) @ vs
    return selected, out
