"""DHSA parameters: one validated object shared by the PyTorch model, the exporter and the checker."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

BoundaryMethod = Literal["similarity", "learned", "fixed"]
LayerSelection = Literal["all", "global", "sliding"]

# Default selection thresholds per boundary method. The similarity score is 1 - cos in [0, 2];
# 0.0 keeps every local maximum that differs at all from its neighbourhood (the count cap Nc does
# the rest). The learned predictor's raw-logit threshold is the authors' 1.1.
DEFAULT_THRESHOLDS = {"similarity": 0.0, "learned": 1.1, "fixed": 0.0}
# NMS radius: the authors' 8 for their learned predictor. For the similarity score, radius 2 kept the
# most attention mass on gemma3-270m's sliding-window layers; on its global layers 2, 4 and 8 were
# within 0.01 (docs/boundaries.md).
DEFAULT_NMS_RADIUS = {"similarity": 2, "learned": 8, "fixed": 0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DHSAConfig(_Strict):
    """Every knob of the method (see docs/ops.md for the exact semantics of each)."""

    budget: int = Field(1024, ge=1, description="Nb: keys attended per query block")
    block_size: int = Field(128, ge=1, description="b: query block size")
    chunk_beta: int = Field(8, ge=1, description="at most chunk_beta * ceil(L/b) key chunks")
    local_tokens: int = Field(128, ge=0, description="most recent eligible keys always kept")
    global_tokens: int = Field(128, ge=0, description="first keys of the window always kept (sinks)")
    instruction_tokens: int = Field(64, ge=0, description="last queries attend densely")
    boundary_method: BoundaryMethod = "similarity"
    boundary_window: int = Field(4, ge=1, description="w: left/right window compared at each cut")
    nms_radius: int | None = Field(None, ge=0, description="cuts within this distance are suppressed; "
                                   "None: the method's default")
    boundary_threshold: float | None = Field(None, description="None: the method's default")
    chunk_size: int | None = Field(None, ge=1, description="fixed method: chunk length (default b)")
    predictor_path: str | None = Field(None, description="learned method: checkpoint file")
    share_boundaries: bool = Field(True, description="compute boundaries once, at the first DHSA layer")
    share_indices: bool = Field(False, description="reuse selections across layers of one type")
    layers: LayerSelection = Field("all", description="which layer types use DHSA; others stay dense")
    decode: Literal["dense", "sparse"] = Field("dense", description="cached single-token steps: dense over the "
                                               "cache, or sparse decode (docs/ops.md)")
    decode_budget: int | None = Field(None, ge=1, description="keys each generated token attends to under sparse "
                                      "decode; None: budget")

    @model_validator(mode="after")
    def _check(self) -> DHSAConfig:
        if self.budget < self.local_tokens + self.global_tokens:
            raise ValueError(
                f"budget {self.budget} < local_tokens + global_tokens "
                f"({self.local_tokens} + {self.global_tokens}); raise budget or lower them"
            )
        if self.local_tokens < self.block_size:
            raise ValueError(
                f"local_tokens {self.local_tokens} < block_size {self.block_size}: every query must keep "
                f"its own block; raise local_tokens or lower block_size"
            )
        if self.chunk_size is not None and self.chunk_size * self.chunk_beta < self.block_size:
            raise ValueError(
                f"chunk_size {self.chunk_size} too small: chunk_size * chunk_beta must be >= block_size "
                f"({self.block_size})"
            )
        if self.decode_budget is not None and self.decode_budget < self.local_tokens + self.global_tokens:
            raise ValueError(
                f"decode_budget {self.decode_budget} < local_tokens + global_tokens "
                f"({self.local_tokens} + {self.global_tokens}); raise decode_budget or lower them"
            )
        if self.boundary_method == "learned" and not self.predictor_path:
            raise ValueError("boundary_method 'learned' needs predictor_path (a checkpoint file)")
        return self

    @property
    def step_budget(self) -> int:
        """Keys a sparse-decode step keeps."""
        return self.decode_budget if self.decode_budget is not None else self.budget

    @property
    def threshold(self) -> float:
        if self.boundary_threshold is not None:
            return self.boundary_threshold
        return DEFAULT_THRESHOLDS[self.boundary_method]

    @property
    def radius(self) -> int:
        return self.nms_radius if self.nms_radius is not None else DEFAULT_NMS_RADIUS[self.boundary_method]

    @property
    def fixed_chunk_size(self) -> int:
        return self.chunk_size or self.block_size

    def replace(self, **changes) -> DHSAConfig:
        """A validated copy with some fields changed (None values are ignored)."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        try:
            return DHSAConfig.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error("DHSA parameters", err, prefix="")) from None

    def as_metadata(self) -> dict[str, str]:
        return {f"dhsa.{k}": str(v) for k, v in self.model_dump().items() if v is not None}


def format_validation_error(source: str, err: ValidationError, prefix: str = "recipe ") -> str:
    """One line: where, which key, what is wrong."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{prefix}{source}: {loc}: {msg}{extra}"
