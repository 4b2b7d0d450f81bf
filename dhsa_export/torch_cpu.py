"""PyTorch's CPU math resolved to its accurate kernels before any multi-threaded use.

torch's float unary ops on contiguous CPU tensors (cos, sin, exp, tanh, sqrt, ...) call oneMKL's VML on
each intra-op thread's chunk. oneMKL 2024.2, which the torch wheels bundle, picks each VML function's kernel
lazily on its first call; when that first call comes from several threads at once, one thread can run a
low-accuracy kernel over its whole chunk (pytorch/pytorch#188792; gone from oneMKL 2025.0). A fresh process
then computes, say, RoPE's cos for the second half of the positions with errors near 1e-4, and the PyTorch
reference disagrees with itself and with every deployment by more than the fp32 gates allow, at random.
One single-element call per function and dtype, made here on one thread, settles the choice first.
"""

from __future__ import annotations

import functools

import torch

# The functions ATen routes to VML (ATen/cpu/vml.h: IMPLEMENT_VML_MKL), for float32 and float64 alike.
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
                 "sqrt", "tan", "tanh", "trunc")


@functools.cache
def resolve_vml_dispatch() -> None:
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
