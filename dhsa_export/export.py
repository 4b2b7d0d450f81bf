"""Trace a Gemma model with DHSA attention and write ONNX in which DHSA is `dhsa`-domain ops.

Two flavours: `plugin` (bare dhsa nodes for runtimes with the plugins loaded) and `portable` (the
same semantics decomposed into standard ONNX ops). The file appears only when it is complete: the
export writes into a temporary folder beside the target and moves the result into place.
"""

from __future__ import annotations

import copy
import logging
import resource
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import onnx
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from . import __version__
from .attention import attention_modules, enable_dhsa, layer_types
from .errors import DHSAError
from .files import EXTERNAL_DATA_THRESHOLD, check_writable_parent, publish_onnx
from .loading import load
from .onnx import cached_graph, plugin_ops, portable_ops, schemas
from .ops.spec import ALL_OPS, DOMAIN, OPSET_VERSION
from .recipes import Recipe
from .runtime import cache_kwargs

OpsFlavour = Literal["plugin", "portable"]
Progress = Callable[[str], None]

# Above this many bytes the weights go to external data: protobuf caps a file at 2 GB, and
# serialising in-file costs ~4x the weights in RAM (gemma3-270m: 4.9 GB peak in-file, 1.8 GB external).


@dataclass
class ExportResult:
    path: Path
    data_path: Path | None
    op_counts: dict[str, int]
    inputs: list[tuple[str, str, list]]
    outputs: list[tuple[str, str, list]]
    file_bytes: int
    data_bytes: int
    seconds: float
    peak_rss_mib: float
    metadata: dict[str, str] = field(default_factory=dict)


class LogitsModel(nn.Module):
    """input_ids (B, L) -> logits (B, L or 1, V): the graph the runtimes see (no cache, no mask)."""

    def __init__(self, model: nn.Module, logits: str):
        super().__init__()
        self.model = model
        self.keep = 1 if logits == "last" else 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False, logits_to_keep=self.keep).logits


class CachedLM(nn.Module):
    """(input_ids, past[, state]) -> (logits, present[, state]): one forward with a KV cache, past and
    present as one (key, value) pair per layer of shape (B, Hkv, P, D). Every layer keeps its whole history
    (sliding-window layers mask it), so all caches have the same length, as onnxruntime-genai expects.
    With sparse decode, `state` is the chunk state (boundaries, chunk_sums) of each layer of `state_layers`
    (decode_state.py): set by the prefill, extended by each cached step."""

    def __init__(self, model: nn.Module, logits: str, state_layers: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        self.keep = 1 if logits == "last" else 0
        self.state_layers = state_layers
        self.runtime = next((m.dhsa_runtime for m in attention_modules(model) if hasattr(m, "dhsa_runtime")), None) \
            if state_layers else None

    def forward(self, input_ids: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]],
                state: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        cache = DynamicCache(past) if past else DynamicCache()
        if self.runtime is not None:
            self.runtime.chunk_state.clear()
            self.runtime.chunk_state.update(zip(self.state_layers, state or []))
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=self.keep,
                         **cache_kwargs(self.model, cache))
        present = [(layer.keys, layer.values) for layer in cache.layers]
        if self.runtime is None:
            return out.logits, present
        new_state = [self.runtime.chunk_state[i] for i in self.state_layers]
        self.runtime.chunk_state.clear()  # no traced tensor outlives the trace
        return out.logits, present, new_state


class HalfLinear(nn.Module):
    """fp16 weights and matmul; activations enter and leave in fp32.

    Gemma's residual stream, norms, GELU, soft-capping and attention overflow in fp16, so an
    `--dtype fp16` export keeps everything but the linear layers and the embedding table in fp32.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().half(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().half(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.half(), self.weight, self.bias).float()


class HalfEmbedding(nn.Module):
    """fp16 embedding table (the tied output layer's own fp16 weight when the model ties them, so
    the table is stored once); rows leave in fp32, times the model's `embed_scale` when the
    embedding module applies one (Gemma 3), as the module it replaces did."""

    def __init__(self, embedding: nn.Embedding, weight: nn.Parameter | None = None):
        super().__init__()
        self.weight = weight if weight is not None else nn.Parameter(embedding.weight.detach().half(),
                                                                     requires_grad=False)
        scale = getattr(embedding, "embed_scale", None)
        self.register_buffer("embed_scale", torch.as_tensor(1.0 if scale is None else scale,
                                                            dtype=torch.float32).clone(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight).float() * self.embed_scale


def _half_linears(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, HalfLinear(child))
        else:
            _half_linears(child)


def to_half(model) -> nn.Module:
    """fp16 weights for the linear layers and the embedding table; everything else stays fp32."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    _half_linears(model)
    model.set_input_embeddings(HalfEmbedding(embedding, model.get_output_embeddings().weight if tied else None))
    return model


def translation_table(flavour: OpsFlavour) -> dict:
    impl = plugin_ops if flavour == "plugin" else portable_ops
    return {getattr(torch.ops.dhsa, s.torch_name).default: getattr(impl, s.torch_name) for s in ALL_OPS}


def check_output_path(out: Path) -> None:
    if out.suffix != ".onnx":
        raise DHSAError(f"output {out} must end in .onnx")
    if out.is_dir():
        raise DHSAError(f"output {out} is a directory; give a file name like {out}/model.onnx")
    check_writable_parent(out)


def _value_info(v) -> tuple[str, str, list]:
    t = v.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return v.name, onnx.TensorProto.DataType.Name(t.elem_type).lower(), dims


def _metadata(recipe: Recipe, flavour: str, dtype: str, dense: bool, source: str) -> dict[str, str]:
    meta = {
        "dhsa.exporter": f"dhsa-export {__version__}",
        "dhsa.recipe": recipe.name,
        "dhsa.source_model": recipe.model.hf_id or recipe.name,
        "dhsa.weights": source,
        "dhsa.ops_flavour": flavour,
        "dhsa.attention": "dense" if dense else "dhsa",
        "dhsa.dtype": dtype,
        "dhsa.opset": f"{DOMAIN}:{OPSET_VERSION}",
        "dhsa.op_versions": ",".join(f"{s.onnx_name}:{s.version}" for s in ALL_OPS),
        "dhsa.torch": torch.__version__,
    }
    if not dense:
        meta.update(recipe.dhsa.as_metadata())
    return meta


def _prepare(recipe: Recipe, model_path, dtype: str, max_seq_len: int | None, dense: bool, progress: Progress,
             loaded, decode: str = "dense"):
    """The model to trace, with DHSA attention unless dense; returns (model, loaded, max_seq_len)."""
    max_seq_len = max_seq_len or recipe.export.max_seq_len
    if max_seq_len < recipe.dhsa.block_size:
        raise DHSAError(f"--max-seq-len {max_seq_len} is below the block size {recipe.dhsa.block_size}")
    owned = loaded is None
    if owned:
        loaded = load(recipe, model_path, dtype="bf16" if dtype == "bf16" else "fp32", progress=progress)
    model = loaded.model
    if dtype == "fp16":
        progress("fp16: linear layers and embeddings in fp16, residual stream / norms / attention in fp32")
        model = to_half(model if owned else copy.deepcopy(model))  # never alter a caller's model
    if not dense:
        enable_dhsa(model, recipe.dhsa, decode=decode)
    schemas.register()
    # torch's exporter warns about unrelated optional packages (torchvision) and deprecated pytree names.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
    return model, loaded, max_seq_len


def _trace(recipe: Recipe, wrapper: nn.Module, args: tuple, dynamic_shapes, flavour: OpsFlavour,
           input_names: list[str], output_names: list[str]):
    with torch.no_grad():
        try:
            return torch.onnx.export(wrapper.eval(), args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                     custom_translation_table=translation_table(flavour),
                                     opset_version=recipe.export.opset, optimize=True, input_names=input_names,
                                     output_names=output_names, verbose=False)
        except Exception as err:  # noqa: BLE001 - re-raised with the stage named
            raise RuntimeError(f"torch.onnx.export failed while tracing {recipe.name}: {err}") from err


def _save(model_or_program, out: Path, external: bool, progress: Progress) -> None:
    """Write and check `out` (atomically, see files.publish_onnx)."""
    progress(f"saving {'with external data ' if external else ''}to {out}")

    def check(tmp_onnx: Path) -> None:
        progress("checking (onnx.checker full_check + shape inference)")
        onnx.checker.check_model(str(tmp_onnx), full_check=True)

    def save(tmp_onnx: Path) -> None:
        item = pending.pop()
        if isinstance(item, ir.Model):
            ir.save(item, tmp_onnx, external_data=f"{tmp_onnx.name}.data" if external else None)
        else:
            item.save(str(tmp_onnx), external_data=external)

    pending = [model_or_program]  # released once saved: the check loads the model again
    del model_or_program
    publish_onnx(out, save, check)


def _result(out: Path, t0: float, meta: dict[str, str]) -> ExportResult:
    proto = onnx.load(str(out), load_external_data=False)
    data_path = next((out.parent / e.value for t in proto.graph.initializer for e in t.external_data
                      if e.key == "location"), None)
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in cached_graph.all_nodes(proto.graph))
    return ExportResult(
        path=out, data_path=data_path, op_counts=dict(ops.most_common()),
        inputs=[_value_info(v) for v in proto.graph.input], outputs=[_value_info(v) for v in proto.graph.output],
        file_bytes=out.stat().st_size, data_bytes=data_path.stat().st_size if data_path else 0,
        seconds=time.perf_counter() - t0, peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        metadata=meta)


def _external(model: nn.Module) -> bool:
    return sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_THRESHOLD


def export(recipe: Recipe, out: str | Path, *, model_path: str | None = None, dtype: str = "fp32",
           flavour: OpsFlavour = "plugin", logits: str = "all", max_seq_len: int | None = None, dense: bool = False,
           progress: Progress = lambda _: None, loaded=None) -> ExportResult:
    """Export `recipe`'s model to `out`; returns what was written. `loaded` reuses a loaded model."""
    t0 = time.perf_counter()
    out = Path(out)
    check_output_path(out)
    model, loaded, max_seq_len = _prepare(recipe, model_path, dtype, max_seq_len, dense, progress, loaded)
    example_len = min(max_seq_len, 2 * recipe.dhsa.block_size + 3)
    example = torch.randint(0, model.config.get_text_config().vocab_size, (2, example_len))
    dyn = {"input_ids": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=max_seq_len)}}
    progress(f"tracing ({flavour} ops, {dtype}, logits={logits}, seq <= {max_seq_len})")
    program = _trace(recipe, LogitsModel(model, logits), (example,), dyn, flavour, ["input_ids"], ["logits"])
    meta = _metadata(recipe, flavour, dtype, dense, loaded.source.description)
    for k, v in meta.items():
        program.model.metadata_props[k] = v
    external = _external(model)
    del model
    _save(program, out, external, progress)
    return _result(out, t0, meta)


def export_cached(recipe: Recipe, out_dir: str | Path, *, model_path: str | None = None, dtype: str = "fp32",
                  flavour: OpsFlavour = "plugin", logits: str = "last", max_seq_len: int | None = None,
                  dense: bool = False, decode: str | None = None, progress: Progress = lambda _: None,
                  loaded=None) -> ExportResult:
    """Export `recipe`'s model with a KV cache into the folder `out_dir` (model_folder.py has its layout):
    one graph (input_ids, past_key_values.N.key/value) -> (logits, present.N.key/value) whose prompt
    prefill runs DHSA and whose cached calls attend densely (onnx/cached_graph.py). decode="sparse": the
    cached calls (one token each) run DhsaDecodeAttention in the DHSA layers, and each such layer carries its
    chunk state as past.dhsa.N.* -> present.dhsa.N.* (decode_state.py)."""
    from . import model_folder

    decode = decode or recipe.dhsa.decode
    if decode not in ("dense", "sparse"):
        raise DHSAError(f"decode must be 'dense' or 'sparse', got {decode!r}")
    if decode == "sparse" and dense:
        decode = "dense"  # the dense baseline has no DHSA layer to decode sparsely
    t0 = time.perf_counter()
    out_dir = model_folder.check_output_folder(out_dir)
    model, loaded, max_seq_len = _prepare(recipe, model_path, dtype, max_seq_len, dense, progress, loaded, decode)
    text = model.config.get_text_config()
    layers, kv_heads, dim = text.num_hidden_layers, text.num_key_value_heads, text.head_dim
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=max_seq_len)
    past_len = torch.export.Dim("past", min=1, max=max_seq_len)
    kv_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    state_layers = tuple(i for i, t in enumerate(layer_types(model)) if recipe.dhsa.layers in ("all", t)) \
        if decode == "sparse" else ()
    wrapper = CachedLM(model, logits, state_layers)
    outputs = ["logits", *cached_graph.present_names(layers), *cached_graph.state_names("present", state_layers)]

    prompt = torch.randint(0, text.vocab_size, (2, min(max_seq_len, 2 * recipe.dhsa.block_size + 3)))
    progress(f"tracing the prefill ({flavour} ops, {dtype}, logits={logits}, prompt <= {max_seq_len})")
    prefill = _trace(recipe, wrapper, (prompt, []), ({0: batch, 1: seq}, []), flavour, ["input_ids"], outputs)

    past = [tuple(torch.randn(2, kv_heads, 7, dim, dtype=kv_dtype) for _ in range(2)) for _ in range(layers)]
    past_shapes = [({0: batch, 2: past_len}, {0: batch, 2: past_len})] * layers
    inputs = ["input_ids", *cached_graph.past_names(layers)]
    if state_layers:  # one token per cached call; the state's chunk count M is free
        chunks = torch.export.Dim("chunks", min=2, max=max_seq_len + 1)
        state = [(torch.tensor([[0, 4, 7, 7]] * 2, dtype=torch.int32), torch.randn(2, 3, dim)) for _ in state_layers]
        progress("tracing the cached step (one token, sparse decode in the DHSA layers)")
        decode_prog = _trace(recipe, wrapper, (prompt[:, :1], past, state),
                             ({0: batch}, past_shapes, [({0: batch, 1: chunks + 1}, {0: batch, 1: chunks})] *
                              len(state_layers)), flavour,
                             inputs + cached_graph.state_names("past", state_layers), outputs)
    else:
        progress("tracing the cached step (dense attention over the cache)")
        decode_prog = _trace(recipe, wrapper, (prompt[:, :3], past), ({0: batch, 1: seq}, past_shapes), flavour,
                             inputs, outputs)
    merged = cached_graph.merge(prefill.model, decode_prog.model, layers, state_layers)
    del prefill, decode_prog
    meta = _metadata(recipe, flavour, dtype, dense, loaded.source.description)
    meta.update(model_folder.cache_metadata(max_seq_len, decode, state_layers))
    for k, v in meta.items():
        merged.metadata_props[k] = v
    external = _external(model)

    def fill(folder: Path) -> None:
        _save(merged, folder / model_folder.MODEL_FILE, external, progress)
        model_folder.write_companions(folder, recipe, model, loaded.tokenizer, flavour, dtype, max_seq_len, meta)

    model_folder.publish(out_dir, fill)
    return _result(out_dir / model_folder.MODEL_FILE, t0, meta)
