"""Replace the `dhsa` nodes of a plugin-flavour model by their standard-op decompositions.

The same functions that `dhsa-export --ops portable` hands to torch's exporter (portable_ops.py)
are evaluated here with each node's inputs and attributes, recording into an ONNX IR tape, and the
result is optimized as torch's exporter optimizes its graphs: lowering a plugin export gives the
portable export of the same model, node for node. This is how a backend without the plugins
(TensorRT-RTX) builds the default export.
"""

from __future__ import annotations

from typing import Callable

import onnx
import onnx_ir as ir
import onnxscript
from onnxscript._internal import evaluator

from ..errors import DHSAError
from ..ops.spec import ALL_OPS, DOMAIN
from . import portable_ops


class _Recorder:
    """onnxscript evaluator that appends every op call to a TapeBuilder instead of running it."""

    def __init__(self, tape: onnxscript.TapeBuilder):
        self.tape = tape

    def eval_op(self, op, args, kwargs):
        attrs = {k: ir.serde.deserialize_tensor(v) if isinstance(v, onnx.TensorProto) else v for k, v in kwargs.items()}
        return self.tape.op(op.name, *args, _domain=op.domain, _version=op.opset.version,
                            _outputs=len(op.op_schema.outputs), **attrs)

    def eval_function(self, function, args, kwargs):
        raise NotImplementedError("portable decompositions call ONNX ops only")


_DECOMPOSITIONS: dict[str, tuple] = {s.onnx_name: (s, getattr(portable_ops, s.torch_name)) for s in ALL_OPS}


def _decompose(node: ir.Node, fn: Callable, spec) -> tuple[list[ir.Node], list[ir.Value], list[ir.Value]]:
    args = {t.name: node.inputs[i] if i < len(node.inputs) else None for i, t in enumerate(spec.inputs)}
    args.update({name: attr.value for name, attr in node.attributes.items()})
    tape = onnxscript.TapeBuilder()
    with evaluator.default_as(_Recorder(tape)):
        out = fn(**args)
    return tape.nodes, list(out) if isinstance(out, (tuple, list)) else [out], tape.initializers


def lower_to_portable(model: ir.Model, progress=lambda _: None) -> int:
    """Rewrite every `dhsa` node of `model` in place; returns how many were rewritten."""
    count = 0
    for node in list(model.graph):
        if node.domain != DOMAIN:
            continue
        if node.op_type not in _DECOMPOSITIONS:
            raise DHSAError(f"the model uses {DOMAIN}.{node.op_type}, which this version of dhsa-export does not "
                            f"know; upgrade dhsa-export or re-export the model with it")
        spec, fn = _DECOMPOSITIONS[node.op_type]
        nodes, outputs, constants = _decompose(node, fn, spec)
        ir.convenience.replace_nodes_and_values(model.graph, node, [node], nodes, list(node.outputs), outputs)
        for value in constants:
            model.graph.register_initializer(value)
        count += 1
    if count:
        model.opset_imports.pop(DOMAIN, None)
        progress(f"lowered {count} dhsa nodes to standard ops; optimizing")
        onnxscript.optimizer.optimize(model)
    return count
