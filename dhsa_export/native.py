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
from .ops.spec import (ALL_OPS, CHUNK_BOUNDARIES, DECODE_ATTENTION, SELECT_ATTENTION, SELECT_KEYS, SPARSE_ATTENTION,
                       OpSpec)

ORT_LIBRARY = "libdhsa_ort.so"
CUDA_LIBRARY = "libdhsa_cuda.so"
TRT_LIBRARY = "libdhsa_trt.so"
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


def trt_library() -> Path:
    """The TensorRT plugin library (IPluginV3 plugins of the dhsa ops); DHSA_TRT_LIBRARY overrides the search.
    Built when TensorRT's headers are found (TensorRT_INCLUDE_DIR) and nvcc is present."""
    return _find(TRT_LIBRARY, "DHSA_TRT_LIBRARY")


def cuda_library() -> Path:
    """The CUDA kernels' C API (plugins/capi/dhsa_capi.h); DHSA_CUDA_LIBRARY overrides the search."""
    return _find(CUDA_LIBRARY, "DHSA_CUDA_LIBRARY")


MAX_RANK = 8
# Element type codes of the C API (dhsa_capi.h); anything else is refused by the op's checks.
_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64")
_UNSUPPORTED = len(_DTYPES)


class _Attr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_int32), ("i", ctypes.c_int64), ("f", ctypes.c_double),
                ("s", ctypes.c_char_p)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int32), ("rank", ctypes.c_int32),
                ("dims", ctypes.c_int64 * MAX_RANK)]


def _tensor(t) -> _Tensor:
    """A torch tensor (or None: an absent optional input) as the C API's description."""
    out = _Tensor()
    if t is None:
        out.rank = -1
        return out
    name = str(t.dtype).removeprefix("torch.")
    out.data, out.dtype, out.rank = t.data_ptr(), _DTYPES.index(name) if name in _DTYPES else _UNSUPPORTED, t.dim()
    if t.dim() > MAX_RANK:
        raise DHSAError(f"rank {t.dim()} tensors are not DHSA op inputs")
    for i, d in enumerate(t.shape):
        out.dims[i] = d
    return out


class CudaKernels:
    """The ops of the native library by name (its C API, dhsa_capi.h), on torch tensors: contiguous, on the
    current CUDA device and stream. Attributes are parsed and inputs checked by the same native code as
    the ONNX Runtime ops, so both reject a malformed input with the same message."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        c, p, err = ctypes, ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        tensors = ctypes.POINTER(_Tensor)
        self.lib.dhsa_op_signature.argtypes = [c.c_char_p, c.c_char_p, c.c_int]
        self.lib.dhsa_op_create.argtypes = [c.c_char_p, c.POINTER(_Attr), c.c_int, c.POINTER(p), *err]
        self.lib.dhsa_op_release.argtypes = [p]
        self.lib.dhsa_op_check.argtypes = [p, tensors, c.c_int, tensors, c.c_int, c.POINTER(c.c_int64), *err]
        self.lib.dhsa_op_run_cuda.argtypes = [p, tensors, c.c_int, tensors, c.c_int, p, p, *err]
        self.lib.dhsa_cuda_set_shared_memory_limit.argtypes = [c.c_int]
        self.lib.dhsa_cuda_use_hopper_kernels.argtypes = [c.c_int]
        self.lib.dhsa_cuda_attention_kernel.restype = c.c_char_p
        self._handles: dict[tuple, ctypes.c_void_p] = {}

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

    def signature(self, spec: OpSpec) -> str:
        """The op's signature in the native op table (compared with spec.py's by the tests)."""
        buf = ctypes.create_string_buffer(1024)
        if self.lib.dhsa_op_signature(spec.onnx_name.encode(), buf, len(buf)) != 0:
            raise DHSAError(buf.value.decode())
        return buf.value.decode()

    @staticmethod
    def _fail(err: ctypes.Array):
        from .ops.reference import OpInputError

        raise OpInputError(err.value.decode())

    def _handle(self, spec: OpSpec, attrs: tuple) -> ctypes.c_void_p:
        """The native op for these attribute values, created once (attributes parsed and validated)."""
        key = (spec.onnx_name, attrs)
        if key not in self._handles:
            codes = {int: 0, float: 1, str: 2}
            arr = (_Attr * len(spec.attrs))()
            for a, (s, v) in zip(arr, zip(spec.attrs, attrs, strict=True)):
                a.name, a.type = s.name.encode(), codes[s.type]
                if s.type is str:
                    a.s = str(v).encode()
                elif s.type is int:
                    a.i = int(v)
                else:
                    a.f = float(v)
            handle, err = ctypes.c_void_p(), ctypes.create_string_buffer(512)
            if self.lib.dhsa_op_create(spec.onnx_name.encode(), arr, len(arr), ctypes.byref(handle), err, len(err)):
                self._fail(err)
            self._handles[key] = handle
        return self._handles[key]

    def check(self, spec: OpSpec, inputs, attrs) -> tuple[list[tuple], int]:
        """The outputs' (dtype name, shape) and the CUDA workspace bytes for these inputs, or the op's
        error (OpInputError). Reads no data: CPU tensors describe CUDA inputs just as well."""
        handle = self._handle(spec, tuple(attrs))
        ins = (_Tensor * len(inputs))(*[_tensor(t) for t in inputs])
        outs, ws = (_Tensor * len(spec.outputs))(), ctypes.c_int64()
        err = ctypes.create_string_buffer(512)
        if self.lib.dhsa_op_check(handle, ins, len(ins), outs, len(outs), ctypes.byref(ws), err, len(err)):
            self._fail(err)
        return [(_DTYPES[o.dtype], tuple(o.dims[: o.rank])) for o in outs], ws.value

    def run(self, spec: OpSpec, inputs, attrs, out=None, workspace: bool = True):
        """Checks, allocates what `out` does not give (the workspace from torch's caching allocator, so its
        memory statistics include it; workspace=False lets the launcher take it from the stream-ordered
        allocator, as ORT's CUDA EP does), then launches on the current stream. Returns the output
        tensor, or a tuple of them."""
        import torch

        inputs = [None if t is None else t.contiguous() for t in inputs]
        device = inputs[0].device
        descs, ws_bytes = self.check(spec, inputs, attrs)
        if out is None:
            out = tuple(torch.empty(shape, dtype=getattr(torch, dt), device=device) for dt, shape in descs)
        elif not isinstance(out, tuple):
            out = (out,)
        ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=device) if workspace else None
        handle = self._handle(spec, tuple(attrs))
        ins = (_Tensor * len(inputs))(*[_tensor(t) for t in inputs])
        outs = (_Tensor * len(out))(*[_tensor(t) for t in out])
        err = ctypes.create_string_buffer(512)
        stream = ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
        if self.lib.dhsa_op_run_cuda(handle, ins, len(ins), outs, len(outs), None if ws is None else ws.data_ptr(),
                                     stream, err, len(err)):
            self._fail(err)
        return out if len(out) > 1 else out[0]

    def chunk_boundaries(self, key, scores, *attrs, out=None):
        return self.run(CHUNK_BOUNDARIES, (key, scores), attrs, out)

    def select_keys(self, query, key, boundaries, *attrs, out=None):
        return self.run(SELECT_KEYS, (query, key, boundaries), attrs, out)

    def sparse_attention(self, query, key, value, indices, counts, *attrs, out=None, workspace: bool = True):
        """out: a buffer for the result, which may be `query` itself (the kernels read each query row
        before writing that row's output, as ORT's in-place reuse of Q's buffer relies on)."""
        out = _output(out, query)
        return self.run(SPARSE_ATTENTION, (query, key, value, indices, counts), attrs, out, workspace)

    def select_attention(self, query, key, value, boundaries, *attrs, out=None, workspace: bool = True):
        """select_keys then sparse_attention in one launch sequence, the attention's blocks that need no
        selection running beside it; out as in sparse_attention (may be `query` itself)."""
        out = _output(out, query, key, value)
        return self.run(SELECT_ATTENTION, (query, key, value, boundaries), attrs, out, workspace)

    def decode_attention(self, query, key, value, boundaries, chunk_sums, *attrs, out=None, workspace: bool = True):
        """One cached step of sparse decode; out as in sparse_attention (may be `query` itself)."""
        out = _output(out, query, key, value)
        return self.run(DECODE_ATTENTION, (query, key, value, boundaries, chunk_sums), attrs, out, workspace)


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
    for spec in ALL_OPS:
        n = len(spec.inputs)
        torch.library.register_kernel(spec.qualname, "cuda", lambda *a, s=spec, n=n: k.run(s, a[:n], a[n:]))
    return k
