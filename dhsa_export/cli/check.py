"""dhsa-check: accuracy checks of DHSA models and their deployments against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import click

from .. import niah
from ..config import DHSAConfig
from ..loading import load
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
@user_errors
def niah_cmd(model, recipe_name, model_path, lengths, depths, keys, budgets, methods, new_tokens, seed, out_dir):
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
    results = niah.run_grid(loaded.model, loaded.tokenizer, prompts, recipe.dhsa, budgets, methods,
                            new_tokens=new_tokens, progress=progress)
    meta = {"model": recipe.name, "source": loaded.source.description, "runtime": "pytorch",
            "dhsa": recipe.dhsa.model_dump(), "budgets": budgets, "new_tokens": new_tokens, "seed": seed,
            "configs": {f"{m}@{b}": niah.config_for_budget(recipe.dhsa, b, m).model_dump()
                        for b in budgets for m in methods if m != "dense"}}
    niah.save_json(results, out / "niah.json", meta)
    table = niah.markdown_table(results)
    niah._atomic_write(out / "niah.md", lambda p: p.write_text(table + "\n"))
    niah.save_heatmap(results, out / "niah.png", f"{recipe.name} passkey retrieval (PyTorch)")
    click.echo(table)
    progress(f"wrote {out / 'niah.json'}, {out / 'niah.md'}, {out / 'niah.png'}")


__all__ = ["main", "DHSAConfig"]


if __name__ == "__main__":
    main()
