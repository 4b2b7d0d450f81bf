"""Find the native DHSA libraries (built by `pip install .` or by CMake from plugins/)."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from .errors import DHSAError

ORT_LIBRARY = "libdhsa_ort.so"
_HERE = Path(__file__).resolve().parent

BUILD_HINT = ("build it with `pip install .` (needs ONNX Runtime's C++ headers: set ONNXRUNTIME_INCLUDE_DIR, see "
              "README 'Native plugins') or `cmake -S plugins -B build/plugins -DONNXRUNTIME_INCLUDE_DIR=... && "
              "cmake --build build/plugins`, or point DHSA_ORT_LIBRARY at an existing build")


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


def ort_library() -> Path:
    """Path of the ONNX Runtime custom-op library; DHSA_ORT_LIBRARY overrides the search."""
    env = os.environ.get("DHSA_ORT_LIBRARY")
    if env:
        if not Path(env).is_file():
            raise DHSAError(f"DHSA_ORT_LIBRARY={env} does not exist; {BUILD_HINT}")
        return Path(env)
    for path in _candidates(ORT_LIBRARY):
        if path.is_file():
            return path
    raise DHSAError(f"the DHSA ONNX Runtime op library ({ORT_LIBRARY}) is not built; {BUILD_HINT}")
