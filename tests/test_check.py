"""dhsa-check compare: passing deployments, damaged ones (with the first diverging layer named), bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from .damage import perturb_layer

CHECK = [sys.executable, "-m", "dhsa_export.cli.check", "compare"]


def run(args, **kw):
    return subprocess.run(CHECK + args, capture_output=True, text=True, **kw)


def _report(folder):
    return json.loads((folder / "report.json").read_text())


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("flavour", ["plugin", "portable"])
def test_fp32_exports_pass_the_gates(exported, name, flavour, tmp_path):
    r = run([name, "--onnx", str(exported(name, flavour)), "--layers", "--out", str(tmp_path)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = _report(tmp_path)
    assert rep["passed"] and rep["logits"]["cosine"] >= 0.9999 and rep["logits"]["top1"] == 1.0
    assert rep["logits"]["greedy"] == 1.0 and len(rep["layers"]) == (4 if name == "tiny-gemma2" else 6)
    assert (tmp_path / "report.md").read_text().startswith("# dhsa-check compare")


def test_streamed_logits_metrics_match_direct_computation(seed):
    from dhsa_export.check import logits_metrics

    rng = np.random.default_rng(seed)
    refs = [rng.normal(size=(2, 37, 50)).astype(np.float32), rng.normal(size=(1, 5, 50)).astype(np.float32)]
    gots = [r + rng.normal(scale=0.3, size=r.shape).astype(np.float32) for r in refs]
    ref = np.concatenate([r.reshape(-1, 50) for r in refs]).astype(np.float64)
    got = np.concatenate([g.reshape(-1, 50) for g in gots]).astype(np.float64)
    lr = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    lg = got - np.log(np.exp(got).sum(-1, keepdims=True))
    want = dict(cosine=(ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got),
                norm_ratio=np.linalg.norm(got) / np.linalg.norm(ref), max_abs=np.abs(got - ref).max(),
                max_rel=np.abs(got - ref).max() / np.abs(ref).max(), top1=(ref.argmax(-1) == got.argmax(-1)).mean(),
                kl=(np.exp(lr) * (lr - lg)).sum(-1).mean())
    for rows in (1, 7, 128):
        m = logits_metrics(refs, gots, rows=rows)
        for key, value in want.items():
            assert getattr(m, key) == pytest.approx(value, rel=1e-9, abs=1e-12), (rows, key)


def test_polygraphy_comparator(exported, tmp_path):
    r = run(["tiny-gemma3", "--onnx", str(exported("tiny-gemma3", "plugin")), "--polygraphy", "--greedy-tokens", "4",
             "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    gates = {g["name"]: g["passed"] for g in _report(tmp_path)["gates"]}
    assert gates["polygraphy.compare_accuracy"] is True


def test_fp16_export_on_ort_cpu(exported, tmp_path):
    path = exported("tiny-gemma2", "plugin", dtype="fp16")
    r = run(["tiny-gemma2", "--onnx", str(path), "--out", str(tmp_path)])
    rep = _report(tmp_path)
    assert rep["precision"] == "fp16"
    assert r.returncode == 0, r.stdout[-2000:]
    assert rep["logits"]["cosine"] >= 0.99 and rep["logits"]["top1"] >= 0.99


def test_damaged_weight_names_first_diverging_layer(exported, tmp_path):
    bad = tmp_path / "damaged.onnx"
    perturb_layer(exported("tiny-gemma2", "plugin"), bad, layer=2)
    r = run(["tiny-gemma2", "--onnx", str(bad), "--layers", "--greedy-tokens", "4", "--out", str(tmp_path / "rep")])
    assert r.returncode == 1
    assert "first diverging layer: 2" in r.stderr
    rep = _report(tmp_path / "rep")
    assert rep["first_diverging_layer"] == 2
    cos = {i: m["cosine"] for i, m in rep["layers"]}
    assert cos[0] > 0.99999 and cos[1] > 0.99999 and cos[2] < 0.9999


@pytest.mark.parametrize("name,layer", [("tiny-gemma2", 1), ("tiny-gemma3", 5)])
def test_a_relative_1e_3_weight_change_fails_and_names_its_layer(exported, tmp_path, name, layer, seed):
    """The fp32 gates sit between float32 noise and a 1e-3 relative change of one layer's value weights."""
    bad = tmp_path / "damaged.onnx"
    perturb_layer(exported(name, "plugin"), bad, layer=layer, proj="v_proj", relative=1e-3, seed=seed)
    r = run([name, "--onnx", str(bad), "--layers", "--greedy-tokens", "0", "--out", str(tmp_path / "rep")])
    assert r.returncode == 1, r.stdout[-2000:]
    fail = r.stderr.strip().splitlines()[-1]
    assert fail.startswith("FAIL: ") and f"layer{layer}.attention.rel_error = " in fail, fail
    assert fail.endswith(f"first diverging layer: {layer}"), fail
    rep = _report(tmp_path / "rep")
    errors = {i: m["rel_error"] for i, m in rep["layers"]}
    assert all(errors[i] < 1e-5 for i in errors if i < layer), errors
    assert errors[layer] > 3e-4, errors


def test_gate_values_never_print_as_their_threshold():
    from dhsa_export.check import GateResult, _fmt_pair

    for value, threshold in ((0.99989999, 0.9999), (1.00001e-4, 1e-4), (0.999999999997, 0.9999999999971)):
        a, b = _fmt_pair(value, threshold)
        assert a != b and float(a) != float(b), (a, b)
    g = GateResult("logits.rel_error", 1.00001e-4, 1e-4, False, at_most=True)
    assert g.describe() == "logits.rel_error = 0.000100001 (needs <= 0.0001)"


def test_wrong_dhsa_attribute_is_caught(exported, tmp_path):
    path = exported("tiny-gemma2", "plugin", budget=32)  # recipe says 64
    r = run(["tiny-gemma2", "--onnx", str(path), "--layers", "--greedy-tokens", "4", "--out", str(tmp_path)])
    assert r.returncode == 1 and "first diverging layer: 0" in r.stderr


def _bad(args, expect, env=None):
    import os

    r = run(args, env=None if env is None else {**os.environ, **env})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert lines[-1].startswith("error: ") and expect in lines[-1], lines[-1]
    assert "Traceback" not in r.stderr


def test_mismatched_model_and_onnx(exported):
    _bad(["tiny-gemma2", "--onnx", str(exported("tiny-gemma3", "portable"))],
         "was exported from tiny-gemma3, not tiny-gemma2")


def test_missing_plugin_library(exported, tmp_path):
    _bad(["tiny-gemma2", "--onnx", str(exported("tiny-gemma2", "plugin"))], "nope.so does not exist; build it",
         env={"DHSA_ORT_LIBRARY": str(tmp_path / "nope.so")})


@pytest.mark.parametrize("args,expect", [
    (["tiny-gemma2"], "exactly one of --onnx FILE or --engine FILE"),
    (["tiny-gemma2", "--onnx", "/no/such.onnx"], "/no/such.onnx not found"),
])
def test_bad_arguments(args, expect):
    _bad(args, expect)


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_270m_passes_fp32_gates(gemma3_270m, tmp_path):
    """Real weights on ORT CPU with the DHSA library: the fp32 gates, greedy 100 % over 32 tokens."""
    path = gemma3_270m("plugin")
    r = run(["gemma3-270m", "--onnx", str(path), "--greedy-tokens", "32", "--out", str(tmp_path / "rep")],
            timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = _report(tmp_path / "rep")
    assert rep["logits"]["cosine"] >= 0.9999 and rep["logits"]["top1"] == 1.0 and rep["logits"]["greedy"] == 1.0
    # The passkey grid through the deployed runtime, beside PyTorch dense and DHSA.
    r = subprocess.run([sys.executable, "-m", "dhsa_export.cli.check", "niah", "gemma3-270m", "--lengths", "1024",
                        "--depths", "0.5", "--keys", "1", "--budgets", "512", "--methods", "dense,dhsa",
                        "--onnx", str(path), "--out", str(tmp_path / "niah")], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {x["method"]: x for x in json.loads((tmp_path / "niah" / "niah.json").read_text())["results"]}
    assert 1000 <= results["dense"]["n_tokens"] <= 1024
    assert results["dense"]["correct"] and results["onnx-cpu"]["correct"] and results["dhsa@512"]["correct"], results
    assert (tmp_path / "niah" / "niah.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.real_weights
@pytest.mark.parametrize(("flavour", "length"), [("portable", 1024), ("plugin", 2048)])
def test_gemma3_270m_passkey_passes_every_gate(gemma3_270m, tmp_path, flavour, length):
    """A passkey prompt longer than the 512-token budget (sparse selection), every layer within its gate."""
    r = run(["gemma3-270m", "--onnx", str(gemma3_270m(flavour)), "--passkey", str(length), "--greedy-tokens", "2",
             "--layers", "--out", str(tmp_path)], timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = _report(tmp_path)
    assert rep["passed"] and len(rep["layers"]) == 18 and rep["inputs"][0]["tokens"] > 512
    assert 0 < rep["attended_fraction"] < 1, rep["attended_fraction"]
    assert "FAIL" not in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_270m_damaged_layer_is_named(gemma3_270m, tmp_path):
    """One global (DHSA) layer's value weights changed by a relative 1e-3: FAIL, naming that layer."""
    bad = tmp_path / "damaged.onnx"
    perturb_layer(gemma3_270m("plugin"), bad, layer=5, proj="v_proj", relative=1e-3)
    r = run(["gemma3-270m", "--onnx", str(bad), "--passkey", "1024", "--greedy-tokens", "0", "--layers",
             "--out", str(tmp_path / "rep")], timeout=3600)
    assert r.returncode == 1, r.stdout[-3000:]
    fail = r.stderr.strip().splitlines()[-1]
    assert "layer5.attention.rel_error = " in fail and fail.endswith("first diverging layer: 5"), fail
