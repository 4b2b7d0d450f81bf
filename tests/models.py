"""Shared tiny-model fixtures (random init, no tokenizer)."""

from __future__ import annotations

import functools

import torch

from dhsa_export import loading, recipes


@functools.lru_cache(maxsize=None)
def tiny(name: str):
    """(recipe, model) for tiny-gemma2 / tiny-gemma3; cached: build once per test session."""
    recipe = recipes.load(name)
    return recipe, loading.load(recipe).model


def token_ids(batch: int, seq: int, seed: int, vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
