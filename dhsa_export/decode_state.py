"""The chunk state sparse decode keeps beside the KV cache (docs/ops.md, "Sparse decode").

Per DHSA layer, two tensors that grow by one entry per cached step, so that an exported graph updates
them with fixed-rank tensor ops and no data-dependent shapes:

- `boundaries` (B, M + 1) int32: chunk boundaries over the cache [0, K). The prompt's row (from
  DhsaChunkBoundaries), then one entry per generated token. The last chunk is the open one.
- `chunk_sums` (B, M, D) float32: per chunk, the sum of its head-averaged keys.

After the prompt's prefill the row ends with an empty open chunk [L0, L0), so no generated token ever
joins a prompt chunk. A step that adds the key at position K - 1 either extends the open chunk (while it
holds fewer than `chunk` tokens) or closes it and opens a new one at K - 1. Extending leaves an empty
chunk behind (its boundary repeated, its sum 0): empty chunks carry no key, so the selection is that of
fixed chunks of `chunk` tokens from L0 on, as the rule states, at the price of one sum row per generated
token.
"""

from __future__ import annotations

import torch


def prompt_state(key: torch.Tensor, boundaries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """State after the prefill of a prompt: key (B, Hkv, L0, D) the prompt's keys, boundaries (B, N + 1)
    its DhsaChunkBoundaries row. Returns (boundaries (B, N + 2), chunk_sums (B, N + 1, D))."""
    b, _, seq, d = key.shape
    kbar = key.float().mean(1)  # (B, L0, D)
    # The chunk of position p: how many of boundaries[1:] are <= p (repeated entries count, so p lands in
    # the last of equal starts, the non-empty chunk), by a count per position and a running sum.
    cuts = boundaries[:, 1:].to(torch.int64)
    marks = torch.zeros(b, seq + 1, dtype=torch.int64, device=key.device).scatter_add(1, cuts, torch.ones_like(cuts))
    chunk = marks.cumsum(1)[:, :seq]  # (B, L0)
    n = boundaries.shape[1] - 1
    sums = torch.zeros(b, n + 1, d, dtype=torch.float32, device=key.device)
    sums = sums.scatter_add(1, chunk[..., None].expand(-1, -1, d), kbar)  # the open chunk (row n) stays 0
    end = boundaries[:, -1:]
    return torch.cat([boundaries.to(torch.int32), end.to(torch.int32)], 1), sums


def step_state(boundaries: torch.Tensor, chunk_sums: torch.Tensor, new_key: torch.Tensor,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """State after appending one key: boundaries (B, M + 1) and chunk_sums (B, M, D) over a cache of K - 1
    keys, new_key (B, Hkv, 1, D) at position K - 1. Returns (boundaries (B, M + 2), chunk_sums (B, M + 1, D))."""
    start, end = boundaries[:, -2:-1], boundaries[:, -1:]  # the open chunk [start, end), (B, 1)
    extend = (end + 1 - start) <= chunk  # (B, 1): the new key still fits the open chunk
    left = torch.where(extend, start, end)
    row = torch.cat([boundaries[:, :-1], left, end + 1], 1)
    kbar = new_key.float().mean(1)  # (B, 1, D)
    open_sum = chunk_sums[:, -1:]
    grow = extend[..., None]
    sums = torch.cat([chunk_sums[:, :-1], torch.where(grow, torch.zeros_like(open_sum), open_sum),
                      torch.where(grow, open_sum + kbar, kbar)], 1)
    return row, sums
