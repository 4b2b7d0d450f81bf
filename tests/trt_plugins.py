"""libdhsa_trt.so's plugins driven as TensorRT drives them, without TensorRT: through the test bridge
(plugins/tensorrt/testing/trt_bridge.cc, built beside the plugin library, not installed), on torch
tensors. TrtPlugins has CudaKernels' op methods, so the CUDA op checks run through the plugins too."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from dhsa_export.errors import DHSAError
from dhsa_export.native import _DTYPES, _Attr, _Tensor, _tensor, trt_library
from dhsa_export.ops.reference import OpInputError
from dhsa_export.ops.spec import (CHUNK_BOUNDARIES, DECODE_ATTENTION, SELECT_ATTENTION, SELECT_KEYS, SPARSE_ATTENTION,
                                  OpSpec)

BRIDGE = "libdhsa_trt_bridge.so"
_REPO = Path(__file__).resolve().parents[1]


def bridge_library() -> Path:
    override = os.environ.get("DHSA_TRT_BRIDGE")
    found = [Path(override)] if override else sorted(_REPO.glob(f"build/*/plugins/{BRIDGE}")) + sorted(
        _REPO.glob(f"build/*/{BRIDGE}"))
    for path in found:
        if path.is_file():
            return path
    raise DHSAError(f"{BRIDGE} is not built (it is built with libdhsa_trt.so: pip install . with TensorRT_INCLUDE_DIR)")


class TrtPlugins:
    def __init__(self, trt: Path | None = None, bridge: Path | None = None):
        self.lib = ctypes.CDLL(str(bridge or bridge_library()))
        c, p, err = ctypes, ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        tensors = ctypes.POINTER(_Tensor)
        L = self.lib
        L.trtb_open.argtypes = [c.c_char_p, *err]
        L.trtb_creator.argtypes = [c.c_int, c.c_char_p, c.c_int]
        L.trtb_create.argtypes = [c.c_char_p, c.POINTER(_Attr), c.c_int, c.c_int, *err]
        L.trtb_create.restype = p
        L.trtb_recreate.argtypes = [p, *err]
        L.trtb_recreate.restype = p
        L.trtb_clone.argtypes = [p]
        L.trtb_clone.restype = p
        L.trtb_release.argtypes = [p]
        L.trtb_describe.argtypes = [p, c.c_char_p, c.c_int]
        L.trtb_outputs.argtypes = [p, tensors, c.c_int, tensors, c.c_int, *err]
        L.trtb_supports.argtypes = [p, c.c_int, tensors, c.c_int, c.c_int]
        L.trtb_configure.argtypes = [p, tensors, c.c_int, tensors, c.c_int, *err]
        L.trtb_configure.restype = c.c_int64
        L.trtb_enqueue.argtypes = [p, tensors, c.c_int, tensors, c.c_int, p, p, *err]
        buf = ctypes.create_string_buffer(512)
        if L.trtb_open(str(trt or trt_library()).encode(), buf, len(buf)):
            raise DHSAError(buf.value.decode())
        self._plugins: dict[tuple, int] = {}
        self.runtime_phase = False  # run plugins re-created from their serialized fields

    def creators(self) -> list[str]:
        out, buf, i = [], ctypes.create_string_buffer(2048), 0
        while self.lib.trtb_creator(i, buf, len(buf)) == 0:
            out.append(buf.value.decode())
            i += 1
        return out

    @staticmethod
    def _fail(buf):
        raise OpInputError(buf.value.decode())

    def create(self, spec: OpSpec, attrs, names=None, phase: int = 0) -> int:
        """A plugin from attribute values in spec order (or for `names`), as the ONNX parser passes them."""
        names = names or [a.name for a in spec.attrs]
        types = {a.name: a.type for a in spec.attrs}
        arr = (_Attr * len(names))()
        for a, name, v in zip(arr, names, attrs, strict=True):
            t = types.get(name, type(v))
            a.name, a.type = name.encode(), {int: 0, float: 1, str: 2}[t]
            if t is str:
                a.s = str(v).encode()
            elif t is int:
                a.i = int(v)
            else:
                a.f = float(v)
        buf = ctypes.create_string_buffer(512)
        handle = self.lib.trtb_create(spec.onnx_name.encode(), arr, len(arr), phase, buf, len(buf))
        if not handle:
            self._fail(buf)
        return handle

    def recreate(self, handle: int) -> int:
        buf = ctypes.create_string_buffer(512)
        new = self.lib.trtb_recreate(handle, buf, len(buf))
        if not new:
            self._fail(buf)
        return new

    def clone(self, handle: int) -> int:
        return self.lib.trtb_clone(handle)

    def release(self, handle: int) -> None:
        self.lib.trtb_release(handle)

    def describe(self, handle: int) -> str:
        buf = ctypes.create_string_buffer(512)
        self.lib.trtb_describe(handle, buf, len(buf))
        return buf.value.decode()

    def outputs(self, handle: int, inputs, n_out: int) -> list[tuple[str, tuple]]:
        """Output (dtype, shape) from getOutputDataTypes / getOutputShapes; inputs may be CPU tensors."""
        ins = (_Tensor * len(inputs))(*[_tensor(t) for t in inputs])
        outs, buf = (_Tensor * n_out)(), ctypes.create_string_buffer(512)
        if self.lib.trtb_outputs(handle, ins, len(ins), outs, n_out, buf, len(buf)):
            self._fail(buf)
        return [(_DTYPES[o.dtype], tuple(o.dims[: o.rank])) for o in outs]

    def supports(self, handle: int, pos: int, inputs, outputs) -> bool:
        io = (_Tensor * (len(inputs) + len(outputs)))(*[_tensor(t) for t in [*inputs, *outputs]])
        return bool(self.lib.trtb_supports(handle, pos, io, len(inputs), len(outputs)))

    def _plugin(self, spec: OpSpec, attrs: tuple) -> int:
        key = (spec.onnx_name, attrs, self.runtime_phase)
        if key not in self._plugins:
            handle = self.create(spec, attrs)
            if self.runtime_phase:
                handle, built = self.recreate(handle), handle
                self.release(built)
            self._plugins[key] = handle
        return self._plugins[key]

    def run(self, spec: OpSpec, inputs, attrs, out=None):
        """configurePlugin + getWorkspaceSize, onShapeChange + enqueue on the current stream. Absent
        optional inputs are left off, as TensorRT's ONNX parser leaves them."""
        import torch

        while inputs and inputs[-1] is None:
            inputs = inputs[:-1]
        inputs = [t.contiguous() for t in inputs]
        handle = self._plugin(spec, tuple(attrs))
        descs = self.outputs(handle, inputs, len(spec.outputs))
        if out is None:
            out = tuple(torch.empty(shape, dtype=getattr(torch, dt), device=inputs[0].device) for dt, shape in descs)
        elif not isinstance(out, tuple):
            out = (out,)
        ins = (_Tensor * len(inputs))(*[_tensor(t) for t in inputs])
        outs = (_Tensor * len(out))(*[_tensor(t) for t in out])
        buf = ctypes.create_string_buffer(512)
        ws_bytes = self.lib.trtb_configure(handle, ins, len(ins), outs, len(outs), buf, len(buf))
        if ws_bytes < 0:
            self._fail(buf)
        ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=inputs[0].device)
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        if self.lib.trtb_enqueue(handle, ins, len(ins), outs, len(outs), ws.data_ptr(), stream, buf, len(buf)):
            self._fail(buf)
        return out if len(out) > 1 else out[0]

    def chunk_boundaries(self, key, scores, *attrs, out=None):
        return self.run(CHUNK_BOUNDARIES, [key, scores], attrs, out)

    def select_keys(self, query, key, boundaries, *attrs, out=None):
        return self.run(SELECT_KEYS, [query, key, boundaries], attrs, out)

    def sparse_attention(self, query, key, value, indices, counts, *attrs, out=None):
        return self.run(SPARSE_ATTENTION, [query, key, value, indices, counts], attrs, out)

    def select_attention(self, query, key, value, boundaries, *attrs, out=None):
        return self.run(SELECT_ATTENTION, [query, key, value, boundaries], attrs, out)

    def decode_attention(self, query, key, value, boundaries, chunk_sums, *attrs, out=None):
        return self.run(DECODE_ATTENTION, [query, key, value, boundaries, chunk_sums], attrs, out)
