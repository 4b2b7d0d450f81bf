"""DHSA ops: spec (names, attributes), reference (eager PyTorch), library (torch.ops.dhsa.*)."""

from ..torch_cpu import resolve_vml_dispatch
from . import library, reference, spec
from .library import chunk_boundaries, decode_attention, select_attention, select_keys, sparse_attention
from .reference import OpInputError

resolve_vml_dispatch()  # before the reference or a model computes anything on the CPU

__all__ = ["library", "reference", "spec", "chunk_boundaries", "select_keys", "sparse_attention", "select_attention",
           "decode_attention", "OpInputError"]
