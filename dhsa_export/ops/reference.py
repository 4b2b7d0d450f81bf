"""Eager PyTorch reference of the DHSA ops: the definition every runtime is checked against.

Written for clarity first (token-level selection, explicit masks), vectorised so that 8K-token CPU
runs stay practical, and chunked over query blocks so memory stays bounded at long L.
docs/ops.md states the same semantics in prose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")

# Elements per temporary tensor before the reference processes query blocks in groups.
_GROUP_ELEMS = 1 << 26


class OpInputError(ValueError):
    """An op was given inputs or attributes that break its contract (docs/ops.md)."""


def _require(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise OpInputError(f"{op}: {msg}")


def num_chunks(seq_len: int, block_size: int, chunk_beta: int):
    """N, the capacity of the boundary output (works on ints and SymInts)."""
    return chunk_beta * ((seq_len + block_size - 1) // block_size)


def num_query_blocks(seq_len: int, block_size: int):
    return (seq_len + block_size - 1) // block_size


def dense_tail_start(seq_len: int, instruction_tokens: int) -> int:
    """First query position of the dense instruction tail."""
    return seq_len - min(instruction_tokens, seq_len)


# --------------------------------------------------------------------------------------------
# DhsaChunkBoundaries
# --------------------------------------------------------------------------------------------


def similarity_scores(key: torch.Tensor, window: int) -> torch.Tensor:
    """Training-free cut score after position p: 1 - cos(sum K[p-w+1..p], sum K[p+1..p+w]).

    Keys of all kv heads are concatenated (C = Hkv * D). Returns (B, L) float32 with -inf where a
    full window does not fit on either side (p < w - 1 or p > L - w - 1).
    """
    b, h, seq, d = key.shape
    out = torch.full((b, seq), NEG_INF, dtype=torch.float32, device=key.device)
    n_valid = seq - 2 * window + 1
    if n_valid <= 0:
        return out
    x = key.float().permute(0, 2, 1, 3).reshape(b, seq, h * d)
    sums = x.unfold(1, window, 1).sum(-1)  # (B, L - w + 1, C): sums[s] = sum x[s .. s+w-1]
    left = sums[:, :n_valid]  # windows ending at p = w-1 ...
    right = sums[:, window : window + n_valid]  # windows starting at p + 1
    dot = (left * right).sum(-1)
    norm = left.norm(dim=-1) * right.norm(dim=-1)
    cos = dot / norm.clamp_min(1e-12)
    out[:, window - 1 : window - 1 + n_valid] = 1.0 - cos
    return out


def _select_cuts(score: torch.Tensor, *, max_cuts: int, nms_radius: int, threshold: float,
                 forced: int | None) -> list[int]:
    """Cut positions for one sample: local maxima above threshold, top max_cuts by score."""
    seq = score.shape[0]
    s = torch.nan_to_num(score, nan=NEG_INF)
    cand = torch.isfinite(s) & (s > threshold)
    if nms_radius > 0:
        padded = F.pad(s[None, None], (nms_radius, nms_radius), value=NEG_INF)[0, 0]
        # left[p] = max s[p-r .. p-1], right[p] = max s[p+1 .. p+r]
        left = padded.unfold(0, nms_radius, 1)[:seq].amax(-1)
        right = padded[nms_radius + 1 :].unfold(0, nms_radius, 1)[:seq].amax(-1)
        cand &= (s > left) & (s >= right)
    cuts: list[int] = []
    if forced is not None:
        cuts.append(forced)
        cand &= torch.arange(seq, device=s.device) < forced - nms_radius
    take = max_cuts - len(cuts)
    if take > 0:
        order = torch.sort(torch.where(cand, s, NEG_INF), descending=True, stable=True).indices
        n = min(take, int(cand.sum()))
        cuts += order[:n].tolist()
    return sorted(cuts)


def chunk_boundaries(key: torch.Tensor, scores: torch.Tensor | None, method: str, block_size: int,
                     chunk_beta: int, chunk_size: int, window: int, nms_radius: int, threshold: float,
                     instruction_tokens: int) -> torch.Tensor:
    op = "DhsaChunkBoundaries"
    _require(key.dim() == 4, op, f"key must be (B, Hkv, L, D), got rank {key.dim()}")
    b, _, seq, _ = key.shape
    _require(seq >= 1, op, "key has L = 0; the sequence must hold at least one token")
    _require(method in ("similarity", "scores", "fixed"), op,
             f"method must be 'similarity', 'scores' or 'fixed', got {method!r}")
    _require(block_size >= 1, op, f"block_size must be >= 1, got {block_size}")
    _require(chunk_beta >= 1, op, f"chunk_beta must be >= 1, got {chunk_beta}")
    _require(window >= 1, op, f"window must be >= 1, got {window}")
    _require(nms_radius >= 0, op, f"nms_radius must be >= 0, got {nms_radius}")
    _require(instruction_tokens >= 0, op, f"instruction_tokens must be >= 0, got {instruction_tokens}")
    _require(chunk_size >= 1, op, f"chunk_size must be >= 1, got {chunk_size}")
    n_chunks = num_chunks(seq, block_size, chunk_beta)
    out = torch.full((b, n_chunks + 1), seq, dtype=torch.int32, device=key.device)
    out[:, 0] = 0

    if method == "fixed":
        _require(chunk_size * chunk_beta >= block_size, op,
                 f"chunk_size * chunk_beta must be >= block_size ({chunk_size} * {chunk_beta} < {block_size})")
        n_cuts = (seq - 1) // chunk_size
        out[:, 1 : 1 + n_cuts] = torch.arange(1, n_cuts + 1, dtype=torch.int32, device=key.device) * chunk_size
        return out

    if method == "scores":
        _require(scores is not None, op, "method 'scores' needs the scores input")
        _require(tuple(scores.shape) == (b, seq), op,
                 f"scores must be (B, L) = ({b}, {seq}), got {tuple(scores.shape)}")
        _require(scores.dtype == torch.float32, op, f"scores must be float32, got {scores.dtype}")
        cut_scores = torch.full((b, seq), NEG_INF, dtype=torch.float32, device=key.device)
        lo, hi = window - 1, seq - window  # same valid range as the similarity score
        if hi > lo:
            cut_scores[:, lo:hi] = scores[:, lo:hi]
    else:
        cut_scores = similarity_scores(key, window)

    tail = min(instruction_tokens, seq)
    forced = seq - tail - 1 if 0 < tail < seq and n_chunks >= 2 else None
    for i in range(b):
        cuts = _select_cuts(cut_scores[i], max_cuts=n_chunks - 1, nms_radius=nms_radius,
                            threshold=threshold, forced=forced)
        if cuts:
            out[i, 1 : 1 + len(cuts)] = torch.tensor(cuts, dtype=torch.int32, device=key.device) + 1
    return out


# --------------------------------------------------------------------------------------------
# DhsaSelectKeys
# --------------------------------------------------------------------------------------------


def check_boundaries(boundaries: torch.Tensor, batch: int, seq: int, op: str) -> None:
    _require(boundaries.dim() == 2 and boundaries.shape[0] == batch and boundaries.shape[1] >= 2, op,
             f"boundaries must be (B={batch}, N + 1 >= 2), got {tuple(boundaries.shape)}")
    _require(boundaries.dtype == torch.int32, op, f"boundaries must be int32, got {boundaries.dtype}")
    bd = boundaries.long()
    _require(bool((bd[:, 0] == 0).all()) and bool((bd[:, -1] == seq).all()), op,
             f"boundaries must start at 0 and end at L = {seq}")
    _require(bool((bd[:, 1:] >= bd[:, :-1]).all()), op, "boundaries must be non-decreasing")


def block_ranges(seq: int, block_size: int, sliding_window: int, instruction_tokens: int, device):
    """Per query block i: sparse query range [s_i, e_i) and eligible key range [lo_i, hi_i)."""
    nqb = num_query_blocks(seq, block_size)
    tail0 = dense_tail_start(seq, instruction_tokens)
    s = torch.arange(nqb, device=device) * block_size
    e = torch.clamp(s + block_size, max=tail0)
    lo = torch.clamp(s - sliding_window + 1, min=0) if sliding_window > 0 else torch.zeros_like(s)
    hi = torch.where(e > s, e, lo)  # a block wholly inside the dense tail selects nothing
    return s, e, lo, hi


def chunk_representations(key: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """k_c = sum of head-averaged keys of chunk c / sqrt(|c|); (B, N, D) float32, 0 for empty chunks."""
    kbar = key.float().mean(1)  # (B, L, D)
    pref = F.pad(kbar.double().cumsum(1), (0, 0, 1, 0))  # (B, L + 1, D)
    bd = boundaries.long()
    d = kbar.shape[-1]
    start = torch.gather(pref, 1, bd[:, :-1, None].expand(-1, -1, d))
    end = torch.gather(pref, 1, bd[:, 1:, None].expand(-1, -1, d))
    length = (bd[:, 1:] - bd[:, :-1]).double().clamp_min(1)[..., None]
    return ((end - start) / length.sqrt()).float()


def _chunk_of(boundaries: torch.Tensor, seq: int) -> torch.Tensor:
    """(B, L): the chunk each key position belongs to."""
    pos = torch.arange(seq, device=boundaries.device).expand(boundaries.shape[0], seq).contiguous()
    return torch.searchsorted(boundaries.long(), pos, right=True) - 1


def query_block_representations(query: torch.Tensor, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """q_i = mean of head-averaged queries over the block's sparse queries; (B, nQB, D) float32."""
    qbar = query.float().mean(1)
    pref = F.pad(qbar.double().cumsum(1), (0, 0, 1, 0))
    n = (e - s).clamp_min(1).double()
    e_ = torch.maximum(e, s)
    return ((pref[:, e_] - pref[:, s]) / n[None, :, None]).float()


def selection_scores(query: torch.Tensor, key: torch.Tensor, boundaries: torch.Tensor, block_size: int,
                     instruction_tokens: int) -> torch.Tensor:
    """S[b, i, c] = q_i . k_c, (B, nQB, N) float32: the score every key of chunk c gets in block i."""
    s, e, _, _ = block_ranges(query.shape[2], block_size, 0, instruction_tokens, query.device)
    return query_block_representations(query, s, e) @ chunk_representations(key, boundaries).transpose(1, 2)


def select_keys(query: torch.Tensor, key: torch.Tensor, boundaries: torch.Tensor, block_size: int,
                budget: int, local_tokens: int, global_tokens: int, sliding_window: int,
                instruction_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    op = "DhsaSelectKeys"
    _require(query.dim() == 4 and key.dim() == 4, op, "query and key must be rank 4 (B, H, L, D)")
    b, hq, seq, d = query.shape
    _require(key.shape[0] == b and key.shape[2] == seq and key.shape[3] == d, op,
             f"key {tuple(key.shape)} does not match query {tuple(query.shape)} in B, L or D")
    _require(key.shape[1] >= 1 and hq % key.shape[1] == 0, op,
             f"Hq ({hq}) must be a multiple of Hkv ({key.shape[1]})")
    _require(query.dtype == key.dtype, op, f"query ({query.dtype}) and key ({key.dtype}) dtypes differ")
    _require(block_size >= 1, op, f"block_size must be >= 1, got {block_size}")
    _require(budget >= 1, op, f"budget must be >= 1, got {budget}")
    _require(local_tokens >= 0 and global_tokens >= 0, op, "local_tokens and global_tokens must be >= 0")
    _require(budget >= local_tokens + global_tokens, op,
             f"budget ({budget}) must be >= local_tokens + global_tokens ({local_tokens} + {global_tokens})")
    _require(sliding_window >= 0, op, f"sliding_window must be >= 0, got {sliding_window}")
    _require(instruction_tokens >= 0, op, f"instruction_tokens must be >= 0, got {instruction_tokens}")
    check_boundaries(boundaries, b, seq, op)

    dev = query.device
    nqb = num_query_blocks(seq, block_size)
    _, _, lo, hi = block_ranges(seq, block_size, sliding_window, instruction_tokens, dev)
    chunk_scores = selection_scores(query, key, boundaries, block_size, instruction_tokens)
    chunk_of = _chunk_of(boundaries, seq)

    indices = torch.full((b, nqb, budget), -1, dtype=torch.int32, device=dev)
    counts = torch.zeros((b, nqb), dtype=torch.int32, device=dev)
    group = max(1, _GROUP_ELEMS // max(1, b * seq))
    for g0 in range(0, nqb, group):
        g1 = min(nqb, g0 + group)
        tok = torch.gather(chunk_scores[:, g0:g1], 2, chunk_of[:, None, :].expand(-1, g1 - g0, -1))
        indices[:, g0:g1], counts[:, g0:g1] = _pick(tok, lo[g0:g1], hi[g0:g1], budget, local_tokens, global_tokens)
    return indices, counts


def _pick(tok: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, budget: int, local_tokens: int,
          global_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The budgeted choice for G query blocks from each key's score tok (B, G, L) and each block's eligible
    range [lo, hi) (G,): (indices (B, G, budget) ascending, -1-padded; counts (G,) broadcast to (B, G))."""
    b, g, seq = tok.shape
    dev = tok.device
    pos = torch.arange(seq, device=dev)
    glo, ghi = lo[:, None], hi[:, None]
    eligible = (pos >= glo) & (pos < ghi)  # (G, L)
    forced = eligible & ((pos < glo + global_tokens) | (pos >= ghi - local_tokens))
    prio = torch.where(forced, float("inf"), torch.where(eligible, tok, NEG_INF))
    # Order: priority descending, ties to the larger key index (stable sort on the flipped axis).
    flip = torch.arange(seq - 1, -1, -1, device=dev)
    order = flip[torch.sort(prio[..., flip], dim=-1, descending=True, stable=True).indices]
    cnt = torch.clamp((hi - lo).clamp_min(0), max=budget)  # (G,)
    keep = torch.arange(budget, device=dev) < cnt[:, None]
    width = min(budget, seq)
    sel = torch.where(keep[:, :width], order[..., :width], seq)  # seq sorts after real indices
    sel = torch.sort(sel, dim=-1).values
    indices = torch.full((b, g, budget), -1, dtype=torch.int32, device=dev)
    indices[..., :width] = torch.where(sel == seq, -1, sel).to(torch.int32)
    return indices, cnt.to(torch.int32).expand(b, g)


# --------------------------------------------------------------------------------------------
# DhsaSparseAttention
# --------------------------------------------------------------------------------------------


def _logits(q: torch.Tensor, k: torch.Tensor, scale: float, softcap: float) -> torch.Tensor:
    x = q @ k.transpose(-1, -2) * scale
    if softcap > 0:
        x = torch.tanh(x / softcap) * softcap
    return x


def _masked_softmax_av(logits: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(~allowed, NEG_INF)
    any_key = allowed.any(-1, keepdim=True)
    p = torch.softmax(logits.masked_fill(~any_key, 0.0), dim=-1) * any_key  # rows with no key -> 0
    return p @ v


def sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, indices: torch.Tensor,
                     counts: torch.Tensor, block_size: int, scale: float, softcap: float,
                     sliding_window: int, instruction_tokens: int) -> torch.Tensor:
    op = "DhsaSparseAttention"
    _require(query.dim() == 4 and key.dim() == 4 and value.dim() == 4, op,
             "query, key and value must be rank 4 (B, H, L, D)")
    b, hq, seq, d = query.shape
    hkv = key.shape[1]
    _require(tuple(key.shape) == (b, hkv, seq, d) and tuple(value.shape) == (b, hkv, seq, d), op,
             f"key {tuple(key.shape)} and value {tuple(value.shape)} must be (B, Hkv, L, D) matching "
             f"query {tuple(query.shape)}")
    _require(hkv >= 1 and hq % hkv == 0, op, f"Hq ({hq}) must be a multiple of Hkv ({hkv})")
    _require(query.dtype == key.dtype == value.dtype, op, "query, key and value must share one dtype")
    _require(block_size >= 1, op, f"block_size must be >= 1, got {block_size}")
    _require(softcap >= 0, op, f"softcap must be >= 0, got {softcap}")
    _require(sliding_window >= 0, op, f"sliding_window must be >= 0, got {sliding_window}")
    _require(instruction_tokens >= 0, op, f"instruction_tokens must be >= 0, got {instruction_tokens}")
    nqb = num_query_blocks(seq, block_size)
    _require(indices.dim() == 3 and tuple(indices.shape[:2]) == (b, nqb) and indices.shape[2] >= 1, op,
             f"indices must be (B, ceil(L/b), Nb) = ({b}, {nqb}, Nb), got {tuple(indices.shape)}")
    _require(tuple(counts.shape) == (b, nqb), op, f"counts must be ({b}, {nqb}), got {tuple(counts.shape)}")
    _require(indices.dtype == torch.int32 and counts.dtype == torch.int32, op, "indices and counts must be int32")
    nb = indices.shape[2]
    _require(bool(((counts >= 0) & (counts <= nb)).all()), op, f"counts must lie in [0, Nb = {nb}]")
    live = torch.arange(nb, device=indices.device) < counts[..., None].long()
    _require(bool(((indices >= 0) & (indices < seq) | ~live).all()), op,
             f"indices within counts must lie in [0, L = {seq})")

    g = hq // hkv
    out = torch.zeros((b, hq, seq, d), dtype=torch.float32, device=query.device)
    tail0 = dense_tail_start(seq, instruction_tokens)
    qf = query.float().view(b, hkv, g, seq, d)
    kf, vf = key.float(), value.float()
    pos = torch.arange(seq, device=query.device)

    # Sparse part: query block i attends to its selected keys.
    if tail0 > 0:
        nqb_sparse = num_query_blocks(tail0, block_size)
        padded = F.pad(qf, (0, 0, 0, nqb * block_size - seq)).view(b, hkv, g, nqb, block_size, d)
        per_block = b * hq * block_size * nb
        group = max(1, _GROUP_ELEMS // max(1, per_block))
        for g0 in range(0, nqb_sparse, group):
            g1 = min(nqb_sparse, g0 + group)
            idx = indices[:, g0:g1].long()  # (B, G, Nb)
            ok = live[:, g0:g1]
            flat = torch.where(ok, idx, 0).reshape(b, 1, -1, 1).expand(-1, hkv, -1, d)
            ks = torch.gather(kf, 2, flat).view(b, hkv, g1 - g0, nb, d)
            vs = torch.gather(vf, 2, flat).view(b, hkv, g1 - g0, nb, d)
            q = padded[:, :, :, g0:g1]  # (B, Hkv, g, G, b, D)
            logits = _logits(q, ks[:, :, None], scale, softcap)  # (B, Hkv, g, G, b, Nb)
            t = (torch.arange(g0, g1, device=query.device)[:, None] * block_size
                 + torch.arange(block_size, device=query.device))  # (G, b)
            j = idx[:, :, None, :]  # (B, G, 1, Nb)
            allowed = ok[:, :, None, :] & (j <= t[None, :, :, None]) & (t[None, :, :, None] < tail0)
            if sliding_window > 0:
                allowed &= j > t[None, :, :, None] - sliding_window
            o = _masked_softmax_av(logits, allowed[:, None, None], vs[:, :, None])
            o = o.reshape(b, hkv, g, (g1 - g0) * block_size, d)
            t0, t1 = g0 * block_size, min(g1 * block_size, tail0)
            out.view(b, hkv, g, seq, d)[:, :, :, t0:t1] = o[:, :, :, : t1 - t0]

    # Dense instruction tail.
    if tail0 < seq:
        tq = pos[tail0:, None]
        allowed = pos[None, :] <= tq
        if sliding_window > 0:
            allowed &= pos[None, :] > tq - sliding_window
        logits = _logits(qf[:, :, :, tail0:], kf[:, :, None], scale, softcap)
        o = _masked_softmax_av(logits, allowed, vf[:, :, None])
        out.view(b, hkv, g, seq, d)[:, :, :, tail0:] = o
    return out.to(query.dtype)


# --------------------------------------------------------------------------------------------
# Sparse decode: one query against the cache (docs/ops.md, "Sparse decode")
# --------------------------------------------------------------------------------------------


def decode_chunk_size(block_size: int, chunk_beta: int) -> int:
    """Length of the chunks generated tokens form: the prompt's average chunk length at full chunk
    budget (b / beta), so generated text is summarised as finely as the prompt."""
    return max(1, block_size // chunk_beta)


def decode_boundaries(prompt_boundaries: torch.Tensor, prompt_len: int, cache_len: int,
                      tail_chunk: int) -> torch.Tensor:
    """The cache's chunk boundaries: the prompt's (B, N + 1) row over [0, prompt_len), then fixed chunks of
    `tail_chunk` tokens from prompt_len on, the last one open (ending at cache_len). (B, N + 1 + T) int32."""
    b = prompt_boundaries.shape[0]
    dev = prompt_boundaries.device
    cuts = torch.arange(prompt_len + tail_chunk, max(cache_len, prompt_len + tail_chunk), tail_chunk, device=dev)
    tail = torch.cat([cuts, torch.tensor([cache_len], device=dev)]) if cache_len > prompt_len else cuts
    return torch.cat([prompt_boundaries.to(torch.int32), tail.to(torch.int32).expand(b, -1)], dim=1)


def decode_chunk_sums(key: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """The chunk state of a cache: per chunk, the sum of its head-averaged keys; (B, M, D) float32 (0 for an
    empty chunk). A runtime keeps it beside the cache, adding each new key to the open chunk."""
    kbar = key.float().mean(1)
    pref = F.pad(kbar.double().cumsum(1), (0, 0, 1, 0))
    bd = boundaries.long()
    d = kbar.shape[-1]
    start = torch.gather(pref, 1, bd[:, :-1, None].expand(-1, -1, d))
    end = torch.gather(pref, 1, bd[:, 1:, None].expand(-1, -1, d))
    return (end - start).float()


def decode_select_keys(query: torch.Tensor, chunk_sums: torch.Tensor, boundaries: torch.Tensor, cache_len: int,
                       budget: int, local_tokens: int, global_tokens: int,
                       sliding_window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection for the newest position t = cache_len - 1 (query (B, Hq, 1, D), chunk_sums (B, M, D), boundaries
    (B, M + 1) over [0, cache_len)): the prefill rule for a query block made of that one query, chunks
    represented by sum / sqrt(|chunk|). Returns indices (B, budget) ascending, -1-padded, and counts (B,)."""
    t = cache_len - 1
    lo = max(0, t - sliding_window + 1) if sliding_window > 0 else 0
    length = (boundaries[:, 1:] - boundaries[:, :-1]).float().clamp_min(1)[..., None]
    reps = chunk_sums.float() / length.sqrt()  # (B, M, D)
    scores = (reps @ query.float().mean(1)[:, 0, :, None])[..., 0]  # (B, M)
    tok = torch.gather(scores, 1, _chunk_of(boundaries, cache_len))[:, None]  # (B, 1, K)
    dev = query.device
    indices, counts = _pick(tok, torch.tensor([lo], device=dev), torch.tensor([cache_len], device=dev), budget,
                            local_tokens, global_tokens)
    return indices[:, 0], counts[:, 0]


def decode_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, indices: torch.Tensor,
                            counts: torch.Tensor, scale: float, softcap: float, sliding_window: int) -> torch.Tensor:
    """Attention of the newest position's queries (B, Hq, 1, D) over the selected cache keys (indices
    (B, Nb), counts (B,)); visibility, soft-cap and GQA as in DhsaSparseAttention. (B, Hq, 1, D)."""
    b, hq, _, d = query.shape
    hkv, seq = key.shape[1], key.shape[2]
    nb = indices.shape[1]
    t = seq - 1
    idx = indices.long()
    allowed = (torch.arange(nb, device=query.device) < counts[:, None].long()) & (idx >= 0) & (idx <= t)
    if sliding_window > 0:
        allowed &= idx > t - sliding_window
    take = idx.clamp(0, seq - 1)[:, None, :, None].expand(-1, hkv, -1, d)
    ks, vs = torch.gather(key.float(), 2, take), torch.gather(value.float(), 2, take)  # (B, Hkv, Nb, D)
    q = query.float().view(b, hkv, hq // hkv, 1, d)
    logits = _logits(q, ks[:, :, None], scale, softcap)  # (B, Hkv, g, 1, Nb)
    out = _masked_softmax_av(logits, allowed[:, None, None, None, :], vs[:, :, None])
    return out.reshape(b, hq, 1, d).to(query.dtype)


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, boundaries: torch.Tensor,
                     chunk_sums: torch.Tensor, budget: int, local_tokens: int, global_tokens: int, scale: float,
                     softcap: float, sliding_window: int) -> torch.Tensor:
    """DhsaDecodeAttention: decode_select_keys then decode_sparse_attention for one cached step."""
    op = "DhsaDecodeAttention"
    _require(query.dim() == 4 and key.dim() == 4 and value.dim() == 4, op,
             "query, key and value must be rank 4 (B, H, L, D)")
    b, hq, lq, d = query.shape
    _require(lq == 1, op, f"query must hold one position (B, Hq, 1, D), got {tuple(query.shape)}")
    hkv, seq = key.shape[1], key.shape[2]
    _require(tuple(key.shape) == tuple(value.shape), op, f"key {tuple(key.shape)} and value {tuple(value.shape)} differ")
    _require(key.shape[0] == b and key.shape[3] == d, op, f"key {tuple(key.shape)} does not match query "
                                                          f"{tuple(query.shape)} in B or D")
    _require(hkv >= 1 and hq % hkv == 0, op, f"Hq ({hq}) must be a multiple of Hkv ({hkv})")
    _require(seq >= 1, op, "key holds no cached position (K = 0)")
    _require(query.dtype == key.dtype == value.dtype, op, "query, key and value must share one dtype")
    _require(budget >= 1 and budget >= local_tokens + global_tokens, op,
             f"budget ({budget}) must be >= max(1, local_tokens + global_tokens)")
    _require(softcap >= 0, op, f"softcap must be >= 0, got {softcap}")
    _require(boundaries.dim() == 2 and boundaries.shape[0] == b and boundaries.shape[1] >= 2, op,
             f"boundaries must be (B, M + 1 >= 2), got {tuple(boundaries.shape)}")
    m = boundaries.shape[1] - 1
    _require(tuple(chunk_sums.shape) == (b, m, d) and chunk_sums.dtype == torch.float32, op,
             f"chunk_sums must be float32 ({b}, {m}, {d}), got {chunk_sums.dtype} {tuple(chunk_sums.shape)}")
    check_boundaries(boundaries, b, seq, op)
    indices, counts = decode_select_keys(query, chunk_sums, boundaries, seq, budget, local_tokens, global_tokens,
                                         sliding_window)
    return decode_sparse_attention(query, key, value, indices, counts, scale, softcap, sliding_window)


# --------------------------------------------------------------------------------------------
# Dense attention with the same conventions (the baseline DHSA must reproduce at full budget)
# --------------------------------------------------------------------------------------------


def dense_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                    softcap: float, sliding_window: int) -> torch.Tensor:
    b, hq, seq, d = query.shape
    hkv = key.shape[1]
    pos = torch.arange(seq, device=query.device)
    allowed = pos[None, :] <= pos[:, None]
    if sliding_window > 0:
        allowed &= pos[None, :] > pos[:, None] - sliding_window
    qf = query.float().view(b, hkv, hq // hkv, seq, d)
    logits = _logits(qf, key.float()[:, :, None], scale, softcap)
    o = _masked_softmax_av(logits, allowed, value.float()[:, :, None])
    return o.reshape(b, hq, seq, d).to(query.dtype)


# --------------------------------------------------------------------------------------------
# DhsaSelectAttention
# --------------------------------------------------------------------------------------------


def select_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, boundaries: torch.Tensor,
                     block_size: int, budget: int, local_tokens: int, global_tokens: int, scale: float,
                     softcap: float, sliding_window: int, instruction_tokens: int) -> torch.Tensor:
    """select_keys then sparse_attention (errors name DhsaSelectAttention)."""
    try:
        indices, counts = select_keys(query, key, boundaries, block_size, budget, local_tokens, global_tokens,
                                      sliding_window, instruction_tokens)
        return sparse_attention(query, key, value, indices, counts, block_size, scale, softcap, sliding_window,
                                instruction_tokens)
    except OpInputError as err:
        raise OpInputError(_renamed(str(err))) from None


def _renamed(message: str) -> str:
    for part in ("DhsaSelectKeys: ", "DhsaSparseAttention: "):
        if message.startswith(part):
            return "DhsaSelectAttention: " + message[len(part):]
    return message


def attended_pairs(indices: torch.Tensor, counts: torch.Tensor, seq_len: int, block_size: int,
                   sliding_window: int, instruction_tokens: int) -> tuple[int, int]:
    """(attended, visible): the (query, key) pairs DHSA attends to with this selection, and those dense
    attention would (causal, sliding window), summed over the batch. Queries of the dense tail attend
    to every visible key."""
    b, nqb, _ = indices.shape
    t = torch.arange(seq_len)
    lo = (t - sliding_window + 1).clamp(min=0) if sliding_window > 0 else torch.zeros_like(t)
    visible_per_query = t - lo + 1
    tail0 = dense_tail_start(seq_len, instruction_tokens)
    # Past each row's count (and the -1 padding): beyond every position, so the rows stay sorted.
    keys = indices.long().cpu().clone()
    keys[torch.arange(keys.shape[2])[None, None] >= counts.long().cpu()[..., None]] = seq_len + 1
    queries = torch.arange(nqb * block_size).view(nqb, block_size)
    sparse = queries < tail0
    q = queries.clamp(max=seq_len - 1).expand(b, nqb, block_size).contiguous()
    seen = torch.searchsorted(keys, q, right=True)  # selected keys <= t
    if sliding_window > 0:
        seen = seen - torch.searchsorted(keys, (q - sliding_window).contiguous(), right=True)
    attended = int(seen[:, sparse].sum()) + b * int(visible_per_query[tail0:].sum())
    return attended, b * int(visible_per_query.sum())
