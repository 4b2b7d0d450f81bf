"""The DHSA ops as data: names, tensors, attributes. docs/ops.md is the prose of this table.

The torch.library schemas, the ONNX schemas and the onnxscript translations are all generated from
these specs, so an attribute exists in one place only. Changing inputs or attributes of an op means
a new `version` (and a new ONNX schema version).
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "dhsa"
OPSET_VERSION = 1


@dataclass(frozen=True)
class Tensor:
    name: str
    doc: str
    optional: bool = False
    type: str = "T"  # "T" (the op's float32 / float16 / bfloat16 activation type), "float32" or "int32"
    may_take: str | None = None  # an output that may be written over this input's buffer


def _i32(name: str, doc: str) -> Tensor:
    return Tensor(name, doc, type="int32")


@dataclass(frozen=True)
class Attr:
    name: str
    type: type  # int, float or str
    doc: str


@dataclass(frozen=True)
class OpSpec:
    torch_name: str  # name in the torch.library namespace `dhsa`
    onnx_name: str  # op_type in ONNX domain `dhsa` == plugin name in ORT and TensorRT
    version: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    attrs: tuple[Attr, ...]
    doc: str

    @property
    def qualname(self) -> str:
        return f"{DOMAIN}::{self.torch_name}"

    @property
    def attr_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attrs)

    def torch_schema(self) -> str:
        """Schema for torch.library.define. No defaults: torch.export drops keyword arguments equal
        to their default, and every attribute must reach the ONNX node explicitly."""
        ts = {int: "int", float: "float", str: "str"}
        args = [f"Tensor{'?' if t.optional else ''} {t.name}" for t in self.inputs]
        args += [f"{ts[a.type]} {a.name}" for a in self.attrs]
        outs = ", ".join("Tensor" for _ in self.outputs)
        outs = f"({outs})" if len(self.outputs) > 1 else outs
        return f"({', '.join(args)}) -> {outs}"

    def signature(self) -> str:
        """The one-line form the native op table prints (dhsa/op_table.h Signature): the two tables
        are compared in this form."""
        ins = " ".join(f"{t.name}:{t.type}{'?' if t.optional else ''}" for t in self.inputs)
        outs = " ".join(f"{t.name}:{t.type}{'<' + t.may_take if t.may_take else ''}" for t in self.outputs)
        ts = {int: "int", float: "float", str: "string"}
        attrs = " ".join(f"{a.name}:{ts[a.type]}" for a in self.attrs)
        return f"{self.onnx_name} {self.version} | {ins} | {outs} | {attrs}"


_BLOCK = Attr("block_size", int, "b: query block size (>= 1)")
_SLIDING = Attr("sliding_window", int, "W: key j is visible to query t iff t - W < j <= t; 0 = global layer")
_INSTR = Attr("instruction_tokens", int, "T: the last min(T, L) queries attend densely (>= 0)")
_BUDGET = Attr("budget", int, "Nb: keys kept per query block (>= local_tokens + global_tokens, >= 1)")
_LOCAL = Attr("local_tokens", int, "most recent eligible keys always kept (>= 0)")
_GLOBAL = Attr("global_tokens", int, "first eligible keys always kept (>= 0)")
_SCALE = Attr("scale", float, "logit scale (Gemma: query_pre_attn_scalar ** -0.5)")
_SOFTCAP = Attr("softcap", float, "logits -> softcap * tanh(logits / softcap); 0 = off")

CHUNK_BOUNDARIES = OpSpec(
    torch_name="chunk_boundaries",
    onnx_name="DhsaChunkBoundaries",
    version=1,
    inputs=(
        Tensor("key", "(B, Hkv, L, D) post-RoPE key states; float32, float16 or bfloat16"),
        Tensor("scores", "(B, L) float32 cut scores; used only when method = 'scores'", optional=True,
               type="float32"),
    ),
    outputs=(_i32("boundaries", "(B, N + 1) int32, N = chunk_beta * ceil(L / block_size); padded with L"),),
    attrs=(
        Attr("method", str, "'similarity' (training-free), 'scores' (given scores) or 'fixed'"),
        _BLOCK,
        Attr("chunk_beta", int, "chunk budget: at most N = chunk_beta * ceil(L / b) chunks (>= 1)"),
        Attr("chunk_size", int, "fixed method: chunk length; chunk_size * chunk_beta >= b"),
        Attr("window", int, "w: keys compared on each side of a cut (>= 1)"),
        Attr("nms_radius", int, "r: a cut must beat every cut within r positions (>= 0)"),
        Attr("threshold", float, "a cut needs score > threshold"),
        _INSTR,
    ),
    doc="Dynamic chunking of the keys: cut positions 0 = b0 < b1 < ... <= L.",
)

SELECT_KEYS = OpSpec(
    torch_name="select_keys",
    onnx_name="DhsaSelectKeys",
    version=1,
    inputs=(
        Tensor("query", "(B, Hq, L, D) post-RoPE query states"),
        Tensor("key", "(B, Hkv, L, D) post-RoPE key states, same dtype as query"),
        _i32("boundaries", "(B, N + 1) int32 chunk boundaries"),
    ),
    outputs=(
        _i32("indices", "(B, ceil(L / b), budget) int32 key indices, ascending, padded with -1"),
        _i32("counts", "(B, ceil(L / b)) int32 number of valid entries per row of indices"),
    ),
    attrs=(_BLOCK, _BUDGET, _LOCAL, _GLOBAL, _SLIDING, _INSTR),
    doc="Chunk scoring and budgeted selection of keys per query block.",
)

SPARSE_ATTENTION = OpSpec(
    torch_name="sparse_attention",
    onnx_name="DhsaSparseAttention",
    version=1,
    inputs=(
        Tensor("query", "(B, Hq, L, D)"),
        Tensor("key", "(B, Hkv, L, D), Hq % Hkv == 0"),
        Tensor("value", "(B, Hkv, L, D)"),
        _i32("indices", "(B, ceil(L / b), Nb) int32 from DhsaSelectKeys"),
        _i32("counts", "(B, ceil(L / b)) int32 from DhsaSelectKeys"),
    ),
    outputs=(Tensor("output", "(B, Hq, L, D), dtype of query", may_take="query"),),
    attrs=(_BLOCK, _SCALE, _SOFTCAP, _SLIDING, _INSTR),
    doc="Attention of each query over its block's selected keys (dense for the instruction tail). The output "
        "may take the query's buffer: each query row is read before its output row is written.",
)

SELECT_ATTENTION = OpSpec(
    torch_name="select_attention",
    onnx_name="DhsaSelectAttention",
    version=1,
    inputs=(
        Tensor("query", "(B, Hq, L, D) post-RoPE query states"),
        Tensor("key", "(B, Hkv, L, D) post-RoPE key states, Hq % Hkv == 0"),
        Tensor("value", "(B, Hkv, L, D)"),
        _i32("boundaries", "(B, N + 1) int32 chunk boundaries"),
    ),
    outputs=(Tensor("output", "(B, Hq, L, D), dtype of query", may_take="query"),),
    attrs=(_BLOCK, _BUDGET, _LOCAL, _GLOBAL, _SCALE, _SOFTCAP, _SLIDING, _INSTR),
    doc="DhsaSelectKeys followed by DhsaSparseAttention, the selection kept inside the op. One op lets the GPU "
        "kernels overlap the two: the attention's blocks that need no selection run while the selection does. The "
        "output may take the query's buffer, as for DhsaSparseAttention.",
)

DECODE_ATTENTION = OpSpec(
    torch_name="decode_attention",
    onnx_name="DhsaDecodeAttention",
    version=1,
    inputs=(
        Tensor("query", "(B, Hq, 1, D) post-RoPE queries of the newest position t = K - 1"),
        Tensor("key", "(B, Hkv, K, D) the key cache, the newest position's key last; Hq % Hkv == 0"),
        Tensor("value", "(B, Hkv, K, D) the value cache"),
        _i32("boundaries", "(B, M + 1) int32 chunk boundaries of the cache: 0, ..., K, non-decreasing"),
        Tensor("chunk_sums", "(B, M, D) float32: per chunk, the sum of its head-averaged keys", type="float32"),
    ),
    outputs=(Tensor("output", "(B, Hq, 1, D), dtype of query", may_take="query"),),
    attrs=(Attr("budget", int, "Nb: keys kept per step (>= local_tokens + global_tokens, >= 1)"), _LOCAL, _GLOBAL,
           _SCALE, _SOFTCAP, _SLIDING),
    doc="One cached step of sparse decode: the newest position's queries score the cache's chunks from their "
        "key sums, keep the budget (global, local, best chunks) and attend to it. The output may take the query's "
        "buffer.",
)

ALL_OPS = (CHUNK_BOUNDARIES, SELECT_KEYS, SPARSE_ATTENTION, SELECT_ATTENTION, DECODE_ATTENTION)

BOUNDARY_METHODS = ("similarity", "scores", "fixed")
