"""Shared CLI plumbing: one-line errors with exit code 2, progress lines, MODEL argument resolution."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

from .. import recipes
from ..errors import DHSAError
from ..ops.reference import OpInputError

EXIT_BAD_INPUT = 2

_T0 = time.perf_counter()


def progress(msg: str) -> None:
    click.echo(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", err=True)


def fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def user_errors(fn):
    """Turn user mistakes into one line on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DHSAError, OpInputError) as err:
            fail(str(err))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


_DEFAULT_RECIPE_FOR = {"gemma2": "gemma2-2b", "gemma3_text": "gemma3-1b", "gemma3": "gemma3-1b"}


def _architecture_of(path: Path) -> str | None:
    if path.is_dir():
        cfg = path / "config.json"
        return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None
    try:
        from gguf import GGUFReader

        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception:  # noqa: BLE001 - unreadable GGUF: reported by the loader
        return None


def resolve_model_arg(model: str, recipe_name: str | None, model_path: str | None):
    """MODEL may be a recipe alias, a recipe .yaml, a model directory or a .gguf file.

    Returns (recipe, model_path) where model_path overrides the recipe's sources.
    """
    p = Path(model).expanduser()
    if p.suffix in (".yaml", ".yml"):
        return recipes.load(str(p)), model_path
    if p.exists() and (p.is_dir() or p.suffix == ".gguf"):
        if model_path:
            raise DHSAError("give the weights either as MODEL or as --model-path, not both")
        if recipe_name is None:
            arch = _architecture_of(p)
            if arch not in _DEFAULT_RECIPE_FOR:
                raise DHSAError(f"{p}: cannot tell a supported architecture (got {arch!r}); supported: gemma2, "
                                f"gemma3_text; or name the recipe with --recipe")
            recipe_name = _DEFAULT_RECIPE_FOR[arch]
        return recipes.load(recipe_name), str(p)
    if recipe_name is not None:
        raise DHSAError("--recipe only applies when MODEL is a model directory or a .gguf file")
    return recipes.load(model), model_path


def _parse_list(convert, what: str):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return [convert(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}") from None

    return parse


parse_int_list = _parse_list(int, "integers")
parse_float_list = _parse_list(float, "numbers")


class OneLineErrors:
    """Mixin for click commands: usage errors print one line (`error: ...`) and exit with code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.ctx.get_help())
            sys.exit(0)
        except click.UsageError as err:
            hint = f" (see {err.ctx.command_path} --help)" if err.ctx else ""
            fail(f"{err.format_message()}{hint}")
        except click.ClickException as err:
            fail(err.format_message())
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        if isinstance(rv, int) and standalone_mode:
            sys.exit(rv)
        return rv


class Command(OneLineErrors, click.Command):
    pass


class Group(OneLineErrors, click.Group):
    command_class = Command
