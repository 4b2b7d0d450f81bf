"""The bindings share one native path: the C++ op table matches spec.py, and torch.ops.dhsa on CUDA
(the C API) rejects a malformed input with exactly the message ONNX Runtime's op gives."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from dhsa_export.errors import DHSAError
from dhsa_export.ops.reference import OpInputError
from dhsa_export.ops.spec import (ALL_OPS, CHUNK_BOUNDARIES, DECODE_ATTENTION, SELECT_ATTENTION, SELECT_KEYS,
                                  SPARSE_ATTENTION)

from . import ort_ops


@pytest.fixture(scope="module")
def capi():
    from dhsa_export.native import cuda_kernels

    try:
        return cuda_kernels()
    except DHSAError as err:
        if shutil.which("nvcc") is None:  # the C API is built with the CUDA kernels
            pytest.skip(f"no CUDA toolkit here, so no C API library: {err}")
        pytest.fail(str(err))  # CI builds it: missing is a failure


@pytest.mark.parametrize("spec", ALL_OPS, ids=lambda s: s.onnx_name)
def test_native_op_table_matches_spec(capi, spec):
    assert capi.signature(spec) == spec.signature()


def _f(*shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _i(*rows):
    return np.array(rows, dtype=np.int32)


SEL = dict(block_size=4, budget=16, local_tokens=4, global_tokens=4, sliding_window=0, instruction_tokens=0)
ATT = dict(block_size=4, scale=0.5, softcap=0.0, sliding_window=0, instruction_tokens=0)
FUSED = SEL | dict(scale=0.5, softcap=0.0)
BND = dict(method="similarity", block_size=4, chunk_beta=2, chunk_size=4, window=2, nms_radius=1, threshold=0.0,
           instruction_tokens=0)
Q, K, BD = _f(1, 2, 20, 8), _f(1, 1, 20, 8), _i([0, 10, 20])
IDX, CNT = np.zeros((1, 5, 4), np.int32), np.ones((1, 5), np.int32)
DEC = dict(budget=16, local_tokens=4, global_tokens=4, scale=0.5, softcap=0.0, sliding_window=0)
STEP = dict(query=_f(1, 2, 1, 8), key=K, value=K, boundaries=BD, chunk_sums=_f(1, 2, 8))

MALFORMED = [
    (SELECT_ATTENTION, FUSED, dict(query=Q, key=K, value=_f(1, 1, 19, 8), boundaries=BD)),  # K / V shapes differ
    (SELECT_ATTENTION, FUSED, dict(query=Q, key=_f(1, 3, 20, 8), value=_f(1, 3, 20, 8), boundaries=BD)),
    (SELECT_ATTENTION, FUSED | dict(budget=6), dict(query=Q, key=K, value=K, boundaries=BD)),
    (SELECT_ATTENTION, FUSED | dict(softcap=-1.0), dict(query=Q, key=K, value=K, boundaries=BD)),
    (SELECT_KEYS, SEL, dict(query=Q[0], key=K, boundaries=BD)),  # rank 3 query
    (SELECT_KEYS, SEL, dict(query=Q, key=_f(2, 1, 20, 8), boundaries=BD)),
    (SELECT_KEYS, SEL, dict(query=Q, key=K, boundaries=_i([0, 10, 20], [0, 5, 20]))),
    (SELECT_KEYS, SEL | dict(block_size=0), dict(query=Q, key=K, boundaries=BD)),
    (SPARSE_ATTENTION, ATT, dict(query=Q, key=K, value=K, indices=np.zeros((1, 4, 4), np.int32), counts=CNT)),
    (SPARSE_ATTENTION, ATT, dict(query=Q, key=K, value=K, indices=IDX, counts=np.ones((1, 4), np.int32))),
    (SPARSE_ATTENTION, ATT, dict(query=Q, key=_f(1, 1, 20, 4), value=_f(1, 1, 20, 4), indices=IDX, counts=CNT)),
    (CHUNK_BOUNDARIES, BND | dict(method="magic"), dict(key=K)),
    (CHUNK_BOUNDARIES, BND | dict(method="scores"), dict(key=K)),
    (CHUNK_BOUNDARIES, BND | dict(method="scores"), dict(key=K, scores=_f(1, 19))),
    (CHUNK_BOUNDARIES, BND | dict(method="fixed", chunk_size=1), dict(key=K)),
    (CHUNK_BOUNDARIES, BND, dict(key=_f(1, 1, 0, 8))),
    (DECODE_ATTENTION, DEC, STEP | dict(query=Q)),  # more than one position
    (DECODE_ATTENTION, DEC, STEP | dict(chunk_sums=_f(1, 3, 8))),
    (DECODE_ATTENTION, DEC, STEP | dict(key=_f(1, 3, 20, 8), value=_f(1, 3, 20, 8))),
    (DECODE_ATTENTION, DEC | dict(budget=6), STEP),
]


@pytest.mark.parametrize("case", range(len(MALFORMED)))
def test_cuda_and_ort_reject_the_same_input_with_the_same_message(capi, case):
    spec, attrs, feeds = MALFORMED[case]
    outputs = {t.name: (np.int32 if t.type == "int32" else np.float32, 4) for t in spec.outputs}
    model = ort_ops.single_node(spec, feeds, outputs, attrs)
    with pytest.raises(Exception) as ort_err:
        ort_ops.session(model).run(None, feeds)
    with pytest.raises(OpInputError) as capi_err:
        inputs = [None if feeds.get(t.name) is None else torch.from_numpy(feeds[t.name]) for t in spec.inputs]
        capi.check(spec, inputs, [attrs[a.name] for a in spec.attrs])
    message = str(capi_err.value)
    assert message.startswith(spec.onnx_name + ": ")
    assert str(ort_err.value).rstrip().endswith(message), (str(ort_err.value), message)
