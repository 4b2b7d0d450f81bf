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
    rel_error: float  # |got - ref| / |ref| (2-norms over every element): error against the tensor's own scale
    max_abs: float
    max_rel: float  # max |got - ref| / max |ref|
    top1: float | None = None
    kl: float | None = None
    greedy: float | None = None


@dataclass
class GateResult:
    name: str  # the metric compared, e.g. "logits.rel_error" or "layer5.attention.rel_error"
    value: float
    threshold: float
    passed: bool
    at_most: bool = False  # the value must be <= threshold (else >=)

    def describe(self) -> str:
        value, threshold = _fmt_pair(self.value, self.threshold)
        return f"{self.name} = {value} (needs {'<=' if self.at_most else '>='} {threshold})"


@dataclass
class Sparsity:
    """Which share of the visible (query, key) pairs the DHSA layers attended to."""
    layers: int
    attended: int
    visible: int

    @property
    def fraction(self) -> float:
        return self.attended / self.visible if self.visible else 1.0


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
    sparsity: Sparsity | None = None
    budget: int | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> str:
        extra = {"passed": self.passed,
                 "attended_fraction": self.sparsity.fraction if self.sparsity else None}
        return json.dumps(asdict(self) | extra, indent=1)

    def to_markdown(self) -> str:
        m = self.logits
        lines = [f"# dhsa-check compare: {self.model}", "",
                 f"- artefact: `{self.artefact}` ({self.runtime}, {self.precision})",
                 f"- inputs: {', '.join(i['name'] + ' (' + str(i['tokens']) + ' tokens)' for i in self.inputs)}"]
        if self.sparsity:
            s = self.sparsity
            lines.append(f"- DHSA attended {100 * s.fraction:.1f} % of the visible (query, key) pairs in its "
                         f"{s.layers} layer(s) (budget {self.budget} keys per query block)"
                         + ("" if s.fraction < 1 else ": every prompt fits the budget, so DHSA equals dense here"))
        for key, secs in self.seconds.items():
            lines.append(f"- {key}: {secs:.3g} s")
        lines += [f"- result: **{'PASS' if self.passed else 'FAIL'}**", "",
                  "| metric | deployed vs PyTorch DHSA | PyTorch dense vs DHSA (context) |", "|---|---|---|"]
        d = self.dense_vs_dhsa
        for key in ("cosine", "rel_error", "norm_ratio", "max_abs", "max_rel", "top1", "kl", "greedy"):
            a = getattr(m, key)
            b = getattr(d, key) if d else None
            if a is None and b is None:
                continue
            lines.append(f"| {key} | {_fmt(a)} | {_fmt(b)} |")
        lines += ["", "| gate | value | threshold | |", "|---|---|---|---|"]
        for g in self.gates:
            value, threshold = _fmt_pair(g.value, g.threshold)
            lines.append(f"| {g.name} | {value} | {'<=' if g.at_most else '>='} {threshold} | "
                         f"{'ok' if g.passed else 'FAIL'} |")
        if self.layers:
            lines += ["", "| layer | rel_error | cosine | max_abs | norm_ratio |", "|---|---|---|---|---|"]
            lines += [f"| {i} | {_fmt(x.rel_error)} | {_fmt(x.cosine)} | {_fmt(x.max_abs)} | {_fmt(x.norm_ratio)} |"
                      for i, x in self.layers]
            if self.first_diverging_layer is not None:
                lines += ["", f"First diverging layer: **{self.first_diverging_layer}**"]
        return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _fmt_pair(value: float, threshold: float) -> tuple[str, str]:
    """value and threshold with enough digits that a value on the wrong side never prints as the
    threshold (a cosine of 0.99989 next to 0.9999 must not read 0.9999)."""
    for digits in range(4, 18):
        a, b = f"{value:.{digits}g}", f"{threshold:.{digits}g}"
        if a != b or value == threshold:
            return a, b
    return repr(value), repr(threshold)


class StreamedMetrics:
    """Metrics over tensors seen chunk by chunk (float64 sums): the reference and the deployed output
    need never be held whole. With logits=True also top-1 agreement and mean KL(ref || got) per row
    of the last axis."""

    def __init__(self, logits: bool = False):
        self.logits = logits
        self.dot = self.ref_sq = self.got_sq = self.diff_sq = self.max_abs = self.max_ref = self.kl = 0.0
        self.hits = self.rows = 0

    def add(self, ref, got) -> None:
        r = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref).double()
        g = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got).double()
        if r.numel() == 0:
            return
        diff = g - r
        self.dot += float((r * g).sum())
        self.ref_sq += float((r * r).sum())
        self.got_sq += float((g * g).sum())
        self.diff_sq += float((diff * diff).sum())
        self.max_abs = max(self.max_abs, float(diff.abs().max()))
        self.max_ref = max(self.max_ref, float(r.abs().max()))
        if self.logits:
            r, g = r.reshape(-1, r.shape[-1]), g.reshape(-1, g.shape[-1])
            self.hits += int((r.argmax(-1) == g.argmax(-1)).sum())
            self.rows += r.shape[0]
            lr, lg = torch.log_softmax(r, -1), torch.log_softmax(g, -1)
            self.kl += float((lr.exp() * (lr - lg)).sum())

    def result(self) -> Metrics:
        nr, ng = self.ref_sq ** 0.5, self.got_sq ** 0.5
        m = Metrics(cosine=self.dot / (nr * ng) if nr > 0 and ng > 0 else float(nr == ng),
                    norm_ratio=ng / nr if nr > 0 else float("inf"),
                    rel_error=self.diff_sq ** 0.5 / nr if nr > 0 else float(self.diff_sq > 0) * float("inf"),
                    max_abs=self.max_abs, max_rel=self.max_abs / max(self.max_ref, 1e-12))
        if self.logits and self.rows:
            m.top1, m.kl = self.hits / self.rows, self.kl / self.rows
        return m


def tensor_metrics(ref: np.ndarray, got: np.ndarray) -> Metrics:
    acc = StreamedMetrics()
    acc.add(ref, got)
    return acc.result()


def logits_metrics(refs: list[np.ndarray], gots: list[np.ndarray], rows: int = 128) -> Metrics:
    """Logits metrics over every position of every input, in chunks of `rows` positions."""
    acc = StreamedMetrics(logits=True)
    for ref, got in zip(refs, gots):
        ref, got = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
        for s in range(0, ref.shape[0], rows):
            acc.add(ref[s:s + rows], got[s:s + rows])
    return acc.result()


def evaluate_gates(logits: Metrics, layers: list[tuple[int, Metrics]], gates: Gates) -> tuple[list[GateResult], int | None]:
    """Logits gates, then one gate per layer whose attention output's relative error (against that
    output's own norm) exceeds the layer gate; the first such layer is the first diverging one."""
    out = [GateResult("logits.cosine", logits.cosine, gates.cosine, logits.cosine >= gates.cosine),
           GateResult("logits.rel_error", logits.rel_error, gates.rel_error, logits.rel_error <= gates.rel_error,
                      at_most=True),
           GateResult("logits.top1", logits.top1, gates.top1, logits.top1 >= gates.top1)]
    if logits.greedy is not None:
        out.append(GateResult("greedy", logits.greedy, gates.greedy, logits.greedy >= gates.greedy))
    first = None
    for i, m in layers:
        if not m.rel_error <= gates.layer_rel_error:
            first = i if first is None else first
            out.append(GateResult(f"layer{i}.attention.rel_error", m.rel_error, gates.layer_rel_error, False,
                                  at_most=True))
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
            layer_names: dict[int, str] | None, gates: Gates, progress=lambda _: None, rows: int = 128) -> Report:
    """`deployed(ids)` returns [logits, *layer outputs in layer_names order].

    Memory: the deployed logits of one input (B x L x V float32) are the only vocabulary-sized array held;
    the PyTorch side keeps final hidden states and computes its logits `rows` positions at a time."""
    model = loaded.model
    lm = runtime.TorchLM(model)
    acc, acc_dense = StreamedMetrics(logits=True), StreamedMetrics(logits=True)
    layer_acc: dict[int, StreamedMetrics] = {}
    greedy_ok = greedy_n = 0
    sparsity = Sparsity(0, 0, 0)
    seconds = {"deployed seconds per teacher-forced token": 0.0}
    for name, ids in inputs:
        rt = enable_dhsa(model, recipe.dhsa)
        seq = ids
        if greedy_tokens:
            progress(f"{name}: reference greedy continuation of {greedy_tokens} tokens (PyTorch DHSA)")
            cont = np.stack([lm.greedy(row[None], greedy_tokens) for row in ids])
            seq = np.concatenate([ids, cont], axis=1)
            # Teacher forcing on prefixes: DHSA prefill is not causal (selection sees the whole prompt), so
            # each step's prediction is the last position of a run on exactly the prefix before it.
            progress(f"{name}: deployed teacher-forced steps ({greedy_tokens})")
            t0 = time.perf_counter()
            for step in range(greedy_tokens):
                pred = deployed(seq[:, : ids.shape[1] + step])[0][:, -1].argmax(-1)
                greedy_ok += int((pred == cont[:, step]).sum())
                greedy_n += cont.shape[0]
            seconds["deployed seconds per teacher-forced token"] += (time.perf_counter() - t0) / greedy_tokens
        capture = TorchCapture(model) if layer_names else None
        progress(f"{name}: PyTorch DHSA forward ({seq.shape[1]} tokens)")
        rt.sparsity = {}
        ref_h = lm.hidden(seq)
        for attended, visible in rt.sparsity.values():
            sparsity.attended, sparsity.visible = sparsity.attended + attended, sparsity.visible + visible
        sparsity.layers = max(sparsity.layers, len(rt.sparsity))
        rt.sparsity = None
        if capture:
            capture.close()
        progress(f"{name}: deployed forward ({runtime_name})")
        outs = deployed(seq)
        got = outs[0]
        if got.shape[:2] != seq.shape or got.shape[2] != lm.vocab_size:
            raise DHSAError(f"deployed logits have shape {got.shape}, PyTorch's {(*seq.shape, lm.vocab_size)}: the "
                            f"artefact does not match {recipe.name} (export it from this model, with --logits all)")
        disable_dhsa(model)
        progress(f"{name}: PyTorch dense forward (context)")
        dense_h = lm.hidden(seq)
        for s in range(0, seq.shape[1], rows):
            ref = lm.logits(ref_h[:, s:s + rows])
            acc.add(ref, got[:, s:s + rows])
            acc_dense.add(ref, lm.logits(dense_h[:, s:s + rows]))
        del outs, got, ref_h, dense_h
        if layer_names:
            for (layer, _), value in zip(layer_names.items(), deployed.last_layer_outputs()):
                layer_acc.setdefault(layer, StreamedMetrics()).add(capture.outputs[layer], value)
    logits, dense = acc.result(), acc_dense.result()
    if greedy_tokens:
        logits.greedy = greedy_ok / greedy_n
        seconds["deployed seconds per teacher-forced token"] /= len(inputs)
    else:
        seconds = {}
    layers = [(i, a.result()) for i, a in sorted(layer_acc.items())]
    gate_results, first = evaluate_gates(logits, layers, gates)
    return Report(model=recipe.name, artefact=artefact, runtime=runtime_name, precision=precision,
                  inputs=[{"name": n, "tokens": int(i.shape[1]), "batch": int(i.shape[0])} for n, i in inputs],
                  logits=logits, dense_vs_dhsa=dense, layers=layers, gates=gate_results, first_diverging_layer=first,
                  sparsity=sparsity if sparsity.layers else None, budget=recipe.dhsa.budget, seconds=seconds)


def compare_cached(recipe: Recipe, loaded, loop, *, artefact: str, precision: str,
                   inputs: list[tuple[str, np.ndarray]], greedy_tokens: int, gates: Gates,
                   progress=lambda _: None) -> Report:
    """A cached export folder against the PyTorch model run the same way (DHSA prefill, then cached steps,
    dense or sparse as the folder decodes), one sequence at a time. Each sequence's `greedy_tokens` steps are teacher-forced with the
    reference's own greedy tokens: the greedy gate is the share of steps whose deployed argmax equals
    them, and the logits gates compare every step's logits (the prompt's last position and each
    generated one)."""
    model = loaded.model
    lm = runtime.TorchLM(model)
    acc, acc_dense = StreamedMetrics(logits=True), StreamedMetrics(logits=True)
    hits = steps = 0
    decode_s = first_s = 0.0
    n = max(greedy_tokens, 1)
    for name, ids in inputs:
        for b, row in enumerate(ids):
            label = name if ids.shape[0] == 1 else f"{name} [{b}]"
            enable_dhsa(model, recipe.dhsa, decode=loop.folder.decode)
            progress(f"{label}: PyTorch DHSA prefill + {n} cached greedy steps ({loop.folder.decode} decode)")
            ref_tokens, ref_rows = lm.cached_greedy(row, n)
            progress(f"{label}: deployed prefill + {n} cached steps ({loop.name}), teacher-forced")
            got = loop.generate(row, n, forced=ref_tokens, keep_logits=True, stop_at_eos=False)
            disable_dhsa(model)
            _, dense_rows = lm.cached_greedy(row, n, forced=ref_tokens)
            hits += sum(int(a == b) for a, b in zip(got.tokens, ref_tokens))
            steps += n
            first_s += got.first_token_s
            decode_s += got.decode_s / max(n - 1, 1)
            acc.add(np.stack(ref_rows), np.stack(got.step_logits))
            acc_dense.add(np.stack(ref_rows), np.stack(dense_rows))
    logits = acc.result()
    runs = sum(ids.shape[0] for _, ids in inputs)
    if greedy_tokens:
        logits.greedy = hits / steps
    gate_results, _ = evaluate_gates(logits, [], gates)
    seconds = {"deployed time to first token": first_s / runs}
    if n > 1:
        seconds["deployed seconds per generated token"] = decode_s / runs
    return Report(model=recipe.name, artefact=artefact, runtime=loop.name + " (KV cache)", precision=precision,
                  inputs=[{"name": nm, "tokens": int(i.shape[1]), "batch": int(i.shape[0])} for nm, i in inputs],
                  logits=logits, dense_vs_dhsa=acc_dense.result(), gates=gate_results, budget=recipe.dhsa.budget,
                  seconds=seconds)


class OnnxRunner:
    """An ONNX file on ONNX Runtime as ids -> [logits]: the logits land in a buffer of their own through
    IO binding (no second copy of B x L x V floats); with layers, the attention outputs of the last call
    are kept for last_layer_outputs()."""

    def __init__(self, path: Path, provider: str, layers: bool):
        self.layer_names, run_path = None, path
        if layers:
            run_path, self.layer_names = with_layer_outputs(path)
        try:
            self.session = runtime.ort_session(run_path, provider, arena=False)
        finally:
            if run_path != path:
                os.unlink(run_path)
        outputs = self.session.get_outputs()
        self.logits_name, self.extra = outputs[0].name, [o.name for o in outputs[1:]]
        self.input_name = self.session.get_inputs()[0].name
        vocab = outputs[0].shape[-1]
        self.vocab = vocab if isinstance(vocab, int) else None
        self._layers: list[np.ndarray] = []

    def __call__(self, ids: np.ndarray) -> list[np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.vocab is None:  # symbolic vocabulary: let ONNX Runtime allocate
            outs = self.session.run(None, {self.input_name: ids})
            self._layers = outs[1:]
            return outs[:1]
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, ids)
        logits = np.empty((*ids.shape, self.vocab), dtype=np.float32)
        binding.bind_output(self.logits_name, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for name in self.extra:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        self._layers = [v.numpy() for v in binding.get_outputs()[1:]]
        return [logits]

    def last_layer_outputs(self) -> list[np.ndarray]:
        return self._layers


def onnx_runner(path: Path, provider: str, layers: bool):
    """(callable ids -> [logits], layer names) for an ONNX file on ONNX Runtime."""
    run = OnnxRunner(path, provider, layers)
    return run, run.layer_names


def engine_runner(path: Path):
    """A TensorRT engine as ids -> [logits]; engine.check_runnable has vetted the GPU and shapes."""
    from .engine import backend, read_sidecar

    record = read_sidecar(path)
    trt, name = backend(record["tensorrt"]["flavour"])
    if record["plugin_library"]:  # the engine's plugin layers are created from the registry
        from .native import trt_library

        trt.get_plugin_registry().load_library(str(trt_library()))
    rt = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = rt.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise DHSAError(f"{name} {trt.__version__} refused engine {path.name} (built for another TensorRT version?); "
                        f"rebuild it with dhsa-build-engine")
    ctx = engine.create_execution_context()
    inp, out = engine.get_tensor_name(0), engine.get_tensor_name(1)
    out_dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.BF16: torch.bfloat16}[engine.get_tensor_dtype(out)]

    def run(ids: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).cuda()
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
            self.max_ref = 0.0

        def get_input_metadata_impl(self):
            return TensorMetadata().add("input_ids", np.int64, shape=(-1, -1))

        def infer_impl(self, feed_dict):
            t0 = time.perf_counter()
            out = {"logits": self.fn(feed_dict["input_ids"])}
            self.max_ref = max(self.max_ref, float(np.abs(out["logits"]).max()))
            self.inference_time = time.perf_counter() - t0  # Polygraphy sums runners' times
            return out

    G_LOGGER.module_severity = G_LOGGER.WARNING
    enable_dhsa(loaded.model, recipe.dhsa)
    torch_runner = TorchRunner(runtime.torch_logits(loaded.model))
    runners = [OnnxrtRunner(runtime.ort_session(path, provider), name="onnxruntime"), torch_runner]
    results = Comparator.run(runners, data_loader=[{"input_ids": ids} for _, ids in inputs])
    # Elementwise, at the logits' own scale: the relative-error gate times the largest reference logit.
    atol = gates.rel_error * torch_runner.max_ref
    ok = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=0.0)))
    disable_dhsa(loaded.model)
    return GateResult("polygraphy.compare_accuracy", float(ok), 1.0, ok)
