"""dhsa-export: load a Gemma model, replace its attention with DHSA, write ONNX with `dhsa` ops."""

from __future__ import annotations

import click

from .. import recipes
from ..export import export, export_cached
from .common import Command, progress, resolve_model_arg, user_errors


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def print_summary(result, recipe, dense: bool) -> None:
    click.echo(f"wrote {result.path} ({_mib(result.file_bytes)})"
               + (f" + {result.data_path.name} ({_mib(result.data_bytes)})" if result.data_path else ""))
    for kind, values in (("input ", result.inputs), ("output", result.outputs)):
        layers = {n.split(".")[1] for n, _, _ in values if n.startswith(("past_key_values.", "present."))}
        for name, dtype, dims in values:
            if name.startswith(("past_key_values.", "present.")) and name.split(".")[1] != "0":
                continue  # one layer's cache tensors stand for all
            more = f"  (and layers 1..{len(layers) - 1})" if len(layers) > 1 and name.endswith(".0.value") else ""
            click.echo(f"  {kind} {name}: {dtype}{dims}{more}")
    dhsa = {k: v for k, v in result.op_counts.items() if k.startswith("dhsa.")}
    std = {k: v for k, v in result.op_counts.items() if not k.startswith("dhsa.")}
    if dhsa:
        click.echo("  dhsa ops: " + ", ".join(f"{k.split('.', 1)[1]} x{v}" for k, v in dhsa.items()))
    top = sorted(std.items(), key=lambda kv: -kv[1])
    click.echo(f"  standard ops: {sum(std.values())} nodes, {len(std)} types ("
               + ", ".join(f"{k} x{v}" for k, v in top[:8]) + (", ..." if len(top) > 8 else "") + ")")
    if not dense:
        d = recipe.dhsa
        click.echo(f"  DHSA: budget {d.budget}, block {d.block_size}, chunks <= {d.chunk_beta}/block, "
                   f"local {d.local_tokens}, global {d.global_tokens}, instruction tail {d.instruction_tokens}, "
                   f"boundaries {d.boundary_method}, layers {d.layers}, share boundaries {d.share_boundaries}, "
                   f"share indices {d.share_indices}")
    click.echo(f"  {result.seconds:.1f} s, peak RSS {result.peak_rss_mib:.0f} MiB")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output .onnx file (a folder with --with-cache).")
@click.option("--with-cache", is_flag=True, help="Write a folder that generates: the model with a KV cache "
              "(prefill runs DHSA, cached steps attend densely), genai_config.json for onnxruntime-genai, the "
              "tokenizer and the op library. Logits of the last position unless --logits all.")
@click.option("--decode", type=click.Choice(["dense", "sparse"]), help="With --with-cache: cached steps attend "
              "densely over the cache, or sparsely (DhsaDecodeAttention; the folder then runs on the own loop, not "
              "onnxruntime-genai). Default: the recipe's.")
@click.option("--recipe", "recipe_name", help="Recipe when MODEL is a model directory or .gguf file "
              f"(default by architecture). Known: {', '.join(recipes.available())}.")
@click.option("--model-path", help="Weights directory or .gguf file, overriding the recipe's sources.")
@click.option("--ops", "flavour", type=click.Choice(["plugin", "portable"]), default="plugin", show_default=True,
              help="plugin: bare dhsa nodes for runtimes with the DHSA plugins; portable: standard ONNX ops only.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Export precision (recipe default). "
              "fp16 keeps Gemma's residual stream, norms and attention in fp32.")
@click.option("--logits", type=click.Choice(["all", "last"]), help="Logits for every position or the last only.")
@click.option("--max-seq-len", type=click.IntRange(min=1), help="Largest sequence length the graph accepts.")
@click.option("--dense", is_flag=True, help="Export with dense attention instead (the baseline).")
@click.option("--budget", type=int, help="DHSA token budget per query block.")
@click.option("--block-size", type=int, help="Query block size.")
@click.option("--chunk-beta", type=int, help="At most chunk_beta chunks per query block.")
@click.option("--local-tokens", type=int, help="Most recent keys always kept.")
@click.option("--global-tokens", type=int, help="First keys of the window always kept.")
@click.option("--instruction-tokens", type=int, help="Last queries that attend densely.")
@click.option("--boundary-method", type=click.Choice(["similarity", "learned", "fixed"]), help="Chunking method.")
@click.option("--predictor-path", type=click.Path(dir_okay=False), help="Learned boundary predictor checkpoint.")
@click.option("--layers", type=click.Choice(["all", "global", "sliding"]), help="Layer types that use DHSA.")
@user_errors
def main(model, out, with_cache, decode, recipe_name, model_path, flavour, dtype, logits, max_seq_len, dense, budget, block_size,
         chunk_beta, local_tokens, global_tokens, instruction_tokens, boundary_method, predictor_path, layers):
    """Export MODEL (a recipe alias such as gemma2-2b or gemma3-270m, a recipe .yaml, a model directory or
    a .gguf file) to ONNX with DHSA attention as `dhsa` custom ops.

    \b
    Examples:
      dhsa-export gemma3-270m --out gemma3-270m.onnx
      dhsa-export gemma2-2b --model-path ~/models/gemma-2-2b-it --dtype bf16 --budget 1024 --out g2.onnx
      dhsa-export tiny-gemma3 --ops portable --out tiny.onnx
      dhsa-export gemma3-270m --with-cache --out out/gemma3-270m    (then: dhsa-generate out/gemma3-270m)
    """
    recipe, model_path = resolve_model_arg(model, recipe_name, model_path)
    if with_cache and logits is None:
        logits = "last"  # a generating model needs no vocabulary-sized rows for every prompt position
    if decode and not with_cache:
        raise click.UsageError("--decode applies to --with-cache exports (a graph without a cache never decodes)")
    recipe = recipes.with_overrides(
        recipe,
        dhsa=dict(budget=budget, block_size=block_size, chunk_beta=chunk_beta, local_tokens=local_tokens,
                  global_tokens=global_tokens, instruction_tokens=instruction_tokens,
                  boundary_method=boundary_method, predictor_path=predictor_path, layers=layers, decode=decode),
        export=dict(dtype=dtype, max_seq_len=max_seq_len, logits=logits))
    result = (export_cached if with_cache else export)(recipe, out, model_path=model_path, dtype=recipe.export.dtype, flavour=flavour,
                    logits=recipe.export.logits, max_seq_len=recipe.export.max_seq_len, dense=dense,
                    progress=progress)
    print_summary(result, recipe, dense)
    if with_cache:
        click.echo(f"  generate: dhsa-generate {result.path.parent} --prompt TEXT  (or og.Model('{result.path.parent}'))")


if __name__ == "__main__":
    main()
