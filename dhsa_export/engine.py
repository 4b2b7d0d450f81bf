"""Build TensorRT engines from exported models.

Backends: full TensorRT (`tensorrt`, with the DHSA plugins, libdhsa_trt.so, for `--ops plugin` models)
when it is installed, else TensorRT for RTX (`tensorrt_rtx`), whose builder also runs on a CPU-only
machine but cannot build plugin layers.
TensorRT-RTX builds strongly typed networks, so its precision is the ONNX file's own (export with
--dtype); full TensorRT also takes --fp16 / --bf16 builder flags.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DHSAError
from .runtime import uses_dhsa_ops


@dataclass
class EngineResult:
    path: Path
    backend: str
    bytes: int
    seconds: float
    profile: tuple


def backend(preferred: str | None = None):
    """(module, name): `tensorrt` first, then `tensorrt_rtx`, unless `preferred` names one."""
    names = [preferred] if preferred else ["tensorrt", "tensorrt_rtx"]
    for name in names:
        try:
            return importlib.import_module(name), name
        except ImportError:
            continue
    raise DHSAError("no TensorRT found: install TensorRT (pip install tensorrt, from NVIDIA's index) or "
                    "TensorRT for RTX (pip install 'dhsa-export[tensorrt-rtx]')")


def build(onnx_path: str | Path, out: str | Path, profile: tuple[tuple[int, int], ...], *,
          precision: str | None = None, workspace_gib: float = 4.0, backend_name: str | None = None,
          plugin_library: str | None = None, progress=lambda _: None) -> EngineResult:
    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise DHSAError(f"ONNX file {onnx_path} not found")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise DHSAError(f"cannot write the engine into {out.parent}; choose another --out")
    trt, name = backend(backend_name)
    if uses_dhsa_ops(onnx_path):
        if name == "tensorrt_rtx":
            # Measured with TensorRT-RTX 1.7.1: it loads libdhsa_trt.so and its ONNX parser creates the
            # plugins, then the process aborts; its network API has no plugin layer.
            raise DHSAError(f"{onnx_path.name} holds dhsa plugin nodes, and {name} {trt.__version__} cannot build "
                            f"plugin layers; export with --ops portable to build with TensorRT-RTX, or build with "
                            f"full TensorRT (--backend tensorrt)")
        if not plugin_library:
            from .native import trt_library

            plugin_library = trt_library()
        trt.init_libnvinfer_plugins(None, "")
        trt.get_plugin_registry().load_library(str(plugin_library))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {onnx_path} with {name} {trt.__version__}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise DHSAError(f"{name} cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision in ("fp16", "bf16"):
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:
            raise DHSAError(f"{name} builds strongly typed networks and has no --{precision} flag; export the "
                            f"model with --dtype {precision} instead")
        config.set_flag(flag)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        opt.set_shape(inp.name, *profile)
    config.add_optimization_profile(opt)
    progress(f"building (profile min {profile[0]}, opt {profile[1]}, max {profile[2]})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DHSAError(f"{name} failed to build an engine from {onnx_path.name} (see the log above)")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(memoryview(plan))
    os.replace(tmp, out)
    return EngineResult(out, f"{name} {trt.__version__}", out.stat().st_size, time.perf_counter() - t0, profile)
