"""Run one dhsa op as a single-node ONNX model in ONNX Runtime with the DHSA library, writing into
poisoned output buffers so that any element the kernel leaves unwritten shows."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dhsa_export.errors import DHSAError
from dhsa_export.ops.spec import CHUNK_BOUNDARIES, SELECT_ATTENTION, SELECT_KEYS, SPARSE_ATTENTION, OpSpec

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int32): TensorProto.INT32}
POISON = {np.dtype(np.float32): np.nan, np.dtype(np.float16): np.nan, np.dtype(np.int32): -(2**31) + 7}


@functools.lru_cache(maxsize=1)
def library() -> str:
    from dhsa_export.native import ort_library

    try:
        return str(ort_library())
    except DHSAError as err:  # CI builds it; a missing library is a failure, never a skip
        pytest.fail(str(err))


def session(model: onnx.ModelProto, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library())
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=[provider])


def single_node(spec: OpSpec, inputs: dict[str, np.ndarray], outputs: dict[str, tuple[np.dtype, int]],
                attrs: dict) -> onnx.ModelProto:
    names = [t.name for t in spec.inputs if t.name in inputs]
    node_inputs = [t.name if t.name in inputs else "" for t in spec.inputs]
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()
    node = helper.make_node(spec.onnx_name, node_inputs, list(outputs), domain="dhsa", **attrs)
    graph = helper.make_graph(
        [node], spec.onnx_name,
        [helper.make_tensor_value_info(n, NP_TO_ONNX[inputs[n].dtype], [None] * inputs[n].ndim) for n in names],
        [helper.make_tensor_value_info(n, NP_TO_ONNX[np.dtype(dt)], [None] * rank) for n, (dt, rank) in outputs.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dhsa", 1)],
                             ir_version=9)


def run(spec: OpSpec, inputs: dict[str, np.ndarray], outputs: dict[str, tuple[np.dtype, tuple]], attrs: dict,
        provider: str = "CPUExecutionProvider") -> list[np.ndarray]:
    """Outputs are pre-allocated, poisoned and bound: ORT writes into them in place."""
    sess = session(single_node(spec, inputs, {n: (dt, len(shape)) for n, (dt, shape) in outputs.items()}, attrs),
                   provider)
    binding = sess.io_binding()
    for name, value in inputs.items():
        binding.bind_cpu_input(name, value)
    results = []
    for name, (dt, shape) in outputs.items():
        buf = np.full(shape, POISON[np.dtype(dt)], dtype=dt)
        binding.bind_output(name, "cpu", element_type=dt, shape=buf.shape, buffer_ptr=buf.ctypes.data)
        results.append(buf)
    sess.run_with_iobinding(binding)
    return results


def boundaries(key, scores, attrs, shape, provider="CPUExecutionProvider"):
    inputs = {"key": key} | ({"scores": scores} if scores is not None else {})
    return run(CHUNK_BOUNDARIES, inputs, {"boundaries": (np.int32, shape)}, attrs, provider)[0]


def select_keys(q, k, bd, attrs, nqb, provider="CPUExecutionProvider"):
    return run(SELECT_KEYS, {"query": q, "key": k, "boundaries": bd},
               {"indices": (np.int32, (q.shape[0], nqb, attrs["budget"])), "counts": (np.int32, (q.shape[0], nqb))},
               attrs, provider)


def sparse_attention(q, k, v, idx, cnt, attrs, provider="CPUExecutionProvider"):
    return run(SPARSE_ATTENTION, {"query": q, "key": k, "value": v, "indices": idx, "counts": cnt},
               {"output": (q.dtype, q.shape)}, attrs, provider)[0]


def select_attention(q, k, v, bd, attrs, provider="CPUExecutionProvider"):
    return run(SELECT_ATTENTION, {"query": q, "key": k, "value": v, "boundaries": bd},
               {"output": (q.dtype, q.shape)}, attrs, provider)[0]


IN_PLACE_LOG = "DhsaSparseAttention: output written in place of Q"
FUSED_IN_PLACE_LOG = "DhsaSelectAttention: output written in place of Q"
_LOGGED_RUN = r"""
import sys
import numpy as np, onnxruntime as ort
lib, model, feeds, out = sys.argv[1:]
ort.set_default_logger_severity(0)
opts = ort.SessionOptions()
opts.register_custom_ops_library(lib)
opts.log_severity_level = 0
results = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, dict(np.load(feeds)))
np.savez(out, *results)
"""


def run_logged(model_path, feeds: dict[str, np.ndarray], tmp_path) -> tuple[list[np.ndarray], str]:
    """Runs a model on the CPU EP in a child process at ORT's verbose log level: (outputs, the log)."""
    import subprocess
    import sys

    np.savez(tmp_path / "feeds.npz", **feeds)
    proc = subprocess.run([sys.executable, "-c", _LOGGED_RUN, library(), str(model_path), str(tmp_path / "feeds.npz"),
                           str(tmp_path / "outputs.npz")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "outputs.npz") as out:
        return [out[f"arr_{i}"] for i in range(len(out.files))], proc.stderr
