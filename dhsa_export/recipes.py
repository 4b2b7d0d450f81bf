"""Recipes: per-model settings in recipes/*.yaml (model source, DHSA parameters, export, engine, check).

Every section is a strict schema: unknown keys and invalid values are rejected with a one-line
message naming the recipe and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import DHSAConfig, format_validation_error
from .errors import ConfigError

Precision = Literal["fp32", "fp16", "bf16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GGUFSource(_Strict):
    """A GGUF file, given as a path or as a Python package that assembles it (`assemble()`)."""

    path: str | None = None
    package: str | None = None
    extra: str | None = Field(None, description="pip extra of dhsa-export that installs the package")

    @model_validator(mode="after")
    def _one(self):
        if (self.path is None) == (self.package is None):
            raise ValueError("give exactly one of path or package")
        return self


class RandomInit(_Strict):
    """A random-initialised model of a given config (tests, CI)."""

    seed: int = 0
    config: dict[str, Any]


class ModelSection(_Strict):
    architecture: Literal["gemma2", "gemma3"]
    hf_id: str | None = None
    local_dirs: list[str] = Field(default_factory=list)
    gguf: GGUFSource | None = None
    random_init: RandomInit | None = None
    vocab_note: str | None = None

    @model_validator(mode="after")
    def _source(self):
        if not (self.hf_id or self.gguf or self.random_init or self.local_dirs):
            raise ValueError("name at least one source: hf_id, local_dirs, gguf or random_init")
        return self


class Profile(_Strict):
    """A TensorRT optimisation profile over (batch, sequence)."""

    min: tuple[int, int] = (1, 1)
    opt: tuple[int, int]
    max: tuple[int, int]

    @model_validator(mode="after")
    def _order(self):
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError("profile must satisfy min <= opt <= max in every dimension")
        return self


class ExportSection(_Strict):
    dtype: Precision = "fp32"
    max_seq_len: int = Field(8192, ge=1)
    opset: int = Field(18, ge=18)
    logits: Literal["all", "last"] = "all"


class EngineSection(_Strict):
    precision: Precision = "fp16"
    target_gpu: str = "sm_87 (Jetson Orin)"
    profile: Profile
    workspace_gib: float = Field(4.0, gt=0)


class Gates(_Strict):
    """dhsa-check compare's pass conditions. Errors are relative to the reference tensor's own norm,
    so one gate holds at every length and for tensors of any scale (logits, attention outputs)."""
    cosine: float = Field(ge=-1, le=1)
    top1: float = Field(ge=0, le=1)
    greedy: float = Field(1.0, ge=0, le=1)
    rel_error: float = Field(gt=0)  # logits: |deployed - reference| / |reference|
    layer_rel_error: float = Field(gt=0)  # each layer's attention output, against its own norm


# fp32: float32 reordering noise of another runtime stays near 1e-6 relative (docs/testing.md has the
# measurements at 1K-8K), and a 1e-3 relative change of one layer's weights shows as ~1e-3 in that layer:
# 1e-4 sits between them by a factor of ten or more either way.
class CheckSection(_Strict):
    fp32: Gates = Gates(cosine=0.9999, top1=0.999, greedy=1.0, rel_error=1e-4, layer_rel_error=1e-4)
    fp16: Gates = Gates(cosine=0.99, top1=0.99, greedy=0.9, rel_error=0.05, layer_rel_error=0.05)
    bf16: Gates = Gates(cosine=0.98, top1=0.97, greedy=0.8, rel_error=0.1, layer_rel_error=0.1)


class NiahSection(_Strict):
    lengths: list[int] = Field(default_factory=lambda: [1024, 2048, 4096, 8192])
    depths: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9])
    keys: int = Field(3, ge=1)
    budgets: list[int] = Field(default_factory=lambda: [128, 256, 512, 1024])


class Recipe(_Strict):
    name: str
    description: str = ""
    model: ModelSection
    dhsa: DHSAConfig = DHSAConfig()
    export: ExportSection = ExportSection()
    engine: EngineSection
    check: CheckSection = CheckSection()
    niah: NiahSection = NiahSection()
    source_file: str | None = None

    @property
    def is_random(self) -> bool:
        return self.model.random_init is not None and not (self.model.hf_id or self.model.gguf)


def recipes_dir() -> Path:
    """recipes/ of the source tree, or the copy installed with the package."""
    env = os.environ.get("DHSA_RECIPES_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "recipes", here / "recipes"):
        if cand.is_dir():
            return cand
    return here.parent / "recipes"


def available() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def parse(data: dict, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {source}: expected a mapping at the top level")
    try:
        return Recipe.model_validate({**data, "source_file": source})
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load(name_or_path: str) -> Recipe:
    """A recipe by alias (`gemma2-2b`) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = recipes_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown model alias {name_or_path!r}; known: {', '.join(available())} "
                              f"(or pass a recipe .yaml / a model directory / a .gguf file)")
    elif not path.is_file():
        raise ConfigError(f"recipe file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse(data, str(path))


def with_overrides(recipe: Recipe, dhsa: dict | None = None, export: dict | None = None) -> Recipe:
    """A copy with DHSA / export fields overridden (None values ignored), validated again."""
    data = recipe.model_dump()
    for section, changes in (("dhsa", dhsa), ("export", export)):
        data[section].update({k: v for k, v in (changes or {}).items() if v is not None})
    return parse(data, recipe.source_file or recipe.name)
