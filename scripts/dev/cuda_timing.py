"""CUDA-graph timing shared by the GPU benchmarks: the model shapes they run, calls captured as one
graph (as TensorRT or an ORT session with graph capture launches them: no Python per kernel), and
event-timed replays."""

from __future__ import annotations

import torch

SHAPES = {"gemma2-2b": (8, 4, 256), "llama-8b": (32, 8, 128)}  # (query heads, kv heads, head dim)


def as_graph(*calls):
    """The calls, in order, captured as one CUDA graph; returns its replay. Each call runs once before,
    outside the capture (lazy initialisation, cudaFuncSetAttribute)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return graph.replay


def timed(fn, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of `runs` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times
