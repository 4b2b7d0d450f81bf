"""Passkey evaluation: CLI behaviour (the real-weights passkey runs in test_check's gemma3-270m gates)."""

import subprocess
import sys

from dhsa_export import niah
from dhsa_export.config import DHSAConfig

CHECK = [sys.executable, "-m", "dhsa_export.cli.check"]


def run(args, **kw):
    return subprocess.run(CHECK + args, capture_output=True, text=True, **kw)


def test_config_for_budget_scales_forced_tokens():
    base = DHSAConfig(budget=512, block_size=64, local_tokens=64, global_tokens=64)
    small = niah.config_for_budget(base, 128, "dhsa")
    assert (small.budget, small.local_tokens, small.global_tokens, small.block_size) == (128, 32, 32, 32)
    bs = niah.config_for_budget(base, 1024, "block-sparse")
    assert bs.boundary_method == "fixed" and bs.fixed_chunk_size == 64 and bs.local_tokens == 64


def test_markdown_table_counts():
    rs = [niah.Result("dense", 1024, 0.5, "1", 1000, "1", True, 0.1),
          niah.Result("dense", 1024, 0.1, "2", 1000, "3", False, 0.1),
          niah.Result("dhsa@512", 2048, 0.5, "1", 2000, "1", True, 0.1)]
    table = niah.markdown_table(rs)
    assert "| dense | 1/2 | - | 1/2 |" in table and "| dhsa@512 | - | 1/1 | 1/1 |" in table


def test_cli_rejects_unknown_method():
    r = run(["niah", "tiny-gemma2", "--methods", "dense,magic"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "magic" in r.stderr and "Traceback" not in r.stderr


def test_cli_rejects_bad_budget():
    r = run(["niah", "gemma3-270m", "--budgets", "512,2"])
    assert r.returncode == 2 and "budget 2 is too small" in r.stderr and "Traceback" not in r.stderr


def test_cli_random_model_has_no_tokenizer(tmp_path):
    r = run(["niah", "tiny-gemma3", "--out", str(tmp_path)])
    assert r.returncode == 2 and "no tokenizer" in r.stderr and "Traceback" not in r.stderr
