"""Run exported models: ONNX Runtime sessions (with the DHSA op library when needed), and the same
logits / greedy-decoding interface over the PyTorch model, so checks compare like with like."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from .errors import DHSAError

def cache_kwargs(module, cache) -> dict:
    """The keyword under which `module.forward` takes a KV cache: transformers renamed `past_key_values`
    to `cache` during 5.x and deprecates the old name."""
    params = inspect.signature(module.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


LogitsFn = Callable[[np.ndarray], np.ndarray]  # (B, L) int64 -> (B, L or 1, V) float32


def uses_dhsa_ops(path: str | Path) -> bool:
    """True when the graph holds bare `dhsa` nodes (a plugin-flavour export)."""
    from .onnx.cached_graph import all_nodes

    model = onnx.load(str(path), load_external_data=False)
    return any(n.domain == "dhsa" for n in all_nodes(model.graph))


def model_metadata(path: str | Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def ort_session(path: str | Path, provider: str = "cpu", threads: int | None = None, arena: bool = True,
                library: Path | None = None):
    """An InferenceSession for an exported model; registers the DHSA op library (`library`, else the
    installed one) when the graph needs it.
    arena=False: CPU buffers go back to the system after each run instead of staying in ONNX Runtime's
    arena (a checker that runs several prompt lengths keeps only what the current run needs)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DHSAError(f"ONNX file {path} not found")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = arena
    if library is not None or uses_dhsa_ops(path):
        from .native import ort_library

        opts.register_custom_ops_library(str(library or ort_library()))
    providers = {"cpu": ["CPUExecutionProvider"],
                 "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}[provider]
    if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DHSAError("--provider cuda needs onnxruntime-gpu (pip install onnxruntime-gpu); this onnxruntime "
                        f"offers {ort.get_available_providers()}")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as err:  # noqa: BLE001 - ORT raises several unrelated types
        raise DHSAError(f"ONNX Runtime cannot open {path}: {str(err).splitlines()[0]}") from None


def ort_logits(session) -> LogitsFn:
    name = session.get_inputs()[0].name

    def run(ids: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(ids, dtype=np.int64)})[0]

    return run


def torch_logits(model) -> LogitsFn:
    @torch.no_grad()
    def run(ids: np.ndarray) -> np.ndarray:
        out = model(input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)), use_cache=False).logits
        return out.float().numpy()

    return run


class TorchLM:
    """A transformers causal LM split at its head: final hidden states for a whole sequence, and the
    logits of any slice of them (lm_head, then the final soft-cap where the model has one), so that
    vocabulary-sized logits are only ever made a few positions at a time."""

    def __init__(self, model):
        self.model = model
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.vocab_size = model.get_output_embeddings().weight.shape[0]

    @torch.no_grad()
    def hidden(self, ids: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        return self.model.model(input_ids=ids, use_cache=False).last_hidden_state

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.model.get_output_embeddings()(hidden)
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out.float()

    @torch.no_grad()
    def cached_greedy(self, ids: np.ndarray, new_tokens: int, forced: list[int] | None = None
                      ) -> tuple[list[int], list[np.ndarray]]:
        """Greedy decoding as a cached deployment runs it: one prefill of the prompt (DHSA when enabled),
        then one cached step per token (dense over the cache). Returns the argmax tokens and each step's
        (V,) logits; with `forced`, those tokens are fed instead (teacher forcing)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        step = torch.from_numpy(np.asarray(ids, dtype=np.int64).reshape(1, -1))
        tokens, rows = [], []
        for i in range(new_tokens):
            hidden = self.model.model(input_ids=step, use_cache=True, **cache_kwargs(self.model.model, cache))
            hidden = hidden.last_hidden_state
            row = self.logits(hidden[:, -1:])[0, -1]
            rows.append(row.numpy())
            tokens.append(int(row.argmax()))
            step = torch.tensor([[forced[i] if forced is not None else tokens[-1]]])
        return tokens, rows

    def greedy(self, ids: np.ndarray, new_tokens: int) -> list[int]:
        """Greedy decoding by full re-runs, each step's logits for the last position only."""
        seq = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        out = []
        for _ in range(new_tokens):
            nxt = int(self.logits(self.hidden(seq)[:, -1:])[0, -1].argmax())
            out.append(nxt)
            seq = np.concatenate([seq, [[nxt]]], axis=1)
        return out


def greedy(logits: LogitsFn, ids: np.ndarray, new_tokens: int) -> list[int]:
    """Greedy decoding by full re-runs (the exported graph has no KV cache): each step is a prefill."""
    seq = np.asarray(ids, dtype=np.int64).reshape(1, -1)
    out = []
    for _ in range(new_tokens):
        nxt = int(logits(seq)[0, -1].argmax())
        out.append(nxt)
        seq = np.concatenate([seq, [[nxt]]], axis=1)
    return out
