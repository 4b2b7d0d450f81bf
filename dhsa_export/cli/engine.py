"""dhsa-build-engine: build a TensorRT engine from an exported DHSA model."""

from __future__ import annotations

from pathlib import Path

import click

from .. import recipes
from ..engine import RTX_DEFAULT_TARGETS, RTX_TARGETS, build
from ..runtime import model_metadata
from .common import Command, progress, user_errors


def _shape(ctx, param, value):
    if value is None:
        return None
    try:
        b, s = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected BATCHxSEQ like 1x4096, got {value!r}") from None
    return (b, s)


def _targets(ctx, param, value):
    if value is None:
        return None
    targets = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in targets if t not in RTX_TARGETS]
    if unknown or not targets:
        raise click.BadParameter(f"unknown compute capability {', '.join(unknown) or repr(value)}; choose from "
                                 f"{', '.join(RTX_TARGETS)}")
    return targets


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Engine file (default: ONNX name + .engine).")
@click.option("--fp16", "precision", flag_value="fp16",
              help="fp16 linear layers and embeddings, fp32 elsewhere (a builder flag on TensorRT 10; strongly typed "
                   "builders get the network converted, written next to the engine).")
@click.option("--bf16", "precision", flag_value="bf16", help="As --fp16, in bf16.")
@click.option("--min", "min_shape", callback=_shape, help="Smallest BATCHxSEQ (recipe default).")
@click.option("--opt", "opt_shape", callback=_shape, help="BATCHxSEQ to tune for (recipe default).")
@click.option("--max", "max_shape", callback=_shape, help="Largest BATCHxSEQ (recipe default).")
@click.option("--workspace-gib", type=float, help="Builder workspace limit in GiB.")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt_rtx"]), help="Force a TensorRT flavour.")
@click.option("--plugins", "--plugin-library", "plugin_library", type=click.Path(dir_okay=False),
              help="TensorRT DHSA plugin library (default: the installed libdhsa_trt.so).")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file: read when present, written after the build.")
@click.option("--target-gpu", "target_gpus", callback=_targets, metavar="CC[,CC...]",
              help=f"TensorRT-RTX: compute capabilities to build for ({', '.join(RTX_TARGETS)}; default "
                   f"{', '.join(RTX_DEFAULT_TARGETS)}).")
@user_errors
def main(onnx_file, out, precision, min_shape, opt_shape, max_shape, workspace_gib, backend, plugin_library,
         timing_cache, target_gpus):
    """Build a TensorRT engine from ONNX_FILE (written by dhsa-export). Shape profiles default to the
    recipe recorded in the file's metadata."""
    if not Path(onnx_file).is_file():
        raise click.BadParameter(f"{onnx_file} does not exist", param_hint="ONNX_FILE")
    meta = model_metadata(onnx_file)
    recipe = recipes.load(meta["dhsa.recipe"]) if meta.get("dhsa.recipe") in recipes.available() else None
    default = recipe.engine.profile if recipe else None
    shapes = [min_shape or (default.min if default else None), opt_shape or (default.opt if default else None),
              max_shape or (default.max if default else None)]
    if any(s is None for s in shapes):
        raise click.UsageError("no recipe in the file's metadata: give --min, --opt and --max")
    if not all(a <= b <= c for a, b, c in zip(*shapes)):
        raise click.BadParameter("shapes must satisfy min <= opt <= max", param_hint="--min/--opt/--max")
    out = out or str(Path(onnx_file).with_suffix(".engine"))
    result = build(onnx_file, out, tuple(tuple(s) for s in shapes), precision=precision,
                   workspace_gib=workspace_gib or (recipe.engine.workspace_gib if recipe else 4.0),
                   backend_name=backend, plugin_library=plugin_library, timing_cache=timing_cache,
                   target_gpus=target_gpus, progress=progress)
    if result.built_from != Path(onnx_file):
        click.echo(f"built from {result.built_from} (check it with dhsa-check compare --onnx)")
    click.echo(f"wrote {result.path} ({result.bytes / 2**20:.1f} MiB) and {result.sidecar.name} with "
               f"{result.backend} in {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
