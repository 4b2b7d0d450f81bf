"""Writing result files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import DHSAError

# Weights above this go to an external-data file beside the .onnx (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 256 << 20


def check_writable_parent(out: Path) -> None:
    """The folder `out` will be written into exists and is writable (one error line naming the fix)."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise DHSAError(f"output folder {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise DHSAError(f"output folder {parent} is not writable; choose another --out")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) fills a temporary file in the same folder, which then replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary file, not the result
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def publish_onnx(out: Path, save: Callable[[Path], None], check: Callable[[Path], None] = lambda _: None) -> None:
    """save(tmp) writes a model (and any external-data files beside it) into a private folder next
    to `out`; after check(tmp) passes, the data files move first, so a visible .onnx never points at
    missing data, and the .onnx last, in one step."""
    out = Path(out)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))
    try:
        tmp = tmp_dir / out.name
        save(tmp)
        check(tmp)
        for p in tmp_dir.iterdir():
            if p.name != out.name:
                shutil.move(str(p), out.parent / p.name)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()
