"""Find the native DHSA libraries (built by `pip install .` or by CMake from plugins/), and expose the
CUDA kernels to PyTorch: `enable_cuda_kernels()` registers them as the CUDA implementations of the
`torch.ops.dhsa.*` ops, so a model on the GPU runs them without any other change."""

from __future__ import annotations

import ctypes
import functools
import os
from importlib import metadata
from pathlib import Path

from .errors import DHSAError

ORT_LIBRARY = "libdhsa_ort.so"
CUDA_LIBRARY = "libdhsa_cuda.so"
_HERE = Path(__file__).resolve().parent

BUILD_HINT = ("build it with `pip install .` (needs ONNX Runtime's C++ headers for the ORT library: set "
              "ONNXRUNTIME_INCLUDE_DIR, see README 'Native plugins'; nvcc for the CUDA library) or with "
              "`cmake -S plugins -B build/plugins && cmake --build build/plugins`")


def _candidates(name: str) -> list[Path]:
    out = [_HERE / "lib" / name]
    try:  # the installed wheel, even when a source checkout shadows the package on sys.path
        dist = metadata.distribution("dhsa-export")
        out += [Path(dist.locate_file(f)) for f in dist.files or [] if f.name == name]
    except metadata.PackageNotFoundError:
        pass
    repo = _HERE.parent
    out += sorted(repo.glob(f"build/*/{name}")) + sorted(repo.glob(f"build/*/*/{name}"))
    return out


def _find(name: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        if not Path(override).is_file():
            raise DHSAError(f"{env}={override} does not exist; {BUILD_HINT}")
        return Path(override)
    for path in _candidates(name):
        if path.is_file():
            return path
    raise DHSAError(f"the DHSA library {name} is not built; {BUILD_HINT}")


def ort_library() -> Path:
    """The ONNX Runtime custom-op library; DHSA_ORT_LIBRARY overrides the search."""
    return _find(ORT_LIBRARY, "DHSA_ORT_LIBRARY")


def cuda_library() -> Path:
    """The ctypes entry points to the CUDA kernels; DHSA_CUDA_LIBRARY overrides the search."""
    return _find(CUDA_LIBRARY, "DHSA_CUDA_LIBRARY")


class CudaKernels:
    """The CUDA launchers on torch tensors (contiguous, on the current CUDA device and stream)."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        p, i64p, i32p, f32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p, ctypes.c_void_p
        c = ctypes
        self.lib.dhsa_cuda_chunk_boundaries.argtypes = [p, c.c_int, i64p, f32p, c.c_char_p, i64p, c.c_float, i32p, p,
                                                        p, c.c_char_p, c.c_int]
        self.lib.dhsa_cuda_select_keys.argtypes = [p, p, c.c_int, i64p, i64p, i32p, c.c_int64, i64p, i32p, i32p, p,
                                                   p, c.c_char_p, c.c_int]
        self.lib.dhsa_cuda_sparse_attention.argtypes = [p, p, p, c.c_int, i64p, i64p, i32p, i32p, c.c_int64, i64p,
                                                        c.c_float, c.c_float, p, p, p, c.c_char_p, c.c_int]
        self.lib.dhsa_cuda_select_attention.argtypes = [p, p, p, c.c_int, i64p, i64p, i32p, c.c_int64, i64p,
                                                        c.c_float, c.c_float, p, p, p, c.c_char_p, c.c_int]
        self.lib.dhsa_cuda_workspace_size.argtypes = [c.c_int, i64p, i64p, c.c_int64]
        self.lib.dhsa_cuda_workspace_size.restype = c.c_int64
        self.lib.dhsa_cuda_set_shared_memory_limit.argtypes = [c.c_int]
        self.lib.dhsa_cuda_use_hopper_kernels.argtypes = [c.c_int]
        self.lib.dhsa_cuda_attention_kernel.restype = c.c_char_p

    def set_shared_memory_limit(self, nbytes: int) -> None:
        """Plan kernels for at most `nbytes` of shared memory per block (0: the device's limit), e.g.
        to run the configurations chosen for smaller GPUs on a large one."""
        self.lib.dhsa_cuda_set_shared_memory_limit(int(nbytes))

    def use_hopper_kernels(self, enabled: bool) -> None:
        """On a Hopper GPU, take the Hopper paths (default: the wgmma attention kernel, thread block
        clusters in boundary and key selection) or the portable ones other GPUs run (to test those here)."""
        self.lib.dhsa_cuda_use_hopper_kernels(int(bool(enabled)))

    def attention_kernel(self) -> str:
        """Which tensor-core attention kernel 16-bit inputs take on the current device."""
        return self.lib.dhsa_cuda_attention_kernel().decode()

    @staticmethod
    def _dtype(t) -> int:
        import torch

        codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
        if t.dtype not in codes:
            raise DHSAError(f"CUDA kernels take float32, float16 or bfloat16, got {t.dtype}")
        return codes[t.dtype]

    @staticmethod
    def _i64(values) -> ctypes.Array:
        values = [int(v) for v in values]
        return (ctypes.c_int64 * len(values))(*values)

    @staticmethod
    def _stream():
        import torch

        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def _workspace(self, op: int, shape, iattrs, extra: int, device):
        """Workspace from torch's caching allocator (so torch's memory statistics include it)."""
        import torch

        n = self.lib.dhsa_cuda_workspace_size(op, self._i64(shape), self._i64(iattrs), extra)
        return torch.empty(max(n, 1), dtype=torch.uint8, device=device)

    def _check(self, rc: int, err: ctypes.Array) -> None:
        if rc != 0:
            from .ops.reference import OpInputError

            raise OpInputError(err.value.decode())

    def chunk_boundaries(self, key, scores, method, block_size, chunk_beta, chunk_size, window, nms_radius,
                         threshold, instruction_tokens, out=None):
        import torch

        from .ops.reference import num_chunks

        key = key.contiguous()
        n = num_chunks(key.shape[2], block_size, chunk_beta)
        out = torch.empty((key.shape[0], n + 1), dtype=torch.int32, device=key.device) if out is None else out
        err = ctypes.create_string_buffer(512)
        sp = None if scores is None else scores.contiguous().float()
        ws = self._workspace(0, key.shape, [method == "fixed"], 0, key.device)
        rc = self.lib.dhsa_cuda_chunk_boundaries(
            key.data_ptr(), self._dtype(key), self._i64(key.shape), None if sp is None else sp.data_ptr(),
            method.encode(), self._i64([block_size, chunk_beta, chunk_size, window, nms_radius, instruction_tokens]),
            float(threshold), out.data_ptr(), self._stream(), ws.data_ptr(), err, len(err))
        self._check(rc, err)
        return out

    def select_keys(self, query, key, boundaries, block_size, budget, local_tokens, global_tokens, sliding_window,
                    instruction_tokens, out=None):
        import torch

        from .ops.reference import num_query_blocks

        query, key, boundaries = query.contiguous(), key.contiguous(), boundaries.contiguous()
        b, nqb = query.shape[0], num_query_blocks(query.shape[2], block_size)
        if out is None:
            out = (torch.empty((b, nqb, budget), dtype=torch.int32, device=query.device),
                   torch.empty((b, nqb), dtype=torch.int32, device=query.device))
        err = ctypes.create_string_buffer(512)
        ws = self._workspace(1, query.shape, [block_size], boundaries.shape[1], query.device)
        rc = self.lib.dhsa_cuda_select_keys(
            query.data_ptr(), key.data_ptr(), self._dtype(query), self._i64(query.shape), self._i64(key.shape),
            boundaries.data_ptr(), boundaries.shape[1],
            self._i64([block_size, budget, local_tokens, global_tokens, sliding_window, instruction_tokens]),
            out[0].data_ptr(), out[1].data_ptr(), self._stream(), ws.data_ptr(), err, len(err))
        self._check(rc, err)
        return out

    def sparse_attention(self, query, key, value, indices, counts, block_size, scale, softcap, sliding_window,
                         instruction_tokens, out=None):
        """out: a buffer for the result, which may be `query` itself (the kernels read each query row
        before writing that row's output, as ORT's in-place reuse of Q's buffer relies on)."""
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        indices, counts = indices.contiguous(), counts.contiguous()
        out = _output(out, query)
        err = ctypes.create_string_buffer(512)
        ws = self._workspace(2, query.shape, [sliding_window, instruction_tokens], 0, query.device)
        rc = self.lib.dhsa_cuda_sparse_attention(
            query.data_ptr(), key.data_ptr(), value.data_ptr(), self._dtype(query), self._i64(query.shape),
            self._i64(key.shape), indices.data_ptr(), counts.data_ptr(), indices.shape[2],
            self._i64([block_size, sliding_window, instruction_tokens]), float(scale), float(softcap),
            out.data_ptr(), self._stream(), ws.data_ptr(), err, len(err))
        self._check(rc, err)
        return out

    def select_attention(self, query, key, value, boundaries, block_size, budget, local_tokens, global_tokens,
                         scale, softcap, sliding_window, instruction_tokens, out=None):
        """select_keys then sparse_attention in one launch sequence, the attention's blocks that need no
        selection running beside it; out as in sparse_attention (may be `query` itself)."""
        query, key, value, boundaries = query.contiguous(), key.contiguous(), value.contiguous(), boundaries.contiguous()
        out = _output(out, query, key, value)
        err = ctypes.create_string_buffer(512)
        iattrs = [block_size, budget, local_tokens, global_tokens, sliding_window, instruction_tokens]
        ws = self._workspace(3, [*query.shape, key.shape[1]], iattrs, boundaries.shape[1], query.device)
        rc = self.lib.dhsa_cuda_select_attention(
            query.data_ptr(), key.data_ptr(), value.data_ptr(), self._dtype(query), self._i64(query.shape),
            self._i64(key.shape), boundaries.data_ptr(), boundaries.shape[1], self._i64(iattrs), float(scale),
            float(softcap),
            out.data_ptr(), self._stream(), ws.data_ptr(), err, len(err))
        self._check(rc, err)
        return out


def _output(out, query, *others):
    """The attention's output buffer: a new one, or `out` when it has the query's shape, dtype and
    device, is contiguous, and is the query itself or overlaps none of query and others."""
    import torch

    if out is None:
        return torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype or out.device != query.device or not out.is_contiguous():
        raise DHSAError(f"out must be a contiguous {query.dtype} tensor of the query's shape {tuple(query.shape)} "
                        f"on {query.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if (out.data_ptr() != query.data_ptr() and _overlap(out, query)) or any(_overlap(out, t) for t in others):
        raise DHSAError("out overlaps " + ("the key, the value or part of the query" if others else
                                           "the query without being the query") +
                        "; pass the query or a separate buffer")
    return out


def _overlap(a, b) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


@functools.lru_cache(maxsize=1)
def cuda_kernels() -> CudaKernels:
    return CudaKernels(cuda_library())


@functools.lru_cache(maxsize=1)
def enable_cuda_kernels() -> CudaKernels:
    """Make the native CUDA kernels the CUDA implementation of torch.ops.dhsa.* (idempotent)."""
    import torch

    from .ops import library  # noqa: F401 - defines the ops

    k = cuda_kernels()
    torch.library.register_kernel("dhsa::chunk_boundaries", "cuda", lambda *a: k.chunk_boundaries(*a))
    torch.library.register_kernel("dhsa::select_keys", "cuda", lambda *a: k.select_keys(*a))
    torch.library.register_kernel("dhsa::sparse_attention", "cuda", lambda *a: k.sparse_attention(*a))
    torch.library.register_kernel("dhsa::select_attention", "cuda", lambda *a: k.select_attention(*a))
    return k
