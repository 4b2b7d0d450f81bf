"""The cached export's folder: what it holds, how it is written, and how it is opened and vetted.

    model.onnx (+ model.onnx.data)  (input_ids, past_key_values.N.key/value) -> (logits, present.N.key/value)
    genai_config.json               onnxruntime-genai's model and search settings
    tokenizer.json, ...             the model's tokenizer (absent for random-init test models)
    libdhsa_ort.so                  the DHSA op library (plugin flavour), named relative to the folder
    dhsa_export.json                what was exported from what, and digests of the tokenizer and library

onnxruntime-genai runs the folder as it is (`og.Model(folder)`); dhsa-generate and dhsa-check open it
through `open_folder`, which refuses a folder whose parts do not belong together.

`past_present_share_buffer` is off: the graph grows its cache by concatenation (the traced transformers
cache), so each step's present is a new tensor one token longer than its past. Sharing one max-length
buffer needs attention ops that write into the cache in place and read a separate valid length.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import DHSAError
from .files import check_writable_parent, sha256
from .native import ORT_LIBRARY, ort_library

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
RECORD = "dhsa_export.json"
TOKENIZER_FILE = "tokenizer.json"


def check_output_folder(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix == ".onnx" or out.is_file():
        raise DHSAError(f"--with-cache writes a folder; {out} is a file name (give a folder like out/gemma3-270m)")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD).is_file():
        raise DHSAError(f"{out} is a non-empty folder that holds no dhsa-export model; choose a new or empty folder")
    check_writable_parent(out)
    return out


def cache_metadata(context_length: int, decode: str = "dense", state_layers=()) -> dict[str, str]:
    """What a call with a cache behind it does (docs/ops.md, "Cached calls" and "Sparse decode")."""
    meta = {"dhsa.kv_cache": "past_key_values.N.key/value -> present.N.key/value, (B, Hkv, P, D), "
                             "empty past = prompt prefill",
            "dhsa.decode": decode, "dhsa.context_length": str(context_length)}
    if decode == "sparse":
        meta["dhsa.decode_state"] = ("past.dhsa.N.boundaries (B, M + 1) int32 and past.dhsa.N.chunk_sums (B, M, D) "
                                     "float32 -> present.dhsa.N.*, empty past = prompt prefill; one token per "
                                     "cached call")
        meta["dhsa.decode_layers"] = ",".join(str(i) for i in state_layers)
    return meta


def _eos_ids(model) -> list[int]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    return [int(e) for e in eos if e is not None]


def genai_config(model, flavour: str, context_length: int) -> dict:
    """onnxruntime-genai's genai_config.json for the cached graph."""
    text = model.config.get_text_config()
    num_layers = text.num_hidden_layers
    eos = _eos_ids(model)
    # 0: ONNX Runtime's own default, a thread per physical core. Without the key onnxruntime-genai 0.18
    # runs the CPU provider on one thread, twice the time on two cores (docs/performance.md, Generation).
    session = {"log_id": "dhsa-export", "intra_op_num_threads": 0, "provider_options": []}
    if flavour == "plugin":
        session["custom_ops_library"] = ORT_LIBRARY  # onnxruntime-genai resolves it against the folder
    return {
        "model": {
            "type": text.model_type,
            "bos_token_id": int(text.bos_token_id if text.bos_token_id is not None else 2),
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": int(text.pad_token_id if text.pad_token_id is not None else 0),
            "vocab_size": int(text.vocab_size),
            "context_length": int(context_length),
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": session,
                "head_size": int(text.head_dim),
                "hidden_size": int(text.hidden_size),
                "num_attention_heads": int(text.num_attention_heads),
                "num_hidden_layers": int(num_layers),
                "num_key_value_heads": int(text.num_key_value_heads),
                "inputs": {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": int(context_length),
                   "min_length": 0, "top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0,
                   "past_present_share_buffer": False, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }


def write_companions(folder: Path, recipe, model, tokenizer, flavour: str, dtype: str, context_length: int,
                     metadata: dict[str, str]) -> None:
    """Everything in the folder but the ONNX model."""
    (folder / GENAI_CONFIG).write_text(json.dumps(genai_config(model, flavour, context_length), indent=2) + "\n")
    record = {"dhsa_export": __version__, "recipe": recipe.name, "ops_flavour": flavour, "dtype": dtype,
              "context_length": context_length, "decode": metadata.get("dhsa.decode", "dense"), "metadata": metadata,
              "vocab_size": int(model.config.get_text_config().vocab_size), "tokenizer": None, "op_library": None}
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        record["tokenizer"] = {"file": TOKENIZER_FILE, "sha256": sha256(folder / TOKENIZER_FILE),
                               "vocab_size": len(tokenizer)}
    if flavour == "plugin":
        shutil.copyfile(ort_library(), folder / ORT_LIBRARY)
        record["op_library"] = {"file": ORT_LIBRARY, "sha256": sha256(folder / ORT_LIBRARY)}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def publish(out: Path, fill: Callable[[Path], None]) -> None:
    """fill(tmp) writes the folder's files into a private folder beside `out`, which then takes `out`'s place
    (an earlier export there is replaced only once the new one is complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    old = None
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class ModelFolder:
    path: Path
    config: dict
    record: dict
    library: Path | None
    tokenizer_path: Path | None

    @property
    def onnx_path(self) -> Path:
        return self.path / self.config["model"]["decoder"]["filename"]

    @property
    def context_length(self) -> int:
        return int(self.config["model"]["context_length"])

    @property
    def num_layers(self) -> int:
        return int(self.config["model"]["decoder"]["num_hidden_layers"])

    @property
    def decode(self) -> str:
        """"dense", or "sparse" (cached calls of one token carrying DHSA chunk state)."""
        return self.record.get("decode", "dense")

    @property
    def eos_ids(self) -> list[int]:
        eos = self.config["model"]["eos_token_id"]
        return list(eos) if isinstance(eos, list) else [eos]

    def tokenizer(self):
        """The folder's tokenizer (transformers), or None for a model exported without one."""
        if self.tokenizer_path is None:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)


def is_model_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / RECORD).is_file()


def open_folder(path: str | Path) -> ModelFolder:
    """Open a cached export, refusing one whose model, op library or tokenizer is missing or foreign."""
    path = Path(path)
    if not path.is_dir():
        raise DHSAError(f"{path} is not a folder; give the folder dhsa-export --with-cache wrote")
    for name in (RECORD, GENAI_CONFIG):
        if not (path / name).is_file():
            raise DHSAError(f"{path} has no {name}: not a dhsa-export --with-cache folder (re-export it)")
    try:
        record = json.loads((path / RECORD).read_text())
        config = json.loads((path / GENAI_CONFIG).read_text())
        onnx_name = config["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError) as err:
        raise DHSAError(f"{path}: unreadable {RECORD} or {GENAI_CONFIG} ({err}); re-export the folder") from None
    if not (path / onnx_name).is_file():
        raise DHSAError(f"{path} has no {onnx_name}; re-export the folder")
    library = None
    lib = record.get("op_library")
    if lib:
        library = path / lib["file"]
        if not library.is_file():
            raise DHSAError(f"{path} lacks its DHSA op library {lib['file']} (the model's dhsa ops need it): copy "
                            f"it back from the dhsa_export package (dhsa_export/lib/{ORT_LIBRARY}) or re-export")
    tokenizer_path = None
    tok = record.get("tokenizer")
    if tok:
        tokenizer_path = path / tok["file"]
        if not tokenizer_path.is_file():
            raise DHSAError(f"{path} lacks its tokenizer {tok['file']}; re-export the folder or pass token ids")
        if sha256(tokenizer_path) != tok["sha256"]:
            raise DHSAError(f"{tokenizer_path} is not the tokenizer this model was exported with; restore it "
                            f"(re-export the folder) or use the model's own tokenizer")
    elif (path / TOKENIZER_FILE).is_file():
        raise DHSAError(f"{path} holds a {TOKENIZER_FILE} but the model was exported without a tokenizer: it "
                        f"cannot be this model's; remove it and pass token ids")
    return ModelFolder(path, config, record, library, tokenizer_path)
