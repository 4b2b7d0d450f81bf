"""Accuracy check of a deployed model (ONNX Runtime session or TensorRT engine) against the PyTorch
reference on the same token ids: logits metrics, teacher-forced greedy agreement, per-layer
attention outputs, gates per precision, and reports."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from . import runtime
from .attention import disable_dhsa, enable_dhsa
from .errors import DHSAError
from .files import atomic_write
from .niah import build_prompt
from .recipes import Gates, Recipe

BUILTIN_PROMPTS = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based inks and a wooden screw press. Within fifty years presses operated in "
    "more than two hundred European cities, and the cost of books fell so far that",
    "To compute the determinant of a three by three matrix, expand along the first row: multiply each entry "
    "by the determinant of the two by two minor that remains when its row and column are removed, alternate "
    "the signs, and add the three products. For example, for the matrix with rows",
    "Dear team, thank you for the detailed report on last week's outage. The root cause was a configuration "
    "change that disabled the connection pool on the primary database. To prevent this in the future we will",
)
_OPROJ = re.compile(r"layers\.(\d+)\.self_attn\.o_proj$")


@dataclass
class Metrics:
    cosine: float
    norm_ratio: float
    max_abs: float
    max_rel: float
    top1: float | None = None
    kl: float | None = None
    greedy: float | None = None


@dataclass
class GateResult:
    name: str
    value: float
    threshold: float
    passed: bool


@dataclass
class Report:
    model: str
    artefact: str
    runtime: str
    precision: str
    inputs: list[dict]
    logits: Metrics
    dense_vs_dhsa: Metrics | None
    layers: list[tuple[int, Metrics]] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    first_diverging_layer: int | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"passed": self.passed}, indent=1)

    def to_markdown(self) -> str:
        m = self.logits
        lines = [f"# dhsa-check compare: {self.model}", "",
                 f"- artefact: `{self.artefact}` ({self.runtime}, {self.precision})",
                 f"- inputs: {', '.join(i['name'] + ' (' + str(i['tokens']) + ' tokens)' for i in self.inputs)}",
                 f"- result: **{'PASS' if self.passed else 'FAIL'}**", "",
                 "| metric | deployed vs PyTorch DHSA | PyTorch dense vs DHSA (context) |", "|---|---|---|"]
        d = self.dense_vs_dhsa
        for key in ("cosine", "norm_ratio", "max_abs", "max_rel", "top1", "kl", "greedy"):
            a = getattr(m, key)
            b = getattr(d, key) if d else None
            if a is None and b is None:
                continue
            lines.append(f"| {key} | {_fmt(a)} | {_fmt(b)} |")
        lines += ["", "| gate | value | threshold | |", "|---|---|---|---|"]
        lines += [f"| {g.name} | {_fmt(g.value)} | {_fmt(g.threshold)} | {'ok' if g.passed else 'FAIL'} |"
                  for g in self.gates]
        if self.layers:
            lines += ["", "| layer | cosine | max_abs | norm_ratio |", "|---|---|---|---|"]
            lines += [f"| {i} | {_fmt(x.cosine)} | {_fmt(x.max_abs)} | {_fmt(x.norm_ratio)} |" for i, x in self.layers]
            if self.first_diverging_layer is not None:
                lines += ["", f"First diverging layer: **{self.first_diverging_layer}**"]
        return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _metrics(dot: float, ref_sq: float, got_sq: float, max_abs: float, max_ref: float, **extra) -> Metrics:
    """Cosine, norm ratio and max abs / rel error from sums over all elements."""
    nr, ng = ref_sq ** 0.5, got_sq ** 0.5
    return Metrics(cosine=dot / (nr * ng) if nr > 0 and ng > 0 else float(nr == ng),
                   norm_ratio=ng / nr if nr > 0 else float("inf"), max_abs=max_abs,
                   max_rel=max_abs / max(max_ref, 1e-12), **extra)


def tensor_metrics(ref: np.ndarray, got: np.ndarray) -> Metrics:
    ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    return _metrics(float(ref @ got), float(ref @ ref), float(got @ got), float(np.abs(got - ref).max()),
                    float(np.abs(ref).max()))


def logits_metrics(refs: list[np.ndarray], gots: list[np.ndarray], rows: int = 128) -> Metrics:
    """tensor_metrics plus top-1 agreement and mean KL(ref || got) per position, over every position
    of every input. Streamed in chunks of `rows` positions: 2K positions of Gemma's 262K vocabulary
    are 2 GiB in float32, and float64 work on all of it at once would need several times that."""
    dot = ref_sq = got_sq = max_abs = max_ref = kl = 0.0
    hits = n = 0
    for ref, got in zip(refs, gots):
        ref, got = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
        for s in range(0, ref.shape[0], rows):
            r = torch.from_numpy(np.ascontiguousarray(ref[s:s + rows])).double()
            g = torch.from_numpy(np.ascontiguousarray(got[s:s + rows])).double()
            dot += float((r * g).sum())
            ref_sq += float((r * r).sum())
            got_sq += float((g * g).sum())
            max_abs = max(max_abs, float((g - r).abs().max()))
            max_ref = max(max_ref, float(r.abs().max()))
            hits += int((r.argmax(-1) == g.argmax(-1)).sum())
            n += r.shape[0]
            lr, lg = torch.log_softmax(r, -1), torch.log_softmax(g, -1)
            kl += float((lr.exp() * (lr - lg)).sum())
    return _metrics(dot, ref_sq, got_sq, max_abs, max_ref, top1=hits / n, kl=kl / n)


def evaluate_gates(logits: Metrics, layers: list[tuple[int, Metrics]], gates: Gates) -> tuple[list[GateResult], int | None]:
    out = [GateResult("logits.cosine", logits.cosine, gates.cosine, logits.cosine >= gates.cosine),
           GateResult("logits.top1", logits.top1, gates.top1, logits.top1 >= gates.top1)]
    if logits.greedy is not None:
        out.append(GateResult("greedy", logits.greedy, gates.greedy, logits.greedy >= gates.greedy))
    if gates.max_abs is not None:
        out.append(GateResult("logits.max_abs", logits.max_abs, gates.max_abs, logits.max_abs <= gates.max_abs))
    first = None
    for i, m in layers:
        ok = m.cosine >= gates.cosine and (gates.max_abs is None or m.max_abs <= gates.max_abs)
        if not ok and first is None:
            first = i
            out.append(GateResult(f"layer{i}.attention.cosine", m.cosine, gates.cosine, False))
    return out, first


# ---- inputs ------------------------------------------------------------------------------------

def make_inputs(recipe: Recipe, tokenizer, prompts_file: str | None, passkey: int | None, length: int,
                seed: int) -> list[tuple[str, np.ndarray]]:
    """(name, ids (1 or B, L)) pairs."""
    if tokenizer is None:
        if prompts_file or passkey:
            raise DHSAError(f"{recipe.name} has no tokenizer (random-init model): use --length for random token ids")
        vocab = recipe.model.random_init.config.get("vocab_size", 256)
        ids = np.random.default_rng(seed).integers(0, vocab, size=(2, length), dtype=np.int64)
        return [(f"random ids (2 x {length}, seed {seed})", ids)]
    if passkey:
        p = build_prompt(tokenizer, passkey, 0.5, str(np.random.default_rng(seed).integers(10000, 99999)))
        return [(f"passkey {passkey}", np.array([p.input_ids], dtype=np.int64))]
    texts = BUILTIN_PROMPTS
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise DHSAError(f"--prompts file {path} not found")
        texts = tuple(t for t in path.read_text().splitlines() if t.strip())
        if not texts:
            raise DHSAError(f"--prompts file {path} holds no non-empty line")
    return [(f"prompt {i}", np.array([tokenizer(t).input_ids], dtype=np.int64)) for i, t in enumerate(texts)]


# ---- per-layer attention outputs ---------------------------------------------------------------

def attention_output_values(model_proto: onnx.ModelProto) -> dict[int, str]:
    """layer index -> name of the tensor entering that layer's o_proj (the attention output)."""
    found = {}
    for node in model_proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if node.op_type not in ("MatMul", "Gemm") or not scopes:
            continue
        for scope in reversed(json.loads(scopes.replace("'", '"'))):
            m = _OPROJ.search(scope)
            if m:
                found.setdefault(int(m.group(1)), node.input[0])
                break
    return dict(sorted(found.items()))


def with_layer_outputs(path: Path) -> tuple[Path, dict[int, str]]:
    """A copy of the model (beside it, sharing its external data) that also outputs attention outputs."""
    proto = onnx.load(str(path), load_external_data=False)
    values = attention_output_values(proto)
    if not values:
        raise DHSAError(f"{path.name} has no o_proj name scopes to locate attention outputs (was it written by "
                        f"dhsa-export?); run without --layers")
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(v) for v in values.values())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.layers.", suffix=".onnx")
    os.close(fd)
    onnx.save(proto, tmp)
    return Path(tmp), values


class TorchCapture:
    """Forward pre-hooks on every self_attn.o_proj: their inputs are the attention outputs."""

    def __init__(self, model):
        self.outputs: dict[int, np.ndarray] = {}
        self.handles = []
        for name, module in model.named_modules():
            m = _OPROJ.search(name)
            if m:
                idx = int(m.group(1))
                self.handles.append(module.register_forward_pre_hook(
                    lambda mod, args, idx=idx: self.outputs.__setitem__(idx, args[0].detach().float().numpy())))

    def close(self):
        for h in self.handles:
            h.remove()


# ---- the comparison ----------------------------------------------------------------------------

def compare(recipe: Recipe, loaded, deployed: Callable[[np.ndarray], list[np.ndarray]], *, artefact: str,
            runtime_name: str, precision: str, inputs: list[tuple[str, np.ndarray]], greedy_tokens: int,
            layer_names: dict[int, str] | None, gates: Gates, progress=lambda _: None) -> Report:
    """`deployed(ids)` returns [logits, *layer outputs in layer_names order]."""
    model = loaded.model
    ref_fn = runtime.torch_logits(model)
    all_ref, all_got, all_dense, layer_pairs, greedy_ok, greedy_n = [], [], [], {}, 0, 0
    for name, ids in inputs:
        enable_dhsa(model, recipe.dhsa)
        if greedy_tokens:
            progress(f"{name}: reference greedy continuation of {greedy_tokens} tokens (PyTorch DHSA)")
            cont = np.stack([runtime.greedy(ref_fn, row[None], greedy_tokens) for row in ids])
            seq = np.concatenate([ids, cont], axis=1)
        else:
            seq = ids
        capture = TorchCapture(model) if layer_names else None
        progress(f"{name}: PyTorch DHSA forward ({seq.shape[1]} tokens)")
        ref = ref_fn(seq)
        if capture:
            capture.close()
        progress(f"{name}: deployed forward ({runtime_name})")
        outs = deployed(seq)
        got = outs[0].astype(np.float32)
        if got.shape != ref.shape:
            raise DHSAError(f"deployed logits have shape {got.shape}, PyTorch's {ref.shape}: the artefact does not "
                            f"match {recipe.name} (export it from this model, with --logits all)")
        disable_dhsa(model)
        progress(f"{name}: PyTorch dense forward (context)")
        all_dense.append(ref_fn(seq))
        all_ref.append(ref)
        all_got.append(got)
        if greedy_tokens:
            # Teacher forcing on prefixes: DHSA prefill is not causal (selection sees the whole prompt), so
            # each step's prediction is the last position of a run on exactly the prefix before it.
            progress(f"{name}: deployed teacher-forced steps ({greedy_tokens})")
            for step in range(greedy_tokens):
                pred = deployed(seq[:, : ids.shape[1] + step])[0][:, -1].argmax(-1)
                greedy_ok += int((pred == cont[:, step]).sum())
                greedy_n += cont.shape[0]
        if layer_names:
            for (layer, _), value in zip(layer_names.items(), outs[1:]):
                layer_pairs.setdefault(layer, []).append((capture.outputs[layer], value))
    logits = logits_metrics(all_ref, all_got)
    dense = logits_metrics(all_ref, all_dense)
    if greedy_tokens:
        logits.greedy = greedy_ok / greedy_n
    layers = [(i, tensor_metrics(np.concatenate([a.ravel() for a, _ in pairs]),
                                 np.concatenate([b.astype(np.float32).ravel() for _, b in pairs])))
              for i, pairs in sorted(layer_pairs.items())]
    gate_results, first = evaluate_gates(logits, layers, gates)
    return Report(model=recipe.name, artefact=artefact, runtime=runtime_name, precision=precision,
                  inputs=[{"name": n, "tokens": int(i.shape[1]), "batch": int(i.shape[0])} for n, i in inputs],
                  logits=logits, dense_vs_dhsa=dense, layers=layers, gates=gate_results, first_diverging_layer=first)


def onnx_runner(path: Path, provider: str, layers: bool):
    """(callable ids -> outputs, layer names, cleanup) for an ONNX file on ONNX Runtime."""
    layer_names, run_path = None, path
    if layers:
        run_path, layer_names = with_layer_outputs(path)
    try:
        session = runtime.ort_session(run_path, provider)
    finally:
        if run_path != path:
            os.unlink(run_path)
    names = [o.name for o in session.get_outputs()]

    def run(ids: np.ndarray) -> list[np.ndarray]:
        return session.run(names, {session.get_inputs()[0].name: ids})

    return run, layer_names


def engine_runner(path: Path):
    """A TensorRT engine as ids -> [logits] (needs a CUDA GPU the engine was built for)."""
    from .engine import backend

    if not path.is_file():
        raise DHSAError(f"engine file {path} not found")
    if not torch.cuda.is_available():
        raise DHSAError(f"cannot run engine {path.name}: no CUDA GPU on this machine (TensorRT engines run on the "
                        f"GPU they were built for); compare the ONNX file with --onnx instead")
    trt, name = backend()
    rt = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = rt.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise DHSAError(f"{name} refused engine {path.name}: it was built for another GPU or TensorRT version; "
                        f"rebuild it on this machine with dhsa-build-engine")
    ctx = engine.create_execution_context()
    inp, out = engine.get_tensor_name(0), engine.get_tensor_name(1)
    out_dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.BF16: torch.bfloat16}[engine.get_tensor_dtype(out)]

    def run(ids: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(ids).cuda()
        ctx.set_input_shape(inp, tuple(x.shape))
        y = torch.empty(tuple(ctx.get_tensor_shape(out)), dtype=out_dtype, device="cuda")
        ctx.set_tensor_address(inp, x.data_ptr())
        ctx.set_tensor_address(out, y.data_ptr())
        ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        return [y.float().cpu().numpy()]

    return run


def write_reports(report: Report, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "report.json", out_dir / "report.md"
    atomic_write(js, lambda p: p.write_text(report.to_json()))
    atomic_write(md, lambda p: p.write_text(report.to_markdown()))
    return js, md


def polygraphy_gate(recipe: Recipe, loaded, path: Path, provider: str, inputs, gates: Gates) -> GateResult:
    """Polygraphy's comparator: its ONNX Runtime runner (session with the DHSA library) against a
    Polygraphy runner wrapping the PyTorch DHSA model (its own PyTorch runner needs CUDA)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    class TorchRunner(BaseRunner):
        def __init__(self, fn):
            super().__init__(name="pytorch-dhsa")
            self.fn = fn

        def get_input_metadata_impl(self):
            return TensorMetadata().add("input_ids", np.int64, shape=(-1, -1))

        def infer_impl(self, feed_dict):
            t0 = time.perf_counter()
            out = {"logits": self.fn(feed_dict["input_ids"])}
            self.inference_time = time.perf_counter() - t0  # Polygraphy sums runners' times
            return out

    G_LOGGER.module_severity = G_LOGGER.WARNING
    enable_dhsa(loaded.model, recipe.dhsa)
    runners = [OnnxrtRunner(runtime.ort_session(path, provider), name="onnxruntime"),
               TorchRunner(runtime.torch_logits(loaded.model))]
    results = Comparator.run(runners, data_loader=[{"input_ids": ids} for _, ids in inputs])
    atol = gates.max_abs if gates.max_abs is not None else 1e-2
    ok = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=0.0)))
    disable_dhsa(loaded.model)
    return GateResult("polygraphy.compare_accuracy", float(ok), 1.0, ok)
