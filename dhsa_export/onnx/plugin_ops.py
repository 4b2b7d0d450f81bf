"""Translations of the dhsa torch ops into bare `dhsa` ONNX nodes (the `--ops plugin` flavour).

Every attribute is written explicitly: the runtimes (ORT custom ops, TensorRT plugins) require them
all, and torch.export drops keyword arguments that equal a default.
"""

from __future__ import annotations

import onnxscript

from ..ops.spec import (CHUNK_BOUNDARIES, DECODE_ATTENTION, DOMAIN, OPSET_VERSION, SELECT_ATTENTION, SELECT_KEYS,
                        SPARSE_ATTENTION)
from . import schemas

schemas.register()
DHSA = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)


def chunk_boundaries(key, scores, method, block_size, chunk_beta, chunk_size, window, nms_radius, threshold,
                     instruction_tokens):
    inputs = (key,) if scores is None else (key, scores)
    return getattr(DHSA, CHUNK_BOUNDARIES.onnx_name)(
        *inputs, method=method, block_size=block_size, chunk_beta=chunk_beta, chunk_size=chunk_size, window=window,
        nms_radius=nms_radius, threshold=float(threshold), instruction_tokens=instruction_tokens)


def select_keys(query, key, boundaries, block_size, budget, local_tokens, global_tokens, sliding_window,
                instruction_tokens):
    return getattr(DHSA, SELECT_KEYS.onnx_name)(
        query, key, boundaries, block_size=block_size, budget=budget, local_tokens=local_tokens,
        global_tokens=global_tokens, sliding_window=sliding_window, instruction_tokens=instruction_tokens)


def sparse_attention(query, key, value, indices, counts, block_size, scale, softcap, sliding_window,
                     instruction_tokens):
    return getattr(DHSA, SPARSE_ATTENTION.onnx_name)(
        query, key, value, indices, counts, block_size=block_size, scale=float(scale), softcap=float(softcap),
        sliding_window=sliding_window, instruction_tokens=instruction_tokens)


def select_attention(query, key, value, boundaries, block_size, budget, local_tokens, global_tokens, scale, softcap,
                     sliding_window, instruction_tokens):
    return getattr(DHSA, SELECT_ATTENTION.onnx_name)(
        query, key, value, boundaries, block_size=block_size, budget=budget, local_tokens=local_tokens,
        global_tokens=global_tokens, scale=float(scale), softcap=float(softcap), sliding_window=sliding_window,
        instruction_tokens=instruction_tokens)


def decode_attention(query, key, value, boundaries, chunk_sums, budget, local_tokens, global_tokens, scale, softcap,
                     sliding_window):
    return getattr(DHSA, DECODE_ATTENTION.onnx_name)(
        query, key, value, boundaries, chunk_sums, budget=budget, local_tokens=local_tokens,
        global_tokens=global_tokens, scale=float(scale), softcap=float(softcap), sliding_window=sliding_window)
