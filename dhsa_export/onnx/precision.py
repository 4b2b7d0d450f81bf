"""Convert an fp32 model's linear layers and embedding table to fp16 / bf16 at the ONNX level.

This is `dhsa-export --dtype fp16`'s rule (export.py, HalfLinear / HalfEmbedding) applied to a
graph: a weight matrix that feeds only MatMul / Gemm (directly or through a Transpose, as a tied
output layer does) or the table side of a Gather is stored in the half type; those MatMuls take a
cast of their activation and hand back fp32, and the Gather's rows are cast back to fp32. Norms,
the residual stream, GELU, soft-capping and attention stay fp32 -- Gemma overflows in plain fp16.
Strongly typed builders (TensorRT 11, TensorRT-RTX) have no precision flag, so this is how they get
a half-precision engine.
"""

from __future__ import annotations

import onnx_ir as ir

HALF = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}


def _matmul_weight_use(use) -> bool:
    return use.node.op_type == "MatMul" and use.idx == 1 or use.node.op_type == "Gemm" and use.idx in (1, 2)


def _weight_uses(value: ir.Value) -> list | None:
    """The uses of an fp32 weight matrix when every one is a linear layer's weight or an embedding
    table (through at most one Transpose), else None."""
    uses = list(value.uses())
    if value.shape is None or value.shape.rank() != 2:
        return None
    for use in uses:
        if use.node.op_type == "Gather" and use.idx == 0 or _matmul_weight_use(use):
            continue
        if use.node.op_type == "Transpose" and all(_matmul_weight_use(u) for u in use.node.outputs[0].uses()):
            continue
        return None
    return uses or None


class _Rewriter:
    def __init__(self, graph: ir.Graph, half: ir.DataType):
        self.graph, self.half = graph, half
        self.casts: dict[int, ir.Value] = {}  # one cast per activation, shared by the q / k / v projections
        self.done: set[int] = set()

    def cast_input(self, node: ir.Node, idx: int) -> None:
        x = node.inputs[idx]
        if x.dtype == self.half:
            return
        if id(x) not in self.casts:
            cast = ir.node("Cast", [x], attributes={"to": self.half})
            cast.outputs[0].dtype, cast.outputs[0].shape = self.half, x.shape
            # right after the activation is made: every consumer, in any order, comes later
            if x.producer() is not None:
                self.graph.insert_after(x.producer(), cast)
            else:
                self.graph.insert_before(next(iter(self.graph)), cast)
            self.casts[id(x)] = cast.outputs[0]
        node.replace_input_with(idx, self.casts[id(x)])

    def cast_output_back(self, node: ir.Node) -> None:
        """`node` now computes in the half type; its consumers keep receiving fp32."""
        y = node.outputs[0]
        back = ir.node("Cast", [y], attributes={"to": ir.DataType.FLOAT})
        out = back.outputs[0]
        out.dtype, out.shape = ir.DataType.FLOAT, y.shape
        for use in list(y.uses()):
            if use.node is not back:
                use.node.replace_input_with(use.idx, out)
        if y.is_graph_output():
            idx = self.graph.outputs.index(y)
            out.name, y.name = y.name, f"{y.name}_half"
            self.graph.outputs[idx] = out
        y.dtype = self.half
        self.graph.insert_after(node, back)

    def half_consumer(self, node: ir.Node) -> None:
        if id(node) in self.done:
            return
        self.done.add(id(node))
        if node.op_type == "Transpose":
            node.outputs[0].dtype = self.half
            for use in list(node.outputs[0].uses()):
                self.half_consumer(use.node)
        elif node.op_type == "Gather":
            self.cast_output_back(node)
        else:  # MatMul / Gemm: the activation in, fp32 out
            self.cast_input(node, 0)
            if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = node.inputs[2]
                if bias.const_value is None or bias.dtype != self.half:
                    self.cast_input(node, 2)
            self.cast_output_back(node)


def to_half(model: ir.Model, precision: str) -> int:
    """Convert `model` in place; returns the number of weights converted (0: nothing was fp32)."""
    half = HALF[precision]
    np_half = half.numpy()
    rewriter = _Rewriter(model.graph, half)
    converted = 0
    for value in list(model.graph.initializers.values()):
        if value.dtype != ir.DataType.FLOAT or value.const_value is None:
            continue
        uses = _weight_uses(value)
        if uses is None:
            continue
        array = value.const_value.numpy().astype(np_half)
        value.const_value = ir.Tensor(array, name=value.name)
        value.dtype = half
        for use in uses:
            rewriter.half_consumer(use.node)
        converted += 1
    return converted


def precision_of(model: ir.Model) -> str:
    """fp32 / fp16 / bf16: the type of the model's largest weights."""
    sizes: dict[ir.DataType, int] = {}
    for value in model.graph.initializers.values():
        if value.const_value is not None and value.dtype is not None and value.dtype.is_floating_point():
            sizes[value.dtype] = sizes.get(value.dtype, 0) + value.const_value.size
    if not sizes:
        return "fp32"
    top = max(sizes, key=sizes.get)
    return {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}.get(top, "fp32")
