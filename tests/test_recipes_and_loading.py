"""Recipes are strict; model resolution never touches the network and explains what it searched."""

import pytest
import yaml

from dhsa_export import loading, recipes
from dhsa_export.config import DHSAConfig
from dhsa_export.errors import ConfigError, ModelNotFoundError


def test_all_recipes_load():
    names = recipes.available()
    assert {"gemma2-2b", "gemma2-9b", "gemma3-270m", "gemma3-1b", "tiny-gemma2", "tiny-gemma3"} <= set(names)
    for name in names:
        r = recipes.load(name)
        assert r.name == name
        assert r.dhsa.budget >= r.dhsa.local_tokens + r.dhsa.global_tokens


def _write(tmp_path, mutate):
    data = yaml.safe_load((recipes.recipes_dir() / "tiny-gemma2.yaml").read_text())
    mutate(data)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["dhsa"].update(bugdet=5), "dhsa.bugdet: unknown key"),
    (lambda d: d.update(exprot={}), "exprot: unknown key"),
    (lambda d: d["dhsa"].update(budget=-1), "dhsa.budget: Input should be greater than or equal to 1"),
    (lambda d: d["dhsa"].update(budget=20), "budget 20 < local_tokens \\+ global_tokens"),
    (lambda d: d["dhsa"].update(block_size=0), "dhsa.block_size"),
    (lambda d: d["dhsa"].update(boundary_method="magic"), "dhsa.boundary_method"),
    (lambda d: d["dhsa"].update(local_tokens=8, budget=64), "local_tokens 8 < block_size 16"),
    (lambda d: d["engine"]["profile"].update(opt=[4, 64]), "min <= opt <= max"),
    (lambda d: d["model"].update(architecture="llama"), "model.architecture"),
])
def test_invalid_recipes_name_the_key(tmp_path, mutate, match):
    with pytest.raises(ConfigError, match=match):
        recipes.load(_write(tmp_path, mutate))


def test_unknown_alias_lists_known():
    with pytest.raises(ConfigError, match="unknown model alias 'gemma9'; known: gemma2-2b"):
        recipes.load("gemma9")


def test_overrides_are_validated():
    r = recipes.load("tiny-gemma2")
    assert recipes.with_overrides(r, dhsa={"budget": 128}).dhsa.budget == 128
    with pytest.raises(ConfigError, match="budget 16 < local_tokens"):
        recipes.with_overrides(r, dhsa={"budget": 16})


def test_config_defaults_follow_method():
    assert DHSAConfig().radius == 2 and DHSAConfig().threshold == 0.0
    cfg = DHSAConfig(boundary_method="learned", predictor_path="x.pt")
    assert cfg.radius == 8 and cfg.threshold == 1.1
    assert DHSAConfig(boundary_method="fixed").fixed_chunk_size == 128


def test_missing_weights_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("DHSA_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        loading.resolve(recipes.load("gemma2-2b"))
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "models" / "google/gemma-2-2b-it") in msg
    assert "offline HF cache" in msg and "--model-path" in msg


def test_local_directory_is_found(tmp_path, monkeypatch):
    d = tmp_path / "models" / "gemma-2-2b-it"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "gemma2"}')
    (d / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("DHSA_MODELS_DIR", str(tmp_path / "models"))
    src = loading.resolve(recipes.load("gemma2-2b"))
    assert src.kind == "dir" and src.path == d


def test_bad_model_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a model directory"):
        loading.resolve(recipes.load("gemma2-2b"), model_path=str(tmp_path))


def test_unsupported_directory_model(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    from dhsa_export.errors import DHSAError

    with pytest.raises(DHSAError, match="holds a 'llama' model; supported: gemma2"):
        loading.load(recipes.load("gemma2-2b"), model_path=str(tmp_path))


def test_random_init_is_deterministic():
    r = recipes.load("tiny-gemma3")
    a, b = loading.load(r).model, loading.load(r).model
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert p.equal(q), n
