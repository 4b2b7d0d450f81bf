"""The DHSA ops as torch.library custom ops (namespace `dhsa`).

The eager implementation of each op IS the reference (ops/reference.py); the fake implementations
give shapes for torch.export. Native kernels register themselves per device on top of these
(see dhsa_export/native.py), so models call `torch.ops.dhsa.*` and never a particular backend.
"""

from __future__ import annotations

import torch

from . import reference
from .spec import ALL_OPS, CHUNK_BOUNDARIES, DECODE_ATTENTION, SELECT_ATTENTION, SELECT_KEYS, SPARSE_ATTENTION

_LIB = torch.library.Library("dhsa", "DEF")
for _spec in ALL_OPS:
    _LIB.define(_spec.torch_name + _spec.torch_schema())

_LIB.impl(CHUNK_BOUNDARIES.torch_name, reference.chunk_boundaries, "CompositeExplicitAutograd")
_LIB.impl(SELECT_KEYS.torch_name, reference.select_keys, "CompositeExplicitAutograd")
_LIB.impl(SPARSE_ATTENTION.torch_name, reference.sparse_attention, "CompositeExplicitAutograd")
_LIB.impl(SELECT_ATTENTION.torch_name, reference.select_attention, "CompositeExplicitAutograd")
_LIB.impl(DECODE_ATTENTION.torch_name, reference.decode_attention, "CompositeExplicitAutograd")


@torch.library.register_fake(CHUNK_BOUNDARIES.qualname)
def _chunk_boundaries_fake(key, scores, method, block_size, chunk_beta, chunk_size, window, nms_radius,
                           threshold, instruction_tokens):
    n = reference.num_chunks(key.shape[2], block_size, chunk_beta)
    return key.new_empty((key.shape[0], n + 1), dtype=torch.int32)


@torch.library.register_fake(SELECT_KEYS.qualname)
def _select_keys_fake(query, key, boundaries, block_size, budget, local_tokens, global_tokens,
                      sliding_window, instruction_tokens):
    nqb = reference.num_query_blocks(query.shape[2], block_size)
    b = query.shape[0]
    return (query.new_empty((b, nqb, budget), dtype=torch.int32),
            query.new_empty((b, nqb), dtype=torch.int32))


@torch.library.register_fake(SPARSE_ATTENTION.qualname)
def _sparse_attention_fake(query, key, value, indices, counts, block_size, scale, softcap,
                           sliding_window, instruction_tokens):
    return torch.empty_like(query)


@torch.library.register_fake(SELECT_ATTENTION.qualname)
def _select_attention_fake(query, key, value, boundaries, block_size, budget, local_tokens, global_tokens, scale,
                           softcap, sliding_window, instruction_tokens):
    return torch.empty_like(query)


@torch.library.register_fake(DECODE_ATTENTION.qualname)
def _decode_attention_fake(query, key, value, boundaries, chunk_sums, budget, local_tokens, global_tokens, scale,
                           softcap, sliding_window):
    return torch.empty_like(query)


chunk_boundaries = torch.ops.dhsa.chunk_boundaries
select_keys = torch.ops.dhsa.select_keys
sparse_attention = torch.ops.dhsa.sparse_attention
select_attention = torch.ops.dhsa.select_attention
decode_attention = torch.ops.dhsa.decode_attention
