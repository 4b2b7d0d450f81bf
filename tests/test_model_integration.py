"""DHSA inside Gemma2 / Gemma3 through transformers' attention interface."""

import pytest
import torch

from dhsa_export import attention
from dhsa_export.boundary_predictor import BoundaryPredictor, load_predictor, save_predictor
from dhsa_export.errors import DHSAError
from dhsa_export.ops import library as ops_library

from .models import tiny, token_ids

TINY = ["tiny-gemma2", "tiny-gemma3"]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("seq", [1, 63, 64, 65, 300])
def test_full_budget_equals_dense(name, seq, seed):
    recipe, model = tiny(name)
    ids = token_ids(2, seq, seed)
    attention.disable_dhsa(model)
    dense = logits(model, ids)
    attention.enable_dhsa(model, recipe.dhsa.replace(budget=max(seq, recipe.dhsa.budget)))
    full = logits(model, ids)
    attention.disable_dhsa(model)
    assert (full - dense).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", TINY)
def test_small_budget_is_really_sparse(name, seed):
    """The sparse path must change the result once L exceeds what the budget can hold."""
    recipe, model = tiny(name)
    ids = token_ids(2, 300, seed)
    attention.disable_dhsa(model)
    dense = logits(model, ids)
    attention.enable_dhsa(model, recipe.dhsa)
    sparse = logits(model, ids)
    attention.disable_dhsa(model)
    assert (sparse - dense).abs().max().item() > 1e-2
    assert torch.isfinite(sparse).all()


class _Spy:
    def __init__(self, monkeypatch, name):
        self.calls = 0
        real = getattr(ops_library, name)

        def spy(*args):
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(ops_library, name, spy)


@pytest.mark.parametrize("share_boundaries,share_indices,expect_bd,expect_sel", [
    (True, False, 1, 6), (False, False, 6, 6), (True, True, 1, 2), (False, True, 2, 2)])
def test_sharing_across_layers(monkeypatch, share_boundaries, share_indices, expect_bd, expect_sel):
    recipe, model = tiny("tiny-gemma3")  # 6 layers: 5 sliding, 1 global
    bd, sel = _Spy(monkeypatch, "chunk_boundaries"), _Spy(monkeypatch, "select_keys")
    fused, att = _Spy(monkeypatch, "select_attention"), _Spy(monkeypatch, "sparse_attention")
    attention.enable_dhsa(model, recipe.dhsa.replace(share_boundaries=share_boundaries,
                                                     share_indices=share_indices))
    logits(model, token_ids(1, 200, 0))
    logits(model, token_ids(1, 150, 1))  # state is per forward: counts double, nothing leaks
    attention.disable_dhsa(model)
    assert (bd.calls, sel.calls + fused.calls) == (2 * expect_bd, 2 * expect_sel)
    # Shared selections take the two ops; a layer's own selection the fused one.
    assert (fused.calls, att.calls) == ((0, 12) if share_indices else (12, 0))


@pytest.mark.parametrize("layers,expected", [("all", 6), ("global", 1), ("sliding", 5)])
def test_layer_selection(monkeypatch, layers, expected):
    recipe, model = tiny("tiny-gemma3")
    spy = _Spy(monkeypatch, "select_attention")
    attention.enable_dhsa(model, recipe.dhsa.replace(layers=layers))
    logits(model, token_ids(1, 100, 0))
    attention.disable_dhsa(model)
    assert spy.calls == expected


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("seq", [1, 16, 31, 47, 48, 129])
def test_sliding_layers_left_dense_attend_to_their_window(name, seq, monkeypatch, seed):
    """layers="global": the sliding layers' prefill goes through the sparse attention op over each query
    block's window (no L x L scores) and equals dense attention (soft-cap, GQA, window 32, blocks of 16)."""
    recipe, model = tiny(name)
    ids = token_ids(2, seq, seed)
    attention.disable_dhsa(model)
    dense = logits(model, ids)
    spy = _Spy(monkeypatch, "sparse_attention")
    attention.enable_dhsa(model, recipe.dhsa.replace(layers="global", budget=max(seq, recipe.dhsa.budget)))
    got = logits(model, ids)
    attention.disable_dhsa(model)
    assert spy.calls == attention.layer_types(model).count("sliding")
    assert (got - dense).abs().max().item() <= 1e-5


def test_window_selection_holds_each_blocks_window(seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        seq, block, window = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 300), (1, 40), (1, 90)))
        indices, counts = attention.window_selection(3, seq, block, window, "cpu")
        assert indices.shape == (3, -(-seq // block), window + block - 1) and indices.dtype == torch.int32
        for i in range(indices.shape[1]):
            first, last = max(0, i * block - window + 1), min(seq, (i + 1) * block)
            n = int(counts[0, i])
            assert indices[:, i, :n].tolist() == [list(range(first, last))] * 3, (seq, block, window, i)
            assert (indices[:, i, n:] == -1).all()


@pytest.mark.parametrize("name", TINY)
def test_decode_steps_are_dense(name, monkeypatch):
    """generate(): the prefill runs DHSA once, every cached decode step runs dense attention."""
    recipe, model = tiny(name)
    ids = token_ids(1, 120, 3)
    spy = _Spy(monkeypatch, "select_attention")
    n_layers = model.config.num_hidden_layers
    attention.enable_dhsa(model, recipe.dhsa.replace(budget=200))  # full budget: must match dense
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert spy.calls == n_layers  # prefill only
    attention.disable_dhsa(model)
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert out.tolist() == ref.tolist()


def test_padded_batch_is_refused():
    recipe, model = tiny("tiny-gemma2")
    ids = token_ids(2, 40, 0)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    attention.enable_dhsa(model, recipe.dhsa)
    with pytest.raises(DHSAError, match="padded batch"):
        with torch.no_grad():
            model(ids, attention_mask=mask)
    attention.disable_dhsa(model)


def test_learned_predictor_roundtrip(tmp_path, seed):
    recipe, model = tiny("tiny-gemma2")
    cfg = model.config
    channels = cfg.num_key_value_heads * cfg.head_dim
    torch.manual_seed(seed)
    pred = BoundaryPredictor(channels, hidden=32)
    path = tmp_path / "predictor.pt"
    save_predictor(pred, path)
    loaded = load_predictor(path, channels)
    key = torch.randn(2, cfg.num_key_value_heads, 50, cfg.head_dim)
    torch.testing.assert_close(loaded(key), pred(key))
    # Chunked eager evaluation of long inputs equals one pass.
    torch.testing.assert_close(loaded(key, positions_per_pass=7), pred(key), rtol=1e-5, atol=1e-5)

    ids = token_ids(2, 150, seed)
    attention.enable_dhsa(model, recipe.dhsa.replace(boundary_method="learned", predictor_path=str(path)))
    out = logits(model, ids)
    attention.disable_dhsa(model)
    assert torch.isfinite(out).all()


def test_learned_predictor_rejects_other_model(tmp_path):
    path = tmp_path / "predictor.pt"
    save_predictor(BoundaryPredictor(96, hidden=16), path)
    with pytest.raises(DHSAError, match="trained for Hkv\\*D = 96"):
        load_predictor(path, 64)


def test_learned_predictor_rejects_bad_keys(tmp_path):
    state = BoundaryPredictor(64, hidden=16).state_dict()
    del state["mlp.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(DHSAError, match="missing: mlp.2.bias; unexpected: extra.weight"):
        load_predictor(path, 64)


def test_learned_predictor_missing_file(tmp_path):
    with pytest.raises(DHSAError, match="not found"):
        load_predictor(tmp_path / "nope.pt", 64)


def test_unsupported_model_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    recipe, _ = tiny("tiny-gemma2")
    with pytest.raises(DHSAError, match="not supported; supported: Gemma2ForCausalLM"):
        attention.enable_dhsa(model, recipe.dhsa)
