"""Passkey / needle-in-a-haystack evaluation: context lengths x needle depths x random keys.

Every method (dense, DHSA, block-sparse at each budget) answers the same prompts. A runner is any
callable `(input_ids) -> generated token ids`, so the same grid runs on PyTorch or on a deployed
runtime (dhsa-check niah --onnx).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .attention import disable_dhsa, enable_dhsa
from .config import DHSAConfig
from .errors import ConfigError
from .files import atomic_write

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about it.\n\n")
FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
          "There and back again. ")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is"

Runner = Callable[[torch.Tensor], list[int]]


@dataclass(frozen=True)
class Prompt:
    length: int  # target context length in tokens
    depth: float  # needle position as a fraction of the filler
    key: str
    input_ids: tuple[int, ...] = field(repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def build_prompt(tokenizer, length: int, depth: float, key: str) -> Prompt:
    """Filler sentences around the needle: the longest prompt of at most `length` tokens."""
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    per_sentence = sum(len(enc(s)) for s in FILLER) / len(FILLER)

    def tokens(n: int) -> list[int]:
        filler = [FILLER[i % len(FILLER)] for i in range(n)]
        cut = round(depth * n)
        text = INTRO + "".join(filler[:cut]) + NEEDLE.format(key=key) + "".join(filler[cut:]) + QUESTION
        return tokenizer(text).input_ids

    n = max(0, int((length - len(tokens(0))) / per_sentence))
    for _ in range(50):  # converges in a few steps: each step moves by the estimated overshoot
        ids = tokens(n)
        gap = length - len(ids)
        if gap < 0 and n > 0:
            n -= max(1, int(-gap / per_sentence))
        elif gap >= per_sentence * 1.5:
            n += max(1, int(gap / per_sentence) - 1)
        else:
            break
    while len(ids) > length and n > 0:
        n -= 1
        ids = tokens(n)
    return Prompt(length, depth, key, tuple(ids))


def make_prompts(tokenizer, lengths: Sequence[int], depths: Sequence[float], keys: int,
                 seed: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    return [build_prompt(tokenizer, L, d, str(rng.randint(10000, 99999)))
            for L in lengths for d in depths for _ in range(keys)]


def config_for_budget(base: DHSAConfig, budget: int, method: str) -> DHSAConfig:
    """DHSA ('dhsa') or fixed-chunk block-sparse ('block-sparse') at `budget`.

    Forced local/global tokens are capped at budget/4 each (and the query block at the local
    count), so one recipe sweeps budgets from 128 up with identical rules for both methods.
    """
    if budget < 4:
        raise ConfigError(f"budget {budget} is too small for a budget sweep: need >= 4 (a quarter each for "
                          f"local and global tokens)")
    local = min(base.local_tokens, budget // 4)
    glob = min(base.global_tokens, budget // 4)
    block = min(base.block_size, local)
    cfg = base.replace(budget=budget, local_tokens=local, global_tokens=glob, block_size=block)
    if method == "block-sparse":
        cfg = cfg.replace(boundary_method="fixed", chunk_size=block)
    return cfg


def torch_runner(model, new_tokens: int) -> Runner:
    @torch.no_grad()
    def run(input_ids: torch.Tensor) -> list[int]:
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=0)
        return out[0, input_ids.shape[1]:].tolist()

    return run


@dataclass
class Result:
    method: str  # "dense", "dhsa@512", "block-sparse@512", ...
    length: int
    depth: float
    key: str
    n_tokens: int
    answer: str
    correct: bool
    seconds: float


def method_label(method: str, budget: int | None) -> str:
    return method if budget is None else f"{method}@{budget}"


def run_grid(model, tokenizer, prompts: Sequence[Prompt], base: DHSAConfig, budgets: Sequence[int],
             methods: Sequence[str] = ("dense", "dhsa", "block-sparse"), new_tokens: int = 8,
             progress: Callable[[str], None] = print, extra_runners: dict[str, Runner] | None = None) -> list[Result]:
    """Every prompt through every (method, budget), then through each extra runner (a deployed model);
    returns one Result per run."""
    plan: list[tuple[str, int | None]] = []
    if "dense" in methods:
        plan.append(("dense", None))
    plan += [(m, b) for b in budgets for m in methods if m != "dense"]
    plan += [(label, None) for label in extra_runners or {}]
    results: list[Result] = []
    total = len(plan) * len(prompts)
    k = 0
    for method, budget in plan:
        if extra_runners and method in extra_runners:
            run = extra_runners[method]
        elif method == "dense":
            disable_dhsa(model)
            run = torch_runner(model, new_tokens)
        else:
            enable_dhsa(model, config_for_budget(base, budget, method))
            run = torch_runner(model, new_tokens)
        label = method_label(method, budget)
        for p in prompts:
            k += 1
            t0 = time.perf_counter()
            ids = run(torch.tensor([p.input_ids]))
            answer = tokenizer.decode(ids, skip_special_tokens=True)
            ok = p.key in answer
            dt = time.perf_counter() - t0
            results.append(Result(label, p.length, p.depth, p.key, p.n_tokens, answer.strip(), ok, dt))
            progress(f"[{k}/{total}] {label:>18} L={p.n_tokens:<6} depth={p.depth:.0%} key={p.key} "
                     f"{'ok ' if ok else 'MISS'} {answer.strip()[:24]!r} ({dt:.1f} s)")
    disable_dhsa(model)
    return results


def summarize(results: Sequence[Result]) -> dict[str, dict[int, tuple[int, int]]]:
    """method -> length -> (correct, total)."""
    table: dict[str, dict[int, list[int]]] = {}
    for r in results:
        cell = table.setdefault(r.method, {}).setdefault(r.length, [0, 0])
        cell[0] += int(r.correct)
        cell[1] += 1
    return {m: {L: tuple(c) for L, c in sorted(v.items())} for m, v in table.items()}


def markdown_table(results: Sequence[Result]) -> str:
    summary = summarize(results)
    lengths = sorted({r.length for r in results})
    head = "| method | " + " | ".join(f"{L // 1024}K" if L % 1024 == 0 else str(L) for L in lengths) + " | total |"
    lines = [head, "|" + "---|" * (len(lengths) + 2)]
    for method, row in summary.items():
        cells = [f"{row[L][0]}/{row[L][1]}" if L in row else "-" for L in lengths]
        ok, tot = sum(c[0] for c in row.values()), sum(c[1] for c in row.values())
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ok}/{tot} |")
    return "\n".join(lines)


def save_json(results: Sequence[Result], path: Path, meta: dict) -> None:
    data = {"meta": meta, "summary": {m: {str(L): list(c) for L, c in row.items()}
                                      for m, row in summarize(results).items()},
            "results": [asdict(r) for r in results]}
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1)))


def save_heatmap(results: Sequence[Result], path: Path, title: str) -> None:
    """One panel per method: depth (rows) x length (columns), colour = fraction of keys found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    methods = list(dict.fromkeys(r.method for r in results))
    lengths = sorted({r.length for r in results})
    depths = sorted({r.depth for r in results})
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for ax, method in zip(axes.flat, methods):
        grid = torch.full((len(depths), len(lengths)), float("nan"))
        for i, d in enumerate(depths):
            for j, L in enumerate(lengths):
                cell = [r.correct for r in results if r.method == method and r.depth == d and r.length == L]
                if cell:
                    grid[i, j] = sum(cell) / len(cell)
        ax.imshow(grid.numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{L // 1024}K" if L >= 1024 else str(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ok = sum(r.correct for r in results if r.method == method)
        n = sum(1 for r in results if r.method == method)
        ax.set_title(f"{method}  ({ok}/{n})", fontsize=9)
        ax.set_xlabel("context length", fontsize=8)
        ax.set_ylabel("needle depth", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
