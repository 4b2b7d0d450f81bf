"""Build TensorRT engines from exported models.

Backends: full TensorRT (`tensorrt`) when it is installed, else TensorRT for RTX (`tensorrt_rtx`),
whose builder also runs on a CPU-only machine.
- Plugin-flavour models build with the DHSA plugins (libdhsa_trt.so) on full TensorRT. TensorRT-RTX
  cannot build plugin layers (measured with 1.7.1: its parser creates them, then the process aborts),
  so for it the dhsa nodes are first lowered to their standard-op decompositions (onnx/lowering.py).
- --fp16 / --bf16: TensorRT 10 takes builder flags; strongly typed builders (TensorRT 11,
  TensorRT-RTX) get a network converted with `dhsa-export --dtype fp16`'s fp32 islands
  (onnx/precision.py).
A model that had to be changed is written next to the engine (`<engine>.<portable.><fp16.>onnx`) and
built from there, so what the engine holds can be checked on ONNX Runtime. A JSON sidecar next to the
engine records what it was built from and for.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from . import __version__
from .errors import DHSAError
from .files import EXTERNAL_DATA_THRESHOLD, atomic_write, publish_onnx, sha256
from .ops.spec import DOMAIN

# TensorRT-RTX engines run on these compute capabilities unless the build names others (its
# "CPU-only AOT" documentation); Turing (7.5) only when asked for.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0", "12.1")
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}


@dataclass
class EngineResult:
    path: Path
    sidecar: Path
    built_from: Path
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


def dhsa_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """{op_type: version} of the model's `dhsa` nodes (versions from its opset import)."""
    version = next((str(o.version) for o in model.opset_import if o.domain == DOMAIN), "1")
    return {n.op_type: version for n in model.graph.node if n.domain == DOMAIN}


def missing_plugins(registry, ops: dict[str, str]) -> list[str]:
    """The ops for which `registry` (a TensorRT IPluginRegistry) has no creator of that version."""
    return sorted(op for op, version in ops.items() if registry.get_creator(op, version, DOMAIN) is None)


_LOADED: dict[tuple[str, str], object] = {}


def load_plugins(trt, library: Path, ops: dict[str, str]) -> None:
    if not library.is_file():
        raise DHSAError(f"TensorRT plugin library {library} does not exist; build it (scripts/setup.sh with "
                        f"TensorRT_INCLUDE_DIR set) or pass --plugins PATH")
    registry = trt.get_plugin_registry()
    key = (trt.__name__, str(library.resolve()))
    if key not in _LOADED:  # the registry refuses a second load of the same library
        handle = registry.load_library(str(library))
        if handle is None:
            raise DHSAError(f"TensorRT could not load the plugin library {library} (see the log above)")
        _LOADED[key] = handle
    missing = missing_plugins(registry, ops)
    if missing:
        raise DHSAError(f"plugin library {library.name} has no {', '.join(f'{DOMAIN}.{m}' for m in missing)} "
                        f"(version {ops[missing[0]]}); use the libdhsa_trt.so built with this dhsa-export")


def strongly_typed(trt) -> bool:
    """True when the builder has no fp16 / bf16 flags (TensorRT 11, TensorRT-RTX)."""
    return not hasattr(trt.BuilderFlag, "FP16")


def _onnx_files(path: Path) -> list[Path]:
    """The .onnx file and its external-data files (for hashing)."""
    model = onnx.load(str(path), load_external_data=False)
    data = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    return [path] + [path.parent / d for d in data]


def prepare_onnx(onnx_path: Path, engine_path: Path, *, lower: bool, precision: str | None,
                 progress=lambda _: None) -> tuple[Path, list[str]]:
    """The ONNX file to build from: `onnx_path` itself, or a copy next to the engine with the dhsa
    nodes lowered to standard ops and / or the linear layers converted to `precision`.
    Returns (path, what was changed)."""
    import onnx_ir as ir

    from .onnx import lowering, precision as half

    if not lower and precision is None:
        return onnx_path, []
    tags = (["portable"] if lower else []) + ([precision] if precision else [])
    out = engine_path.with_name(f"{engine_path.stem}.{'.'.join(tags)}.onnx")
    if out.resolve() == onnx_path.resolve():
        raise DHSAError(f"the converted model would overwrite {onnx_path.name}; choose another --out for the engine")
    progress(f"loading {onnx_path}")
    model = ir.load(str(onnx_path))
    changes = []
    if lower:
        n = lowering.lower_to_portable(model, progress)
        changes.append(f"{n} dhsa nodes lowered to standard ops")
        model.metadata_props["dhsa.ops_flavour"] = "portable"
    if precision is not None:
        n = half.to_half(model, precision)
        changes.append(f"{n} linear / embedding weights in {precision}, the rest fp32")
        model.metadata_props["dhsa.dtype"] = precision
    model.metadata_props["dhsa.built_from"] = f"{onnx_path.name} sha256:{sha256(*_onnx_files(onnx_path))}"
    external = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                   if v.const_value is not None) > EXTERNAL_DATA_THRESHOLD
    progress(f"writing {out} ({'; '.join(changes)})")
    publish_onnx(out, lambda tmp: ir.save(model, str(tmp), external_data=f"{out.name}.data" if external else None),
                 lambda tmp: onnx.checker.check_model(str(tmp), full_check=True))
    return out, changes


def _progress_monitor(trt, report):
    """A TensorRT IProgressMonitor reporting the builder's top-level phases as they start (the
    class derives from the backend's own base, so it is made per backend)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            if depth <= 1:
                report(f"builder: {phase_name}")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def _gpu_targets(name: str, targets: tuple[str, ...] | None) -> list[str]:
    """The compute capabilities the engine will run on (checked before anything is written)."""
    if name == "tensorrt_rtx":
        return list(targets or RTX_DEFAULT_TARGETS)
    if targets:
        raise DHSAError("--target-gpu is for TensorRT-RTX; full TensorRT builds for the GPU it runs on")
    gpu = current_gpu()
    if gpu is None:
        raise DHSAError("full TensorRT builds engines on the GPU they will run on, and this machine has none")
    return [gpu]


def build(onnx_path: str | Path, out: str | Path, profile: tuple[tuple[int, int], ...], *,
          precision: str | None = None, workspace_gib: float = 4.0, backend_name: str | None = None,
          plugin_library: str | None = None, timing_cache: str | None = None,
          target_gpus: tuple[str, ...] | None = None, progress=lambda _: None) -> EngineResult:
    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise DHSAError(f"ONNX file {onnx_path} not found")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise DHSAError(f"cannot write the engine into {out.parent}; choose another --out")
    header = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in header.metadata_props}
    exported = meta.get("dhsa.dtype", "fp32")
    if precision and exported not in ("fp32", precision):
        raise DHSAError(f"{onnx_path.name} was exported in {exported}; --{precision} converts fp32 exports only "
                        f"(re-export with --dtype fp32, or build without --{precision})")
    trt, name = backend(backend_name)
    ops = dhsa_nodes(header)
    del header
    lower = bool(ops) and name == "tensorrt_rtx"
    targets = _gpu_targets(name, target_gpus)
    convert = precision if precision and exported == "fp32" and strongly_typed(trt) else None
    library = None
    if ops and not lower:
        from .native import trt_library

        library = Path(plugin_library) if plugin_library else trt_library()
        trt.init_libnvinfer_plugins(None, "")
        load_plugins(trt, library, ops)
    elif lower:
        progress(f"{name} cannot build plugin layers: lowering the dhsa nodes to standard ops (the portable "
                 f"flavour)")
    built_from, changes = prepare_onnx(onnx_path, out, lower=lower, precision=convert, progress=progress)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {built_from} with {name} {trt.__version__}")
    if not parser.parse_from_file(str(built_from)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise DHSAError(f"{name} cannot parse {built_from.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision and not strongly_typed(trt):
        config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
    if target_gpus:  # TensorRT-RTX only (_gpu_targets refuses them for full TensorRT)
        config.num_compute_capabilities = len(target_gpus)
        for i, cc in enumerate(target_gpus):
            config.set_compute_capability(getattr(trt.ComputeCapability, RTX_TARGETS[cc]), i)
    cache = None
    if timing_cache:
        if name == "tensorrt_rtx":
            progress(f"note: {name} has no timing cache (its kernels are specialised at run time); "
                     f"--timing-cache ignored")
        else:
            blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _progress_monitor(trt, progress)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        opt.set_shape(network.get_input(i).name, *profile)
    config.add_optimization_profile(opt)
    progress(f"building (profile min {profile[0]}, opt {profile[1]}, max {profile[2]})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DHSAError(f"{name} failed to build an engine from {built_from.name} (see the log above)")
    atomic_write(out, lambda p: p.write_bytes(memoryview(plan)))
    if cache is not None:
        atomic_write(Path(timing_cache), lambda p: p.write_bytes(memoryview(config.get_timing_cache().serialize())))

    sidecar = sidecar_path(out)
    record = {
        "engine": out.name,
        "engine_sha256": sha256(out),
        "source_onnx": {"file": onnx_path.name, "sha256": sha256(*_onnx_files(onnx_path))},
        "built_from": {"file": built_from.name, "changes": changes},
        "recipe": meta.get("dhsa.recipe"),
        "export": {k.removeprefix("dhsa."): v for k, v in meta.items() if k.startswith("dhsa.")},
        "inputs": [network.get_input(i).name for i in range(network.num_inputs)],
        "profile": {"min": list(profile[0]), "opt": list(profile[1]), "max": list(profile[2])},
        "precision": precision or exported,
        "tensorrt": {"flavour": name, "version": trt.__version__},
        "plugin_library": None if library is None else {
            "file": library.name, "dhsa_export": __version__, "sha256": sha256(library),
            "ops": {op: f"{DOMAIN}.{op} v{v}" for op, v in sorted(ops.items())}},
        "target_compute_capabilities": targets,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_host": platform.machine(),
        "dhsa_export": __version__,
    }
    atomic_write(sidecar, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return EngineResult(out, sidecar, built_from, f"{name} {trt.__version__}", out.stat().st_size,
                        time.perf_counter() - t0, profile)


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_name(Path(engine_path).name + ".json")


def read_sidecar(engine_path: Path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise DHSAError(f"{path.name} not found next to {Path(engine_path).name}; build the engine with "
                        f"dhsa-build-engine, which writes it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DHSAError(f"{path} is not valid JSON ({err.msg}); rebuild the engine") from None


def current_gpu() -> str | None:
    """The CUDA device's compute capability as "major.minor", or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return "{}.{}".format(*torch.cuda.get_device_capability())


def check_runnable(record: dict, engine_name: str, shape: tuple[int, int], gpu: str | None) -> None:
    """One-line errors before TensorRT sees the engine: a batch x sequence outside the build profile,
    a GPU the engine was not built for (`gpu` is the current device's compute capability, or None)."""
    lo, hi = record["profile"]["min"], record["profile"]["max"]
    if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
        raise DHSAError(f"input {shape[0]}x{shape[1]} (batch x tokens) is outside {engine_name}'s profile "
                        f"{lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}; rebuild with dhsa-build-engine --max "
                        f"{max(shape[0], hi[0])}x{max(shape[1], hi[1])}")
    if gpu is None:
        raise DHSAError(f"cannot run {engine_name}: no CUDA GPU on this machine (TensorRT engines run on the GPU "
                        f"they were built for); compare its ONNX file with --onnx instead")
    targets = record["target_compute_capabilities"]
    if gpu not in targets:
        raise DHSAError(f"{engine_name} was built with {record['tensorrt']['flavour']} for compute capability "
                        f"{', '.join(targets)}; this GPU is {gpu}. Rebuild it for this GPU with dhsa-build-engine")
