"""dhsa-build-engine: the ONNX rewrites it builds from (plugin -> standard ops, fp32 -> half linear
layers), TensorRT-RTX builds of both flavours, the sidecar, and every user error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from dhsa_export import engine, runtime
from dhsa_export.errors import DHSAError
from dhsa_export.onnx import lowering, precision

from .models import token_ids

BUILD = [sys.executable, "-m", "dhsa_export.cli.engine"]
CHECK = [sys.executable, "-m", "dhsa_export.cli.check", "compare"]
PROFILE = ["--min", "1x1", "--opt", "2x64", "--max", "2x256"]
MODELS = ["tiny-gemma2", "tiny-gemma3"]


def _logits(path, ids: np.ndarray) -> np.ndarray:
    return runtime.ort_logits(runtime.ort_session(path))(ids)


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter((n.domain, n.op_type) for n in model.graph.node)


def _save(model: ir.Model, path: Path) -> Path:
    ir.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


@pytest.mark.parametrize("name", MODELS)
def test_lowered_plugin_export_is_the_portable_export(exported, name, tmp_path, seed):
    """Lowering runs the portable flavour's own decompositions, so it reproduces that export: no dhsa
    node left, the same op types, and bit-identical logits (L = 1, L < budget, odd L, batch 2)."""
    model = ir.load(str(exported(name, "plugin")))
    assert lowering.lower_to_portable(model) > 0
    lowered = _save(model, tmp_path / "lowered.onnx")
    portable = exported(name, "portable")
    assert set(_ops(onnx.load(str(lowered)))) == set(_ops(onnx.load(str(portable))))
    for batch, seq in ((1, 1), (2, 37), (1, 150), (2, 211)):
        ids = token_ids(batch, seq, seed + seq).numpy()
        got, want = _logits(lowered, ids), _logits(portable, ids)
        assert got.shape == want.shape and np.array_equal(got, want), (batch, seq, np.abs(got - want).max())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("flavour", ["plugin", "portable"])
def test_fp16_conversion_is_the_fp16_export(exported, name, flavour, tmp_path, seed):
    """to_half(fp32 export) has `dhsa-export --dtype fp16`'s fp32 islands: the same casts, the same
    fp16 weights, and logits bit-identical to that export's."""
    model = ir.load(str(exported(name, flavour)))
    assert precision.to_half(model, "fp16") > 0 and precision.precision_of(model) == "fp16"
    converted = _save(model, tmp_path / "fp16.onnx")
    reference = exported(name, flavour, dtype="fp16")
    a, b = onnx.load(str(converted)), onnx.load(str(reference))
    assert _ops(a) == _ops(b)
    assert sorted(t.data_type for t in a.graph.initializer) == sorted(t.data_type for t in b.graph.initializer)
    for batch, seq in ((1, 1), (2, 45), (1, 170)):
        ids = token_ids(batch, seq, seed + seq).numpy()
        got, want = _logits(converted, ids), _logits(reference, ids)
        assert got.dtype == np.float32 and np.array_equal(got, want), (batch, seq, np.abs(got - want).max())


def test_bf16_conversion_keeps_the_islands(exported, tmp_path):
    """bf16 linear weights, fp32 everywhere else (ORT's CPU provider has no bf16 MatMul, so this is
    checked structurally; the TensorRT-RTX build below compiles it)."""
    model = ir.load(str(exported("tiny-gemma2", "plugin")))
    n = precision.to_half(model, "bf16")
    path = _save(model, tmp_path / "bf16.onnx")
    proto = onnx.load(str(path))
    halves = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.BFLOAT16]
    assert len(halves) == n and all(len(t.dims) == 2 for t in halves)
    matmuls = [nd for nd in proto.graph.node if nd.op_type == "MatMul"]
    casts = Counter(a.i for nd in proto.graph.node if nd.op_type == "Cast" for a in nd.attribute if a.name == "to")
    assert casts[onnx.TensorProto.FLOAT] >= len(matmuls) and casts[onnx.TensorProto.BFLOAT16] > 0
    assert precision.to_half(ir.load(str(path)), "bf16") == 0  # already converted: nothing left to do


def _build(args, cwd=None):
    return subprocess.run(BUILD + [str(a) for a in args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def rtx():
    return pytest.importorskip("tensorrt_rtx")


@pytest.mark.parametrize("name", MODELS)
def test_plugin_export_builds_fp16_with_tensorrt_rtx(rtx, exported, name, tmp_path):
    """The default export + --fp16 on TensorRT-RTX: dhsa nodes lowered, linear layers fp16, an
    engine, its sidecar, and a built-from ONNX that passes the fp16 gates on ONNX Runtime."""
    src = tmp_path / "m.onnx"
    src.write_bytes(Path(exported(name, "plugin")).read_bytes())
    r = _build([src, "--fp16", *PROFILE])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lowering the dhsa nodes" in r.stderr and "builder: Building engine" in r.stderr
    plan, built_from = tmp_path / "m.engine", tmp_path / "m.portable.fp16.onnx"
    assert plan.stat().st_size > 100_000 and built_from.is_file()
    record = json.loads((tmp_path / "m.engine.json").read_text())
    assert record["precision"] == "fp16" and record["recipe"] == name
    assert record["built_from"]["file"] == built_from.name and len(record["built_from"]["changes"]) == 2
    assert record["source_onnx"]["sha256"] == engine.sha256(src)
    assert record["engine_sha256"] == engine.sha256(plan)
    assert record["profile"] == {"min": [1, 1], "opt": [2, 64], "max": [2, 256]}
    assert record["tensorrt"]["flavour"] == "tensorrt_rtx" and record["plugin_library"] is None
    assert record["export"]["budget"] and record["target_compute_capabilities"] == list(engine.RTX_DEFAULT_TARGETS)
    meta = runtime.model_metadata(built_from)
    assert meta["dhsa.dtype"] == "fp16" and meta["dhsa.ops_flavour"] == "portable"
    assert not runtime.uses_dhsa_ops(built_from)
    check = subprocess.run(CHECK + [name, "--onnx", str(built_from), "--out", str(tmp_path / "rep")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
    assert "| logits.rel_error |" in check.stdout and "<= 0.05" in check.stdout


@pytest.mark.parametrize("args,built_from", [
    (["--ops", "portable"], None),
    (["--ops", "portable", "--bf16"], "m.bf16.onnx"),
    (["--ops", "plugin", "--target-gpu", "8.6,12.0"], "m.portable.onnx"),
])
def test_tensorrt_rtx_builds(rtx, exported, tmp_path, args, built_from):
    flavour = args[1]
    src = tmp_path / "m.onnx"
    src.write_bytes(Path(exported("tiny-gemma3", flavour)).read_bytes())
    r = _build([src, *args[2:], *PROFILE])
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "m.engine.json").read_text())
    assert record["built_from"]["file"] == (built_from or "m.onnx")
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted({"m.onnx", built_from or "m.onnx"})
    if "--target-gpu" in args:
        assert record["target_compute_capabilities"] == ["8.6", "12.0"]


def test_timing_cache_is_reported_as_unused_by_tensorrt_rtx(rtx, exported, tmp_path):
    cache = tmp_path / "timing.cache"
    r = _build([exported("tiny-gemma2", "portable"), "--out", tmp_path / "m.engine", "--timing-cache", cache,
                *PROFILE])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "has no timing cache" in r.stderr and not cache.exists()


def _bad(args, expect, tmp_path):
    before = set(tmp_path.iterdir())
    r = _build(args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert lines and expect in lines[-1], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert set(tmp_path.iterdir()) == before  # nothing written, not even a temporary file


def test_build_errors(rtx, exported, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(Path(exported("tiny-gemma2", "plugin")).read_bytes())
    _bad([tmp_path / "none.onnx"], "does not exist", tmp_path)
    _bad([src, "--min", "1x1", "--opt", "2x64", "--max", "1x32"], "min <= opt <= max", tmp_path)
    _bad([src, "--target-gpu", "9.0"], "unknown compute capability 9.0", tmp_path)
    _bad([src, "--out", tmp_path / "no" / "m.engine"], "cannot write the engine", tmp_path)
    half = tmp_path / "half.onnx"
    half.write_bytes(Path(exported("tiny-gemma2", "portable", dtype="fp16")).read_bytes())
    _bad([half, "--bf16", *PROFILE], "was exported in fp16; --bf16 converts fp32 exports only", tmp_path)
    clash = tmp_path / "n.fp16.onnx"
    clash.write_bytes(Path(exported("tiny-gemma2", "portable")).read_bytes())
    _bad([clash, "--fp16", "--out", tmp_path / "n.engine", *PROFILE], "would overwrite n.fp16.onnx", tmp_path)


def test_no_tensorrt(exported, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("full TensorRT is installed")
    except ImportError:
        pass
    _bad([exported("tiny-gemma2", "plugin"), "--backend", "tensorrt", "--out", tmp_path / "m.engine"],
         "no TensorRT found", tmp_path)


def test_plugin_library_checks(rtx, tmp_path):
    """The registry check that full TensorRT builds run, on TensorRT-RTX's registry (which loads the
    library; it is building plugin layers that it cannot do): a missing library, an op it lacks,
    an op version it lacks."""
    from dhsa_export import native

    with pytest.raises(DHSAError, match="nope.so does not exist"):
        engine.load_plugins(rtx, tmp_path / "nope.so", {"DhsaSelectAttention": "1"})
    try:
        library = native.trt_library()
    except DHSAError:
        pytest.skip("libdhsa_trt.so is not built here (no TensorRT headers or nvcc)")
    engine.load_plugins(rtx, library, {"DhsaSelectAttention": "1", "DhsaChunkBoundaries": "1"})
    with pytest.raises(DHSAError, match=r"has no dhsa\.DhsaNoSuchOp"):
        engine.load_plugins(rtx, library, {"DhsaSelectAttention": "1", "DhsaNoSuchOp": "1"})
    assert engine.missing_plugins(rtx.get_plugin_registry(), {"DhsaSparseAttention": "2"}) == ["DhsaSparseAttention"]


@pytest.fixture
def built(rtx, exported, tmp_path):
    plan = tmp_path / "m.engine"
    r = _build([exported("tiny-gemma2", "portable"), "--out", plan, *PROFILE])
    assert r.returncode == 0, r.stderr[-3000:]
    return plan


def test_engine_run_checks(built):
    record = engine.read_sidecar(built)
    with pytest.raises(DHSAError, match=r"input 1x300 .* outside m.engine's profile 1x1 \.\. 2x256; rebuild with "
                                        r"dhsa-build-engine --max 2x300"):
        engine.check_runnable(record, built.name, (1, 300), "8.6")
    with pytest.raises(DHSAError, match="for compute capability 8.0, 8.6, 8.9, 12.0, 12.1; this GPU is 9.0"):
        engine.check_runnable(record, built.name, (1, 100), "9.0")
    with pytest.raises(DHSAError, match="no CUDA GPU on this machine"):
        engine.check_runnable(record, built.name, (1, 100), None)
    engine.check_runnable(record, built.name, (2, 256), "8.6")


@pytest.mark.parametrize("args,expect", [
    (["--length", "300"], "outside m.engine's profile"),
    (["--length", "100", "--greedy-tokens", "0"], "no CUDA GPU on this machine"),
])
def test_compare_engine_errors(built, args, expect):
    if engine.current_gpu() is not None:
        pytest.skip("a GPU is present: the engine may run")
    r = subprocess.run(CHECK + ["tiny-gemma2", "--engine", str(built), *args], capture_output=True, text=True)
    assert r.returncode == 2 and expect in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]


def test_compare_engine_without_sidecar(built, tmp_path):
    engine.sidecar_path(built).unlink()
    r = subprocess.run(CHECK + ["tiny-gemma2", "--engine", str(built)], capture_output=True, text=True)
    assert r.returncode == 2 and "m.engine.json not found next to m.engine" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.real_weights
def test_gemma3_270m_default_export_builds_fp16(rtx, gemma3_270m, tmp_path):
    """The quickstart's export with --fp16 on TensorRT-RTX: an fp16 engine and its sidecar; the
    converted ONNX it was built from passes the fp16 gates on ONNX Runtime (1K passkey prompt)."""
    plan = tmp_path / "m.engine"
    r = subprocess.run(BUILD + [str(gemma3_270m("plugin")), "--fp16", "--out", str(plan)], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(engine.sidecar_path(plan).read_text())
    assert record["precision"] == "fp16" and record["recipe"] == "gemma3-270m"
    assert plan.stat().st_size > 400 << 20  # ~268M parameters, the linear layers and embeddings in fp16
    built_from = tmp_path / record["built_from"]["file"]
    check = subprocess.run(CHECK + ["gemma3-270m", "--onnx", str(built_from), "--passkey", "1024",
                                    "--greedy-tokens", "2", "--out", str(tmp_path / "rep")],
                           capture_output=True, text=True, timeout=1800)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
    assert "onnxruntime cpu, fp16" in check.stdout
