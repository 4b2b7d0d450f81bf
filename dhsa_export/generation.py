"""Greedy generation from a cached export folder: onnxruntime-genai when installed, else the project's own
loop on plain ONNX Runtime. Both give a `Generation` (tokens, time to first token, decode speed, peak
RSS); dhsa-generate, dhsa-check and the benchmarks all run through here.

The own loop keeps the cache as ONNX Runtime values bound to the session (IO binding): a step's present
tensors are the next step's past without a copy through NumPy, on the CPU and on the GPU alike.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import DHSAError
from .model_folder import ModelFolder

OnToken = Callable[[int], None]
RUNTIMES = ("auto", "genai", "ort")


@dataclass
class Generation:
    tokens: list[int]
    prompt_tokens: int
    runtime: str
    first_token_s: float  # prompt prefill and the first token's choice
    decode_s: float  # every later token
    peak_rss_mib: float
    step_logits: list[np.ndarray] = field(default_factory=list)  # (V,) float32 per step, when asked for

    @property
    def decode_tokens_per_s(self) -> float | None:
        n = len(self.tokens) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else None


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_prompt(folder: ModelFolder, prompt_tokens: int, max_new_tokens: int) -> None:
    """The graph was traced for at most context_length positions: refuse longer runs before they start."""
    need = prompt_tokens + max_new_tokens
    if prompt_tokens < 1:
        raise DHSAError("the prompt is empty; give at least one token")
    if need > folder.context_length:
        raise DHSAError(f"prompt ({prompt_tokens} tokens) + {max_new_tokens} new tokens = {need} exceeds the "
                        f"model's context of {folder.context_length}; shorten the prompt, lower --max-new-tokens, "
                        f"or re-export with a larger --max-seq-len")


def _float32(value) -> np.ndarray:
    """An ONNX Runtime value as float32 NumPy; bfloat16 (which NumPy lacks) goes through DLPack and torch."""
    if value.data_type() == "tensor(bfloat16)":
        import torch

        return torch.from_dlpack(value._ortvalue.to_dlpack()).float().numpy()
    return value.numpy().astype(np.float32, copy=False)


class OrtLoop:
    """The cached graph on plain ONNX Runtime, one sequence at a time."""

    name = "onnxruntime"

    def __init__(self, folder: ModelFolder, provider: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        from .runtime import ort_session

        self.folder, self.provider = folder, provider
        self.session = ort_session(folder.onnx_path, provider, threads=threads, library=folder.library)
        self.device = "cuda" if provider == "cuda" else "cpu"
        inputs = [i for i in self.session.get_inputs() if i.name != "input_ids"]
        # The KV cache, then (sparse decode) the DHSA layers' chunk state, in the order of the outputs.
        self.past_names = [i.name for i in inputs]
        self.present_names = [o.name for o in self.session.get_outputs()[1:]]
        self._empties = [_empty_input(i) for i in inputs]

    def _first_past(self) -> list:
        return [make() for make in self._empties]

    def _run(self, ids: np.ndarray, past: list) -> tuple[np.ndarray, list]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        for name, value in zip(self.past_names, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return _float32(outs[0])[0, -1], outs[1:]

    def generate(self, ids: Sequence[int] | np.ndarray, max_new_tokens: int, *, on_token: OnToken | None = None,
                 forced: Sequence[int] | None = None, keep_logits: bool = False, stop_at_eos: bool = True) -> Generation:
        """Greedy tokens after `ids`; with `forced`, those tokens are fed instead of the argmax (teacher
        forcing), and the argmax of each step is still what `tokens` reports."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        check_prompt(self.folder, ids.shape[1], max_new_tokens)
        eos = set(self.folder.eos_ids) if stop_at_eos and forced is None else set()
        t0 = time.perf_counter()
        past = self._first_past()
        tokens, logits_kept, first = [], [], 0.0
        step_ids = ids
        for step in range(max_new_tokens):
            logits, past = self._run(step_ids, past)
            nxt = int(logits.argmax())
            tokens.append(nxt)
            if keep_logits:
                logits_kept.append(logits)
            if step == 0:
                first = time.perf_counter() - t0
            if on_token:
                on_token(nxt)
            if nxt in eos:
                break
            step_ids = np.array([[forced[step] if forced is not None else nxt]], dtype=np.int64)
        total = time.perf_counter() - t0
        return Generation(tokens, ids.shape[1], f"{self.name} {self.provider}", first, total - first, _peak_rss_mib(),
                          logits_kept)


def _empty_input(arg):
    """An empty past for one cache input, batch 1: the first free axis after the batch is 0 (the cached
    positions, or sparse decode's chunk count)."""
    import onnxruntime as ort

    shape, zeroed = [1], False
    for d in arg.shape[1:]:
        if isinstance(d, int):
            shape.append(d)
        else:
            shape.append(1 if zeroed else 0)
            zeroed = True
    elem = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32}.get(arg.type)
    if elem is not None:
        return lambda: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=elem))
    return lambda: ort.OrtValue.ortvalue_from_shape_and_type(shape, 16)  # bfloat16: NumPy has no such type


class GenaiLoop:
    """The folder on onnxruntime-genai (og.Model / og.Generator), greedy search."""

    name = "onnxruntime-genai"

    def __init__(self, folder: ModelFolder, provider: str = "cpu", threads: int | None = None):
        import onnxruntime_genai as og

        self.og, self.folder, self.provider = og, folder, provider
        config = og.Config(str(folder.path))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        if provider == "cuda":
            config.clear_providers()
            config.append_provider("cuda")
        try:
            self.model = og.Model(config)
        except Exception as err:  # noqa: BLE001 - onnxruntime-genai raises RuntimeError with ORT's message
            raise DHSAError(f"onnxruntime-genai cannot open {folder.path}: {str(err).splitlines()[0]}") from None

    def generate(self, ids: Sequence[int] | np.ndarray, max_new_tokens: int, *, on_token: OnToken | None = None,
                 keep_logits: bool = False) -> Generation:
        ids = np.asarray(ids, dtype=np.int32).reshape(1, -1)
        check_prompt(self.folder, ids.shape[1], max_new_tokens)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=ids.shape[1] + max_new_tokens, do_sample=False, num_beams=1)
        t0 = time.perf_counter()
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(ids)
        tokens, logits_kept, first = [], [], 0.0
        while not gen.is_done():
            if keep_logits:
                logits_kept.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
            gen.generate_next_token()
            nxt = int(gen.get_next_tokens()[0])
            tokens.append(nxt)
            if len(tokens) == 1:
                first = time.perf_counter() - t0
            if on_token:
                on_token(nxt)
        total = time.perf_counter() - t0
        return Generation(tokens, ids.shape[1], f"{self.name} {self.provider}", first, total - first, _peak_rss_mib(),
                          logits_kept)


def genai_available() -> bool:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return False
    return True


def open_loop(folder: ModelFolder, runtime: str = "auto", provider: str = "cpu", threads: int | None = None):
    """onnxruntime-genai for `auto` when it is installed (and offers the provider), else the own loop."""
    if runtime not in RUNTIMES:
        raise DHSAError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "genai" and not genai_available():
        raise DHSAError("--runtime genai needs onnxruntime-genai (pip install onnxruntime-genai, or "
                        "onnxruntime-genai-cuda for --provider cuda)")
    if runtime == "genai" and folder.decode == "sparse":
        raise DHSAError(f"{folder.path} decodes sparsely: its cached calls carry DHSA chunk state beside the KV "
                        f"cache, which onnxruntime-genai cannot feed back; use --runtime ort (or auto)")
    if runtime == "genai" or (runtime == "auto" and genai_available() and provider == "cpu" and
                              folder.decode == "dense"):
        return GenaiLoop(folder, provider, threads)
    return OrtLoop(folder, provider, threads)
