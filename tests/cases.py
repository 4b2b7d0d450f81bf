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
