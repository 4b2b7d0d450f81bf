"""dhsa-build-engine: build a TensorRT engine from an exported DHSA model."""

from __future__ import annotations

from pathlib import Path

import click

from .. import recipes
from ..engine import build
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


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Engine file (default: ONNX name + .engine).")
@click.option("--fp16", "precision", flag_value="fp16", help="Allow fp16 kernels (full TensorRT only).")
@click.option("--bf16", "precision", flag_value="bf16", help="Allow bf16 kernels (full TensorRT only).")
@click.option("--min", "min_shape", callback=_shape, help="Smallest BATCHxSEQ (recipe default).")
@click.option("--opt", "opt_shape", callback=_shape, help="BATCHxSEQ to tune for (recipe default).")
@click.option("--max", "max_shape", callback=_shape, help="Largest BATCHxSEQ (recipe default).")
@click.option("--workspace-gib", type=float, help="Builder workspace limit in GiB.")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt_rtx"]), help="Force a TensorRT flavour.")
@click.option("--plugin-library", type=click.Path(exists=True, dir_okay=False), help="TensorRT DHSA plugin library (default: the installed libdhsa_trt.so).")
@user_errors
def main(onnx_file, out, precision, min_shape, opt_shape, max_shape, workspace_gib, backend, plugin_library):
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
                   backend_name=backend, plugin_library=plugin_library, progress=progress)
    click.echo(f"wrote {result.path} ({result.bytes / 2**20:.1f} MiB) with {result.backend} in {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
