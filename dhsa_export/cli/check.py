"""dhsa-check: accuracy checks of DHSA models and their deployments against the PyTorch reference."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import check as checking
from .. import engine, generation, model_folder, niah, recipes, runtime
from ..errors import DHSAError
from ..files import atomic_write
from ..loading import load
from ..recipes import Gates
from .common import Group, parse_float_list, parse_int_list, progress, resolve_model_arg, user_errors


@click.group(cls=Group)
def main():
    """Check DHSA accuracy: passkey grids (niah) and reference comparisons (compare)."""


@main.command("niah")
@click.argument("model")
@click.option("--recipe", "recipe_name", help="Recipe to use when MODEL is a model directory or .gguf file.")
@click.option("--model-path", help="Load weights from this directory or .gguf file instead of the recipe's sources.")
@click.option("--lengths", callback=parse_int_list, help="Context lengths in tokens, e.g. 1024,2048 (recipe default).")
@click.option("--depths", callback=parse_float_list, help="Needle depths as fractions, e.g. 0.1,0.5,0.9.")
@click.option("--keys", type=click.IntRange(min=1), help="Random pass keys per (length, depth) cell.")
@click.option("--budgets", callback=parse_int_list, help="DHSA / block-sparse token budgets, e.g. 128,512.")
@click.option("--methods", default="dense,dhsa,block-sparse", show_default=True,
              help="Comma-separated subset of dense, dhsa, block-sparse.")
@click.option("--new-tokens", default=8, show_default=True, type=click.IntRange(min=1), help="Greedy tokens generated.")
@click.option("--seed", default=0, show_default=True, help="Seed for the pass keys.")
@click.option("--out", "out_dir", default="niah-results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for niah.json, niah.md and niah.png.")
@click.option("--onnx", "onnx_file", type=click.Path(),
              help="Also answer every prompt with this exported model on ONNX Runtime: a --with-cache folder "
                   "(prefill + cached steps), or an .onnx file (greedy by full re-runs).")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider for --onnx.")
@user_errors
def niah_cmd(model, recipe_name, model_path, lengths, depths, keys, budgets, methods, new_tokens, seed, out_dir,
             onnx_file, provider):
    """Passkey retrieval grid (context length x needle depth x keys) for dense, DHSA and block-sparse
    attention on the same prompts; writes JSON, a Markdown table and a heatmap PNG."""
    recipe, model_path = resolve_model_arg(model, recipe_name, model_path)
    methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = set(methods) - {"dense", "dhsa", "block-sparse"}
    if unknown:
        raise click.BadParameter(f"unknown method(s) {sorted(unknown)}; choose from dense, dhsa, block-sparse",
                                 param_hint="--methods")
    spec = recipe.niah
    lengths, depths = lengths or spec.lengths, depths or spec.depths
    keys, budgets = keys or spec.keys, budgets or spec.budgets
    for b in budgets:
        niah.config_for_budget(recipe.dhsa, b, "dhsa")  # validate before the long load
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise click.BadParameter("depths must lie in [0, 1]", param_hint="--depths")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load(recipe, model_path, progress=progress)
    if loaded.tokenizer is None:
        raise click.UsageError(f"{recipe.name} has no tokenizer (random-init model); niah needs a real model")
    prompts = niah.make_prompts(loaded.tokenizer, lengths, depths, keys, seed=seed)
    progress(f"{len(prompts)} prompts x {len(budgets)} budgets; methods {', '.join(methods)}")
    extra = {}
    if onnx_file and model_folder.is_model_folder(onnx_file):
        loop = generation.OrtLoop(model_folder.open_folder(onnx_file), provider)
        generation.check_prompt(loop.folder, max(len(p.input_ids) for p in prompts), new_tokens)
        recipe = recipes.with_overrides(recipe, dhsa={"decode": loop.folder.decode})  # PyTorch decodes as it does
        extra[f"onnx-{provider}"] = lambda ids: loop.generate(ids.numpy(), new_tokens).tokens
    elif onnx_file:
        session = runtime.ort_session(onnx_file, provider)
        logits = runtime.ort_logits(session)
        extra[f"onnx-{provider}"] = lambda ids: runtime.greedy(logits, ids.numpy(), new_tokens)
    results = niah.run_grid(loaded.model, loaded.tokenizer, prompts, recipe.dhsa, budgets, methods,
                            new_tokens=new_tokens, progress=progress, extra_runners=extra)
    meta = {"model": recipe.name, "source": loaded.source.description, "runtime": "pytorch",
            "dhsa": recipe.dhsa.model_dump(), "budgets": budgets, "new_tokens": new_tokens, "seed": seed,
            "configs": {f"{m}@{b}": niah.config_for_budget(recipe.dhsa, b, m).model_dump()
                        for b in budgets for m in methods if m != "dense"}}
    niah.save_json(results, out / "niah.json", meta)
    table = niah.markdown_table(results)
    atomic_write(out / "niah.md", lambda p: p.write_text(table + "\n"))
    niah.save_heatmap(results, out / "niah.png", f"{recipe.name} passkey retrieval (PyTorch)")
    click.echo(table)
    progress(f"wrote {out / 'niah.json'}, {out / 'niah.md'}, {out / 'niah.png'}")




def _gates(recipe, precision, **overrides) -> Gates:
    base = getattr(recipe.check, precision)
    data = base.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Gates.model_validate(data)


@main.command("compare")
@click.argument("model")
@click.option("--onnx", "onnx_file", type=click.Path(), help="Exported model to check on ONNX Runtime: an .onnx file, "
              "or a --with-cache folder (prefill + cached steps, as it generates).")
@click.option("--engine", "engine_file", type=click.Path(dir_okay=False), help="TensorRT engine to check.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--recipe", "recipe_name", help="Recipe when MODEL is a model directory or .gguf file.")
@click.option("--model-path", help="Weights directory or .gguf file overriding the recipe's sources.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="Text file, one prompt per line.")
@click.option("--passkey", type=click.IntRange(min=64), help="Use one passkey prompt of this many tokens.")
@click.option("--length", default=96, show_default=True, type=click.IntRange(min=1),
              help="Random token ids per sample for models without a tokenizer.")
@click.option("--greedy-tokens", default=32, show_default=True, type=click.IntRange(min=0),
              help="Teacher-forced greedy tokens compared (0 = off).")
@click.option("--layers", is_flag=True, help="Also compare every layer's attention output (first diverging layer).")
@click.option("--polygraphy", is_flag=True, help="Also run Polygraphy's comparator (ONNX Runtime vs PyTorch).")
@click.option("--cosine", type=float, help="Override the cosine gate.")
@click.option("--top1", type=float, help="Override the top-1 agreement gate.")
@click.option("--greedy", type=float, help="Override the greedy agreement gate.")
@click.option("--rel-error", type=float, help="Override the logits' relative-error gate (|deployed - ref| / |ref|).")
@click.option("--layer-rel-error", type=float, help="Override the per-layer relative-error gate (with --layers).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", default="check-report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.json and report.md.")
@user_errors
def compare_cmd(model, onnx_file, engine_file, provider, recipe_name, model_path, prompts_file, passkey, length,
                greedy_tokens, layers, polygraphy, cosine, top1, greedy, rel_error, layer_rel_error, seed, out_dir):
    """Run a deployed artefact (--onnx or --engine) and the PyTorch DHSA model on the same token ids and
    compare: cosine, norm ratio, max abs / rel error, top-1 agreement, KL, teacher-forced greedy agreement,
    and with --layers every attention output. Exit 0 when all gates pass, 1 when one fails, 2 on bad input."""
    if bool(onnx_file) == bool(engine_file):
        raise click.UsageError("give exactly one of --onnx FILE or --engine FILE")
    recipe, model_path = resolve_model_arg(model, recipe_name, model_path)
    artefact = Path(onnx_file or engine_file)
    if onnx_file and model_folder.is_model_folder(artefact):
        return _compare_folder(recipe, model_path, artefact, provider, prompts_file, passkey, length, greedy_tokens,
                               layers, polygraphy, seed, out_dir,
                               dict(cosine=cosine, top1=top1, greedy=greedy, rel_error=rel_error))
    if not artefact.is_file():
        raise DHSAError(f"{artefact} not found" if not artefact.is_dir() else
                        f"{artefact} is a folder but not a dhsa-export --with-cache model (no dhsa_export.json)")
    precision = "fp32"
    if onnx_file:
        meta = runtime.model_metadata(artefact)
        exported_from = meta.get("dhsa.recipe")
        if exported_from and exported_from != recipe.name:
            raise DHSAError(f"{artefact.name} was exported from {exported_from}, not {recipe.name}; pass the matching "
                            f"MODEL")
        if meta.get("dhsa.attention") == "dense":
            raise DHSAError(f"{artefact.name} is a dense export; compare a DHSA export")
        precision = meta.get("dhsa.dtype", "fp32")
        deployed, layer_names = checking.onnx_runner(artefact, provider, layers)
        runtime_name = f"onnxruntime {provider}"
    else:
        if layers:
            raise click.UsageError("--layers needs --onnx (engines expose only their outputs)")
        record = engine.read_sidecar(artefact)
        if record.get("recipe") and record["recipe"] != recipe.name:
            raise DHSAError(f"{artefact.name} was built from {record['recipe']}, not {recipe.name}; pass the matching "
                            f"MODEL")
        precision = record["precision"]
        runtime_name = f"{record['tensorrt']['flavour']} {record['tensorrt']['version']}"
    gates = _gates(recipe, precision, cosine=cosine, top1=top1, greedy=greedy, rel_error=rel_error,
                   layer_rel_error=layer_rel_error)
    loaded = load(recipe, model_path, progress=progress)
    inputs = checking.make_inputs(recipe, loaded.tokenizer, prompts_file, passkey, length, seed)
    if engine_file:
        shape = (max(ids.shape[0] for _, ids in inputs), max(ids.shape[1] for _, ids in inputs) + greedy_tokens)
        engine.check_runnable(record, artefact.name, shape, engine.current_gpu())
        deployed, layer_names = checking.engine_runner(artefact), None
    report = checking.compare(recipe, loaded, deployed, artefact=str(artefact), runtime_name=runtime_name,
                              precision=precision, inputs=inputs, greedy_tokens=greedy_tokens,
                              layer_names=layer_names, gates=gates, progress=progress)
    if polygraphy:
        report.gates.append(checking.polygraphy_gate(recipe, loaded, artefact, provider, inputs, gates))
    _finish(report, out_dir)


def _compare_folder(recipe, model_path, folder_path, provider, prompts_file, passkey, length, greedy_tokens, layers,
                    polygraphy, seed, out_dir, overrides):
    if layers or polygraphy:
        raise click.UsageError("--layers and --polygraphy take an .onnx file; a --with-cache folder is checked "
                               "as it generates")
    folder = model_folder.open_folder(folder_path)
    if folder.record["recipe"] != recipe.name:
        raise DHSAError(f"{folder_path} was exported from {folder.record['recipe']}, not {recipe.name}; pass the "
                        f"matching MODEL")
    if folder.record["metadata"].get("dhsa.attention") == "dense":
        raise DHSAError(f"{folder_path} is a dense export; compare a DHSA export")
    precision = folder.record["dtype"]
    gates = _gates(recipe, precision, **overrides)
    loaded = load(recipe, model_path, progress=progress)
    inputs = checking.make_inputs(recipe, loaded.tokenizer, prompts_file, passkey, length, seed)
    generation.check_prompt(folder, max(ids.shape[1] for _, ids in inputs), max(greedy_tokens, 1))
    loop = generation.OrtLoop(folder, provider)
    report = checking.compare_cached(recipe, loaded, loop, artefact=str(folder_path), precision=precision,
                                     inputs=inputs, greedy_tokens=greedy_tokens, gates=gates, progress=progress)
    _finish(report, out_dir)


def _finish(report, out_dir):
    js, md = checking.write_reports(report, Path(out_dir))
    click.echo(report.to_markdown())
    progress(f"wrote {js} and {md}")
    if not report.passed:
        failed = ", ".join(g.describe() for g in report.failed())
        first = (f"; first diverging layer: {report.first_diverging_layer}"
                 if report.first_diverging_layer is not None else "")
        click.echo(f"FAIL: {failed}{first}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
