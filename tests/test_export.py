"""dhsa-export: both flavours on the tiny models, ONNX checks, ORT parity, TensorRT-RTX parse+build,
bad inputs; and (slow) the real gemma3-270m export against PyTorch on a 1K passkey prompt."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from dhsa_export import attention, recipes, runtime
from dhsa_export.ops.spec import ALL_OPS

from .models import tiny, token_ids

EXPORT = [sys.executable, "-m", "dhsa_export.cli.export"]


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("flavour", ["plugin", "portable"])
def test_export_is_valid_onnx(exported, name, flavour):
    path = exported(name, flavour)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    typed = {v.name: v.type.tensor_type for v in list(model.graph.value_info) + list(model.graph.output)}
    dhsa_nodes = [n for n in model.graph.node if n.domain == "dhsa"]
    for node in dhsa_nodes:  # every dhsa output has a dtype and a rank
        for out in node.output:
            assert typed[out].elem_type != 0 and typed[out].HasField("shape"), (node.op_type, out)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dhsa.recipe"] == name and meta["dhsa.ops_flavour"] == flavour
    assert meta["dhsa.budget"] == str(recipes.load(name).dhsa.budget)
    if flavour == "plugin":
        # Selections are not shared in the tiny recipes: boundaries once, then one fused op per layer.
        assert {n.op_type for n in dhsa_nodes} == {"DhsaChunkBoundaries", "DhsaSelectAttention"}
        assert ("dhsa", 1) in {(o.domain, o.version) for o in model.opset_import}
        for node in dhsa_nodes:  # every attribute explicit, even those equal to a default
            spec = next(s for s in ALL_OPS if s.onnx_name == node.op_type)
            assert {a.name for a in node.attribute} == set(spec.attr_names)
    else:
        assert not dhsa_nodes


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_matches_pytorch_in_ort(exported, name, flavour, seed):
    """portable: stock ORT; plugin: ORT with the DHSA op library (CPU kernels)."""
    recipe, _ = tiny(name)
    _assert_ort_matches_pytorch(exported(name, flavour), name, recipe.dhsa, (17, 64, 200), seed)


def _assert_ort_matches_pytorch(path, name, dhsa, lengths, seed):
    _, model = tiny(name)
    session = runtime.ort_session(path)
    attention.enable_dhsa(model, dhsa)
    try:
        for seq in lengths:
            ids = token_ids(2, seq, seed + seq)
            with torch.no_grad():
                ref = model(ids).logits.numpy()
            got = session.run(None, {"input_ids": ids.numpy()})[0]
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() <= 1e-4, (seq, np.abs(got - ref).max())
    finally:
        attention.disable_dhsa(model)


@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_sliding_layers_left_dense_run_on_their_window_in_ort(exported, flavour, seed):
    """layers="global": each sliding layer's prefill is one windowed sparse attention in the graph (the dense
    form's L x L scores are gone), and ORT gives PyTorch's logits."""
    path = exported("tiny-gemma3", flavour, layers="global")
    recipe, model = tiny("tiny-gemma3")
    sliding = attention.layer_types(model).count("sliding")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "dhsa"]
    if flavour == "plugin":
        assert sorted(ops) == ["DhsaChunkBoundaries", "DhsaSelectAttention"] + ["DhsaSparseAttention"] * sliding
    _assert_ort_matches_pytorch(path, "tiny-gemma3", recipe.dhsa.replace(layers="global"), (5, 40, 200), seed)


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_plugin_attention_output_takes_the_query_buffer(exported, name, tmp_path):
    """Q feeds only the fused selection + attention, so ORT reuses its buffer for every layer's output."""
    from . import ort_ops

    path = exported(name, "plugin")
    layers = sum(n.op_type == "DhsaSelectAttention" for n in onnx.load(str(path)).graph.node)
    _, log = ort_ops.run_logged(path, {"input_ids": token_ids(1, 150, 0).numpy()}, tmp_path)
    assert layers > 0 and log.count(ort_ops.FUSED_IN_PLACE_LOG) == layers


def test_fp16_and_bf16_exports(tmp_path, seed):
    recipe, model = tiny("tiny-gemma3")
    ids = token_ids(1, 80, seed)
    attention.enable_dhsa(model, recipe.dhsa)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    attention.disable_dhsa(model)
    for dtype in ("fp16", "bf16"):
        path = tmp_path / f"{dtype}.onnx"
        r = subprocess.run(EXPORT + ["tiny-gemma3", "--ops", "portable", "--dtype", dtype, "--out", str(path)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
        weights = [i for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 2 and i.data_type in floats]
        want = onnx.TensorProto.FLOAT16 if dtype == "fp16" else onnx.TensorProto.BFLOAT16
        assert any(w.data_type == want for w in weights)
        if dtype == "fp16":  # every weight matrix fp16; the tied embedding / output table stored once
            assert all(w.data_type == want for w in weights), [w.name for w in weights if w.data_type != want]
            assert sum(model.config.vocab_size in w.dims for w in weights) == 1
        if dtype == "fp16":  # ORT's CPU provider has no bf16 kernels; bf16 is for CUDA / TensorRT
            got = runtime.ort_logits(runtime.ort_session(path))(ids.numpy()).astype(np.float32)
            cos = (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)
            assert cos > 0.999, (dtype, cos)


def _bad(args, tmp_path, expect):
    out = tmp_path / "bad.onnx"
    r = subprocess.run(EXPORT + args + ["--out", str(out)] if "--out" not in args else EXPORT + args,
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert lines and lines[-1].startswith("error: ") and expect in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".dhsa-export-*"))


@pytest.mark.parametrize("args,expect", [
    (["gemma7-3b"], "unknown model alias 'gemma7-3b'"),
    (["tiny-gemma2", "--budget", "20"], "budget 20 < local_tokens + global_tokens"),
    (["tiny-gemma2", "--block-size", "0"], "dhsa.block_size"),
    (["tiny-gemma2", "--max-seq-len", "8"], "--max-seq-len 8 is below the block size 16"),
    (["tiny-gemma2", "--boundary-method", "learned"], "needs predictor_path"),
])
def test_bad_parameters(args, expect, tmp_path):
    _bad(args, tmp_path, expect)


def test_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DHSA_MODELS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _bad(["gemma2-2b"], tmp_path, "no weights for gemma2-2b")


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    _bad([str(d)], tmp_path, "cannot tell a supported architecture (got 'llama'); supported: gemma2, gemma3_text")


def test_unwritable_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = subprocess.run(EXPORT + ["tiny-gemma2", "--out", str(ro / "m.onnx")], capture_output=True, text=True)
        if r.returncode == 0:  # running as root: permissions do not bind
            pytest.skip("root ignores directory permissions")
        assert r.returncode == 2 and "not writable" in r.stderr
    finally:
        ro.chmod(0o700)


def test_output_in_missing_folder(tmp_path):
    _bad(["tiny-gemma2", "--out", str(tmp_path / "no" / "m.onnx")], tmp_path, "does not exist")


def test_output_must_be_onnx(tmp_path):
    _bad(["tiny-gemma2", "--out", str(tmp_path / "m.txt")], tmp_path, "must end in .onnx")


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_270m_portable_passkey_matches_pytorch(gemma3_270m):
    """Real weights: ONNX Runtime on the gemma3-270m portable export (stock ops) gives PyTorch DHSA's
    next-token argmax at every position of a 1K passkey prompt, and the same greedy answer (the plugin
    export's logits and greedy tokens: test_check's fp32 gates)."""
    from dhsa_export import loading, niah

    recipe = recipes.load("gemma3-270m")
    path = gemma3_270m("portable")
    loaded = loading.load(recipe)
    prompt = niah.build_prompt(loaded.tokenizer, 1024, 0.5, "71432")
    ids = np.array([prompt.input_ids])
    attention.enable_dhsa(loaded.model, recipe.dhsa)
    ref_fn = runtime.torch_logits(loaded.model)
    ort_fn = runtime.ort_logits(runtime.ort_session(path))
    ref, got = ref_fn(ids), ort_fn(ids)
    assert (ref.argmax(-1) == got.argmax(-1)).all(), int((ref.argmax(-1) != got.argmax(-1)).sum())
    assert np.abs(ref - got).max() < 1e-2
    answer_ref = runtime.greedy(ref_fn, ids, 6)
    answer_ort = runtime.greedy(ort_fn, ids, 6)
    assert answer_ref == answer_ort
    assert "71432" in loaded.tokenizer.decode(answer_ort)
