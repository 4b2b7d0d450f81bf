"""The paper's learned boundary predictor (architecture of the authors' v1), and its checkpoint I/O.

For each position p it encodes the 2w keys around the gap after p with one multi-head self-attention
and a LayerNorm, mean-pools the left and right halves into l and r, and scores the gap with an MLP
over [l, r, |l - r|, l * r, cos(l, r)]. Parameter names follow the authors' module layout, so their
published Gemma2 checkpoint (`boundary_predictor_gemma2.pt`) loads as is when a user has it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DHSAError

FORMAT = "dhsa-boundary-predictor-v1"


class WindowEncoder(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        attended, _ = self.mha(windows, windows, windows, need_weights=False)
        return self.norm(attended)


class WindowPool(nn.Module):
    """Optional learned pooling over one half-window (softmax-weighted mean)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Linear(channels, 1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(self.gate(tokens), dim=1) * tokens).sum(1)


class BoundaryPredictor(nn.Module):
    """Keys (B, Hkv, L, D) -> cut logits (B, L); logit p scores a chunk boundary after position p."""

    def __init__(self, channels: int, window: int = 4, hidden: int = 256, heads: int = 4,
                 window_pool: bool = False):
        super().__init__()
        self.channels, self.window, self.hidden, self.heads = channels, window, hidden, heads
        self.enc = WindowEncoder(channels, heads)
        self.pool = WindowPool(channels) if window_pool else None
        self.mlp = nn.Sequential(nn.Linear(4 * channels + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def config(self) -> dict:
        return dict(channels=self.channels, window=self.window, hidden=self.hidden, heads=self.heads,
                    window_pool=self.pool is not None)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, L') already padded by w-1 left and w right; returns (B, L' - 2w + 1)."""
        w = self.window
        blocks = x.unfold(2, 2 * w, 1).permute(0, 2, 3, 1)  # (B, n, 2w, C)
        b, n, _, c = blocks.shape
        enc = self.enc(blocks.reshape(b * n, 2 * w, c))
        if self.pool is None:
            left, right = enc[:, :w].mean(1), enc[:, w:].mean(1)
        else:
            left, right = self.pool(enc[:, :w]), self.pool(enc[:, w:])
        cos = F.cosine_similarity(left, right, dim=-1, eps=1e-6)[:, None]
        feat = torch.cat([left, right, (left - right).abs(), left * right, cos], dim=-1)
        return self.mlp(feat).view(b, n)

    def forward(self, key: torch.Tensor, positions_per_pass: int = 4096) -> torch.Tensor:
        b, h, seq, d = key.shape
        if h * d != self.channels:
            raise DHSAError(f"boundary predictor expects Hkv*D = {self.channels} key features, the model has "
                            f"{h}*{d} = {h * d}; use a checkpoint trained for this model")
        w = self.window
        x = F.pad(key.float().permute(0, 1, 3, 2).reshape(b, h * d, seq), (w - 1, w))
        if torch.compiler.is_compiling() or seq <= positions_per_pass:
            return self._score(x)
        # Eager long sequences: bound the (B, n, 2w, C) window tensor.
        parts = [self._score(x[:, :, p : p + positions_per_pass + 2 * w - 1])
                 for p in range(0, seq, positions_per_pass)]
        return torch.cat(parts, dim=1)


def save_predictor(module: BoundaryPredictor, path: str | Path) -> None:
    torch.save({"format": FORMAT, "config": module.config(), "state_dict": module.state_dict()}, path)


def _unwrap(obj) -> tuple[dict, dict]:
    """(state_dict, config) from our format, a raw state dict, or a common training wrapper."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"], dict(obj.get("config", {}))
    if isinstance(obj, dict):
        for k in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(k), dict):
                return obj[k], {}
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, {}
    raise DHSAError("boundary predictor checkpoint holds no state dict; save one with "
                    "dhsa_export.boundary_predictor.save_predictor or torch.save(module.state_dict())")


def load_predictor(path: str | Path, channels: int, window: int = 4, heads: int = 4) -> BoundaryPredictor:
    """Load a checkpoint for a model whose keys have Hkv*D = channels features."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DHSAError(f"boundary predictor checkpoint {path} not found; pass an existing file as predictor_path")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DHSAError(f"cannot read boundary predictor checkpoint {path}: {exc}") from None
    state, cfg = _unwrap(raw)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "mlp.0.weight" not in state or "enc.norm.weight" not in state:
        raise DHSAError(f"{path} is not a boundary predictor checkpoint (no 'enc.norm.weight' / 'mlp.0.weight')")
    ckpt_channels = state["enc.norm.weight"].shape[0]
    if ckpt_channels != channels:
        raise DHSAError(f"{path} was trained for Hkv*D = {ckpt_channels} key features, this model has {channels}; "
                        f"use a checkpoint for this model")
    module = BoundaryPredictor(channels, window=cfg.get("window", window), hidden=state["mlp.0.weight"].shape[0],
                               heads=cfg.get("heads", heads), window_pool="pool.gate.weight" in state)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise DHSAError(f"{path} does not match the predictor architecture ({detail})")
    module.load_state_dict(state)
    return module.eval()
