"""DHSA ops: spec (names, attributes), reference (eager PyTorch), library (torch.ops.dhsa.*)."""

from . import library, reference, spec
from .library import chunk_boundaries, decode_attention, select_attention, select_keys, sparse_attention
from .reference import OpInputError

__all__ = ["library", "reference", "spec", "chunk_boundaries", "select_keys", "sparse_attention", "select_attention",
           "decode_attention", "OpInputError"]
