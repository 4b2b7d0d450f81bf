"""DHSA as a transformers attention implementation (`attn_implementation="dhsa"`).

`enable_dhsa(model, config)` registers the implementation, attaches a runtime to every attention
module and switches the model to it; no model code is copied or patched. Prefill (a forward whose
queries are all the keys) runs the `torch.ops.dhsa` ops (boundaries, then selection and attention in
one op, or as two where selections are shared across layers); any step with a KV cache behind it
(decode, continuation), and any layer type DHSA leaves out, runs dense attention with transformers'
masks (`dense_attention_forward`), except the prefill of a sliding-window layer left out, which attends
to each query block's window through the sparse attention op (`_windowed_prefill`: dense attention's
result without an L x L score matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .boundary_predictor import BoundaryPredictor, load_predictor
from . import decode_state
from .config import DHSAConfig
from .errors import DHSAError
from .ops import library as ops
from .ops import reference
from .ops.reference import attended_pairs

ATTN_IMPLEMENTATION = "dhsa"
SUPPORTED_MODEL_TYPES = ("gemma2", "gemma3_text")


@dataclass
class DHSARuntime:
    """What every attention module of one model shares: parameters, predictor, per-forward state."""

    config: DHSAConfig
    first_layer: int
    last_layer: int
    predictor: BoundaryPredictor | None = None
    # Per-forward sharing across layers: reset by the first DHSA layer, emptied by the last (so no
    # tensor outlives its forward, and a traced model holds no fake tensors afterwards).
    shared: dict = field(default_factory=dict)
    check_padding: bool = True
    # When a dict: layer index -> (attended, visible) (query, key) pairs of the last prefill, for reports.
    sparsity: dict | None = None
    # Cached steps: "dense" over the cache, or "sparse" (DHSA selection per generated token, docs/ops.md
    # "Sparse decode"). Sparse decode keeps, per DHSA layer, the chunk state of its cache
    # (decode_state.py: boundaries, chunk sums), set by the prompt's prefill and extended by every step.
    decode: str = "dense"
    chunk_state: dict = field(default_factory=dict)

    def uses_dhsa(self, layer_type: str) -> bool:
        return self.config.layers in ("all", layer_type)

    def boundaries(self, key: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        scores = None
        method = "fixed" if cfg.boundary_method == "fixed" else "similarity"
        if cfg.boundary_method == "learned":
            scores, method = self.predictor(key), "scores"
        return ops.chunk_boundaries(key, scores, method, cfg.block_size, cfg.chunk_beta, cfg.fixed_chunk_size,
                                    cfg.boundary_window, cfg.radius, cfg.threshold, cfg.instruction_tokens)


def _layer_type(sliding_window) -> str:
    return "sliding" if sliding_window else "global"


def _causal_mask(q_len: int, k_len: int, sliding_window, device) -> torch.Tensor:
    """(1, 1, q, k) bool mask of the last q of k positions (causal, optional sliding window)."""
    q = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    allowed = k <= q
    if sliding_window:
        allowed &= k > q - sliding_window
    return allowed[None, None]


def dense_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            sliding_window=None, softcap=None, **kwargs):
    """Dense attention of the layers and calls DHSA leaves dense (cached steps, excluded layer types), with
    the query heads grouped by their kv head: (B, Hkv, G*S, D) x (B, Hkv, D, K). transformers' sdpa and eager
    paths repeat every kv head G times first, which an exported graph does as an Expand and a Transpose
    copying the whole cache per layer and step; here the cache is read in place."""
    b, hq, s, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    groups = hq // hkv
    scale = scaling if scaling is not None else d**-0.5
    scores = torch.matmul(query.reshape(b, hkv, groups * s, d), key.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.reshape(b, hkv, groups, s, k_len)
    mask = attention_mask
    if mask is None:
        mask = _causal_mask(s, k_len, sliding_window, query.device)
    mask = mask[:, :, None, :, -k_len:]  # (B or 1, 1, 1, S, K): the same for every head
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    out = torch.matmul(probs.reshape(b, hkv, groups * s, k_len), value)
    return out.reshape(b, hq, s, d).transpose(1, 2).contiguous(), None


def _check_unpadded(attention_mask, q_len: int, sliding_window, device) -> None:
    """DHSA prefill applies causal/sliding masks itself; a padded batch would be silently wrong."""
    if attention_mask is None:
        return
    expected = _causal_mask(q_len, q_len, sliding_window, device)
    if attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0
    if not torch.equal(attention_mask.expand(-1, -1, q_len, q_len)[:, :1], expected.expand(
            attention_mask.shape[0], 1, q_len, q_len)):
        raise DHSAError("DHSA prefill got a padded batch (attention_mask with zeros); pass unpadded "
                        "sequences of equal length, or run one sequence per batch")


def dhsa_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, softcap=None, **kwargs):
    rt: DHSARuntime | None = getattr(module, "dhsa_runtime", None)
    if rt is None:
        raise DHSAError("attn_implementation 'dhsa' needs dhsa_export.attention.enable_dhsa(model, config)")
    layer_type = _layer_type(sliding_window)
    q_len, k_len = query.shape[2], key.shape[2]
    if q_len == 1 < k_len and rt.decode == "sparse" and module.layer_idx in rt.chunk_state:
        return _sparse_decode(rt, module, query, key, value, scaling, sliding_window, softcap)
    if q_len == k_len and sliding_window and not rt.uses_dhsa(layer_type):
        return _windowed_prefill(rt, module, query, key, value, attention_mask, scaling, sliding_window, softcap)
    if q_len != k_len or not rt.uses_dhsa(layer_type):
        return dense_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                       dropout=dropout, sliding_window=sliding_window, softcap=softcap, **kwargs)
    cfg = rt.config
    shared = rt.shared
    if module.layer_idx == rt.first_layer:
        shared.clear()
    if rt.check_padding and ("checked", layer_type) not in shared and not torch.compiler.is_compiling():
        _check_unpadded(attention_mask, q_len, sliding_window, query.device)
        shared[("checked", layer_type)] = True

    window = int(sliding_window or 0)
    scale = float(scaling if scaling is not None else module.head_dim**-0.5)
    selection = shared.get(("indices", layer_type)) if cfg.share_indices else None
    out = boundaries = None
    if selection is None:
        boundaries = shared.get("boundaries") if cfg.share_boundaries else None
        if boundaries is None:
            boundaries = rt.boundaries(key)
            if cfg.share_boundaries:
                shared["boundaries"] = boundaries
        if cfg.share_indices:
            selection = ops.select_keys(query, key, boundaries, cfg.block_size, cfg.budget, cfg.local_tokens,
                                        cfg.global_tokens, window, cfg.instruction_tokens)
            shared[("indices", layer_type)] = selection
        else:  # one op: the GPU kernels overlap the selection with the attention's dense blocks
            out = ops.select_attention(query, key, value, boundaries, cfg.block_size, cfg.budget, cfg.local_tokens,
                                       cfg.global_tokens, scale, float(softcap or 0.0), window,
                                       cfg.instruction_tokens)
    if rt.decode == "sparse":  # the prompt's chunks and their key sums, for the cached steps
        if module.layer_idx == rt.first_layer:
            rt.chunk_state.clear()
        if boundaries is None:
            boundaries = shared.get("boundaries") if cfg.share_boundaries else rt.boundaries(key)
        rt.chunk_state[module.layer_idx] = decode_state.prompt_state(key, boundaries)
    if out is None:
        out = ops.sparse_attention(query, key, value, *selection, cfg.block_size, scale, float(softcap or 0.0),
                                   window, cfg.instruction_tokens)
    if rt.sparsity is not None and not torch.compiler.is_compiling():
        if selection is None:  # the fused op keeps its selection inside: make it again for the count
            selection = ops.select_keys(query, key, boundaries, cfg.block_size, cfg.budget, cfg.local_tokens,
                                        cfg.global_tokens, window, cfg.instruction_tokens)
        rt.sparsity[module.layer_idx] = attended_pairs(*selection, q_len, cfg.block_size, window,
                                                       cfg.instruction_tokens)
    if module.layer_idx == rt.last_layer:
        shared.clear()
    return out.transpose(1, 2).contiguous(), None


def window_selection(batch: int, seq: int, block_size: int, window: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """DhsaSparseAttention's (indices, counts) that give each query block every key of its window: (B, nQB,
    window + block_size - 1) int32 ascending, -1 past the count, and (B, nQB) int32."""
    _, _, lo, hi = reference.block_ranges(seq, block_size, window, 0, device)
    j = torch.arange(window + block_size - 1, device=device)
    counts = hi - lo
    indices = torch.where(j < counts[:, None], lo[:, None] + j, -1)
    return (indices.to(torch.int32)[None].expand(batch, -1, -1).contiguous(),
            counts.to(torch.int32)[None].expand(batch, -1).contiguous())


def _windowed_prefill(rt: DHSARuntime, module, query, key, value, attention_mask, scaling, sliding_window, softcap):
    """The prefill of a sliding-window layer DHSA leaves dense, as sparse attention over each query block's
    whole window: the keys and the result of dense attention with the window mask, in O(L * W) time and
    memory. The dense form scores all L x L pairs, which at long prompts no runtime should hold (and from
    2^31 elements ONNX Runtime's CUDA elementwise kernels refuse)."""
    b, _, q_len, _ = query.shape
    if rt.check_padding and not torch.compiler.is_compiling():
        _check_unpadded(attention_mask, q_len, sliding_window, query.device)
    window = int(sliding_window)
    scale = float(scaling if scaling is not None else module.head_dim**-0.5)
    indices, counts = window_selection(b, q_len, rt.config.block_size, window, query.device)
    out = ops.sparse_attention(query, key, value, indices, counts, rt.config.block_size, scale,
                               float(softcap or 0.0), window, 0)
    return out.transpose(1, 2).contiguous(), None


def _sparse_decode(rt: DHSARuntime, module, query, key, value, scaling, sliding_window, softcap):
    """One generated token's DHSA (torch.ops.dhsa.decode_attention) over the cache, its layer's chunk
    state extended by the new key first."""
    cfg = rt.config
    chunk = reference.decode_chunk_size(cfg.block_size, cfg.chunk_beta)
    boundaries, sums = decode_state.step_state(*rt.chunk_state[module.layer_idx], key[:, :, -1:], chunk)
    rt.chunk_state[module.layer_idx] = (boundaries, sums)
    window = int(sliding_window or 0)
    scale = float(scaling if scaling is not None else module.head_dim**-0.5)
    out = ops.decode_attention(query, key, value, boundaries, sums, cfg.step_budget, cfg.local_tokens,
                               cfg.global_tokens, scale, float(softcap or 0.0), window)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    AttentionInterface.register(ATTN_IMPLEMENTATION, dhsa_attention_forward)
    # transformers builds masks only for registered mask functions; the dense (decode) path needs sdpa's.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def attention_modules(model):
    """The self-attention modules (those with a layer_idx and q/k/v projections), in layer order."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]
    return sorted(mods, key=lambda m: m.layer_idx)


def layer_types(model) -> list[str]:
    cfg = _text_config(model)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    return ["sliding" if t == "sliding_attention" else "global" for t in types]


def check_supported(model) -> None:
    model_type = getattr(_text_config(model), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DHSAError(f"model type {model_type!r} is not supported; supported: Gemma2ForCausalLM (gemma2), "
                        f"Gemma3ForCausalLM (gemma3_text)")


def enable_dhsa(model, config: DHSAConfig, predictor: BoundaryPredictor | None = None,
                decode: str | None = None) -> DHSARuntime:
    """Switch `model` to DHSA attention with `config`; returns the shared runtime. decode="sparse" makes
    cached single-token steps sparse too (docs/ops.md, "Sparse decode"); None: config.decode."""
    decode = decode or config.decode
    if decode not in ("dense", "sparse"):
        raise DHSAError(f"decode must be 'dense' or 'sparse', got {decode!r}")
    check_supported(model)
    register()
    text = _text_config(model)
    types = layer_types(model)
    dhsa_layers = [i for i, t in enumerate(types) if config.layers in ("all", t)]
    if not dhsa_layers:
        raise DHSAError(f"layers={config.layers!r} selects no layer of this model (layer types: {sorted(set(types))})")
    if config.boundary_method == "learned" and predictor is None:
        predictor = load_predictor(config.predictor_path, text.num_key_value_heads * text.head_dim,
                                   window=config.boundary_window)
    rt = DHSARuntime(config=config, first_layer=dhsa_layers[0], last_layer=dhsa_layers[-1], predictor=predictor,
                     decode=decode)
    for module in attention_modules(model):
        module.dhsa_runtime = rt
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if predictor is not None:
        predictor.to(next(model.parameters()).device)
    return rt


def dense_implementation(model) -> str:
    """The dense implementation DHSA is compared against: eager for Gemma2 (soft-capped logits), else sdpa."""
    return "eager" if getattr(_text_config(model), "attn_logit_softcapping", None) else "sdpa"


def disable_dhsa(model) -> None:
    model.set_attn_implementation(dense_implementation(model))
