"""One ONNX graph for prefill and cached decode: two traced programs joined under an `If`.

A KV-cached graph is called with an empty cache for the prompt and with the cache for every later
step (onnxruntime-genai's convention). DHSA differs between the two: the prompt's prefill runs the
`dhsa` ops over the prompt's own keys; a call with a cache behind it attends densely over the cache
(docs/ops.md, "Cached calls"). The two are traced separately (each with shapes torch.export can
reason about: `past = 0` and `past >= 1`) and joined here as the branches of one `If` on the past
length, so a runtime sees one model with one set of weights. Weights both programs hold (the same
parameters) become one initializer of the outer graph that both branches read.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnx_ir as ir


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def state_names(prefix: str, layers) -> list[str]:
    """Sparse decode's chunk state of each DHSA layer (decode_state.py): `past` or `present` names."""
    return [f"{prefix}.dhsa.{i}.{part}" for i in layers for part in ("boundaries", "chunk_sums")]


def all_nodes(graph):
    """Nodes of an onnx.GraphProto and of its subgraphs (a cached export's prefill and decode branches)."""
    for node in graph.node:
        subgraphs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        if subgraphs:
            for g in subgraphs:
                yield from all_nodes(g)
        else:
            yield node


def _content_key(value: ir.Value) -> tuple:
    t = value.const_value
    return (str(t.dtype), tuple(t.shape), hashlib.sha256(t.tobytes()).hexdigest())


class _Merger:
    def __init__(self):
        self.initializers: dict[str, ir.Value] = {}
        self.by_content: dict[tuple, ir.Value] = {}

    def branch(self, model: ir.Model, tag: str) -> ir.Graph:
        """Move `model`'s nodes into a subgraph named `tag` (its outputs are the branch outputs) and its
        initializers into the outer graph, shared where the other branch has the same tensor. Tensors match
        by content, not name: the optimizer's folded constants (transposed weights) get numbered names that
        differ between the two programs."""
        graph = model.graph
        for name, init in list(graph.initializers.items()):
            graph.initializers.pop(name)
            key = _content_key(init)
            have = self.by_content.get(key)
            if have is not None:
                init.replace_all_uses_with(have)
                continue
            if name in self.initializers:
                init.name = f"{tag}/{name}"  # the same name for other content
            self.initializers[init.name] = self.by_content[key] = init
        nodes = list(graph)
        for node in nodes:  # sibling branches may not reuse names, nor shadow the outer graph's
            for out in node.outputs:
                out.name = f"{tag}/{out.name}"
        outputs = list(graph.outputs)
        graph.outputs.clear()
        graph.remove(nodes)
        return ir.Graph(inputs=[], outputs=outputs, nodes=nodes, name=tag, opset_imports=dict(model.opset_imports))


def merge(prefill: ir.Model, decode: ir.Model, num_layers: int, state_layers=()) -> ir.Model:
    """prefill: input_ids -> (logits, present...) traced with an empty cache; decode: (input_ids, past...)
    -> (logits, present...) traced with a cache (and, for sparse decode, the state of `state_layers` as
    past.dhsa.* -> present.dhsa.*). Returns (input_ids, past...) -> (logits, present...), running prefill
    when the past is empty and decode otherwise. Both inputs are consumed."""
    names = ["input_ids", *past_names(num_layers), *state_names("past", state_layers)]
    outputs = ["logits", *present_names(num_layers), *state_names("present", state_layers)]
    if len(decode.graph.inputs) != len(names) or len(prefill.graph.inputs) != 1:
        raise ValueError(f"merge: prefill takes input_ids only; decode takes {len(names)} inputs "
                         f"({', '.join(names[:3])}, ...), got {len(decode.graph.inputs)}")
    inputs = list(decode.graph.inputs)
    for value, name in zip(inputs, names):
        value.name = name
    decode.graph.inputs.clear()
    prefill_ids = prefill.graph.inputs[0]
    prefill.graph.inputs.clear()
    inputs[0].shape = prefill_ids.shape  # a sparse-decode step takes one token; the prompt any number
    prefill_ids.replace_all_uses_with(inputs[0])

    merger = _Merger()
    else_branch = merger.branch(decode, "decode")
    then_branch = merger.branch(prefill, "prefill")

    past_len = ir.node("Shape", [inputs[1]], attributes={"start": 2, "end": 3})
    zero = ir.node("Constant", [], attributes={"value": ir.tensor(np.array([0], dtype=np.int64))})
    empty = ir.node("Equal", [past_len.outputs[0], zero.outputs[0]])
    choose = ir.node("If", [empty.outputs[0]], attributes={"then_branch": then_branch, "else_branch": else_branch},
                     num_outputs=len(outputs))
    for out, name, like in zip(choose.outputs, outputs, else_branch.outputs):
        out.name, out.dtype, out.shape = name, like.dtype, like.shape
    for node, name in ((past_len, "past_length"), (zero, "zero"), (empty, "past_is_empty"), (choose, "prefill_or_decode")):
        node.name = name
    past_len.outputs[0].name, zero.outputs[0].name, empty.outputs[0].name = "past_length", "zero", "past_is_empty"
    graph = ir.Graph(inputs=inputs, outputs=list(choose.outputs), nodes=[past_len, zero, empty, choose],
                     initializers=list(merger.initializers.values()),
                     opset_imports={**dict(prefill.opset_imports), **dict(decode.opset_imports)}, name="main")
    return ir.Model(graph, ir_version=max(prefill.ir_version, decode.ir_version), producer_name=decode.producer_name,
                    producer_version=decode.producer_version)
