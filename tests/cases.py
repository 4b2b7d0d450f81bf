"""Random op cases with the odd sizes that break kernels: L not a multiple of b, L < budget, L = 1,
batch > 1, GQA ratios, sliding windows, instruction tails longer than L."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class Case:
    batch: int
    hq: int
    hkv: int
    seq: int
    dim: int
    block_size: int
    budget: int
    local_tokens: int
    global_tokens: int
    sliding_window: int
    instruction_tokens: int
    softcap: float
    chunk_beta: int

    @property
    def scale(self) -> float:
        return self.dim ** -0.5


def random_case(rng: random.Random, max_seq: int = 300, dims=(8, 16, 32), gqa=(1, 2, 4)) -> Case:
    seq = rng.choice([1, 2, 7, 63, 64, 65, rng.randint(1, max_seq), rng.randint(1, max_seq), max_seq])
    block = rng.choice([1, 3, 16, 32, 64])
    local = rng.choice([block, block + rng.randint(0, 40)])
    glob = rng.choice([0, rng.randint(0, 40)])
    budget = local + glob + rng.choice([0, rng.randint(1, 60), rng.randint(1, 400)])
    hkv = rng.choice([1, 2])
    return Case(
        batch=rng.choice([1, 2, 3]), hq=hkv * rng.choice(gqa), hkv=hkv, seq=seq, dim=rng.choice(dims),
        block_size=block, budget=budget, local_tokens=local, global_tokens=glob,
        sliding_window=rng.choice([0, 0, rng.randint(1, 100)]),
        instruction_tokens=rng.choice([0, rng.randint(1, 20), seq + rng.randint(0, 5)]),
        softcap=rng.choice([0.0, 0.0, 5.0]), chunk_beta=rng.choice([1, 2, 8]),
    )


def tensors(case: Case, gen: torch.Generator, dtype=torch.float32):
    q = torch.randn(case.batch, case.hq, case.seq, case.dim, generator=gen).to(dtype)
    k = torch.randn(case.batch, case.hkv, case.seq, case.dim, generator=gen).to(dtype)
    v = torch.randn(case.batch, case.hkv, case.seq, case.dim, generator=gen).to(dtype)
    return q, k, v


def random_boundaries(rng: random.Random, batch: int, seq: int, n: int, device="cpu") -> torch.Tensor:
    """(B, n + 1) int32 rows: different per sample, with empty chunks and padding with L."""
    rows = []
    for _ in range(batch):
        cuts = sorted(rng.randint(0, seq) for _ in range(rng.randint(0, n - 1)))
        rows.append([0] + cuts + [seq] * (n - len(cuts)))
    return torch.tensor(rows, dtype=torch.int32, device=device)


@dataclass
class DecodeCase:
    """One cached step of sparse decode: a prompt chunked by DhsaChunkBoundaries, then generated keys in
    fixed tail chunks (docs/ops.md "Sparse decode")."""

    batch: int
    hq: int
    hkv: int
    dim: int
    block_size: int
    chunk_beta: int
    prompt_len: int
    cache_len: int
    budget: int
    local_tokens: int
    global_tokens: int
    sliding_window: int
    softcap: float

    @property
    def scale(self) -> float:
        return self.dim ** -0.5

    @property
    def attrs(self) -> dict:
        """DhsaDecodeAttention's attributes, in spec order."""
        return dict(budget=self.budget, local_tokens=self.local_tokens, global_tokens=self.global_tokens,
                    scale=self.scale, softcap=self.softcap, sliding_window=self.sliding_window)


def random_decode_case(rng: random.Random, dims=(8, 16, 32), max_prompt: int = 200) -> DecodeCase:
    """Batch 1-3, GQA 1/2/4, windows, soft-cap, caches shorter than the budget, one generated token or many."""
    hkv = rng.choice([1, 2, 4])
    prompt_len = rng.choice([1, rng.randint(1, max_prompt), rng.randint(1, max_prompt)])
    budget = rng.randint(4, 160)
    local = rng.randint(0, budget // 2)
    return DecodeCase(
        batch=rng.choice([1, 2, 3]), hq=hkv * rng.choice([1, 2, 4]), hkv=hkv, dim=rng.choice(dims),
        block_size=rng.choice([4, 8, 16]), chunk_beta=rng.choice([1, 2, 4]), prompt_len=prompt_len,
        cache_len=prompt_len + rng.choice([1, rng.randint(1, 60)]), budget=budget, local_tokens=local,
        global_tokens=rng.randint(0, budget - local), sliding_window=rng.choice([0, 0, rng.randint(1, 120)]),
        softcap=rng.choice([0.0, 0.0, 20.0]))


def decode_tensors(case: DecodeCase, gen: torch.Generator, dtype=torch.float32):
    """(query, key, value, prompt boundaries, cache boundaries, chunk sums) of the case."""
    from dhsa_export.ops import reference as ref

    q = torch.randn(case.batch, case.hq, 1, case.dim, generator=gen).to(dtype)
    k = torch.randn(case.batch, case.hkv, case.cache_len, case.dim, generator=gen).to(dtype)
    v = torch.randn(case.batch, case.hkv, case.cache_len, case.dim, generator=gen).to(dtype)
    prompt_bd = ref.chunk_boundaries(k[:, :, :case.prompt_len], None, "similarity", case.block_size, case.chunk_beta,
                                     case.block_size, 2, 1, 0.0, 0)
    full = ref.decode_boundaries(prompt_bd, case.prompt_len, case.cache_len,
                                 ref.decode_chunk_size(case.block_size, case.chunk_beta))
    return q, k, v, prompt_bd, full, ref.decode_chunk_sums(k, full)
