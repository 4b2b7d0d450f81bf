#!/usr/bin/env python3
"""The TensorRT plugins' enqueue path on small inputs, for compute-sanitizer (memcheck): every op
through libdhsa_trt.so as TensorRT drives it (tests/trt_plugins.py), each dtype, build-phase and
re-created (serialized) plugins, output over the query; each result checked against the reference.

    compute-sanitizer --tool memcheck python scripts/dev/trt_plugin_smoke.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests import test_cuda_ops as checks  # noqa: E402
from tests.trt_plugins import TrtPlugins  # noqa: E402

for runtime_phase in (False, True):
    plugins = TrtPlugins()
    plugins.runtime_phase = runtime_phase
    for seed, dtype in enumerate(("fp16", "bf16", "fp32")):
        for check in ("chunk_boundaries", "select_keys", "sparse_attention", "select_attention"):
            getattr(checks, f"_check_{check}")(plugins, dtype, 1000 * seed + 7)
    checks._check_select_attention(plugins, "bf16", 99, in_place=True)
print("trt_plugin_smoke: ok")
