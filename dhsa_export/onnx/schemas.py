"""ONNX schemas for domain `dhsa`, generated from ops/spec.py, with type and shape inference.

Registered in-process so onnxscript can emit the nodes and `onnx.checker` / shape inference know
every output's dtype and rank. A change of inputs or attributes is a new `since_version`.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, defs

from ..ops.spec import (ALL_OPS, CHUNK_BOUNDARIES, DECODE_ATTENTION, DOMAIN, SELECT_ATTENTION, SELECT_KEYS,
                        SPARSE_ATTENTION, OpSpec)

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_ATTR_TYPES = {int: defs.OpSchema.AttrType.INT, float: defs.OpSchema.AttrType.FLOAT,
               str: defs.OpSchema.AttrType.STRING}
_TYPES = {"T": "T", "float32": "tensor(float)", "int32": "tensor(int32)"}


def _param(t) -> defs.OpSchema.FormalParameter:
    option = defs.OpSchema.FormalParameterOption.Optional if t.optional else \
        defs.OpSchema.FormalParameterOption.Single
    return defs.OpSchema.FormalParameter(t.name, _TYPES[t.type], t.doc, param_option=option)


def _dims(ctx, i: int):
    t = ctx.get_input_type(i)
    return list(t.tensor_type.shape.dim) if t.tensor_type.HasField("shape") else None


def _out(ctx, i: int, elem: int, dims) -> None:
    tp = onnx.TypeProto()
    tp.tensor_type.elem_type = elem
    for d in dims:
        dim = tp.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d is not None:
            dim.CopyFrom(d)
    ctx.set_output_type(i, tp)


def _attr_int(ctx, name: str) -> int:
    return ctx.get_attribute(name).i


def _infer_boundaries(ctx) -> None:
    key = _dims(ctx, 0)
    _out(ctx, 0, TensorProto.INT32, [key[0] if key else None, None])


def _infer_select(ctx) -> None:
    q = _dims(ctx, 0)
    b = q[0] if q else None
    budget = _attr_int(ctx, "budget")
    _out(ctx, 0, TensorProto.INT32, [b, None, budget])
    _out(ctx, 1, TensorProto.INT32, [b, None])


def _infer_attention(ctx) -> None:
    q = _dims(ctx, 0)
    elem = ctx.get_input_type(0).tensor_type.elem_type
    _out(ctx, 0, elem, q if q else [None] * 4)


_INFERENCE = {CHUNK_BOUNDARIES: _infer_boundaries, SELECT_KEYS: _infer_select, SPARSE_ATTENTION: _infer_attention,
              SELECT_ATTENTION: _infer_attention, DECODE_ATTENTION: _infer_attention}


def schema(spec: OpSpec) -> defs.OpSchema:
    s = defs.OpSchema(
        spec.onnx_name, DOMAIN, spec.version, spec.doc + " See docs/ops.md.",
        inputs=[_param(t) for t in spec.inputs],
        outputs=[_param(t) for t in spec.outputs],
        type_constraints=[("T", _FLOATS, "query / key / value / output precision")],
        attributes=[defs.OpSchema.Attribute(a.name, _ATTR_TYPES[a.type], a.doc, required=True) for a in spec.attrs],
    )
    s.set_type_and_shape_inference_function(_INFERENCE[spec])
    return s


def register() -> None:
    """Register every dhsa schema once per process (idempotent)."""
    for spec in ALL_OPS:
        if not defs.has(spec.onnx_name, spec.version, DOMAIN):
            defs.register_schema(schema(spec))
