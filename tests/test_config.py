"""The typed run config: shipped configs, presets, overrides, one-line errors, preflight."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from slas.config import ConfigError, apply_override, config_from_dict, flatten, load_config
from slas.preflight import PreflightError, preflight, resolve_file, resolve_model_path
from slas.rewards.registry import register, unregister
from slas.rl.trainer import trained_steps

ROOT = Path(__file__).resolve().parents[1]
SD = ROOT / "configs" / "sd14_hps_clip.yaml"
FLUX = ROOT / "configs" / "flux_dev_hps_clip.yaml"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _n_trained(cfg) -> int:
    g = torch.Generator().manual_seed(0)
    return trained_steps(cfg.sample.num_steps, cfg.train.timestep_fraction, 1, cfg.train.timestep_selection, g).shape[1]


def test_sd14_config_carries_published_settings():
    c = load_config(SD)
    assert (c.model.family, c.sample.resolution, c.sample.num_steps) == ("sd", 512, 50)
    assert (c.sample.eta, c.sample.guidance_scale, c.sample.group_size, c.sample.shared_noise) == (1.0, 5.0, 16, True)
    assert (c.train.lr, c.train.weight_decay, c.train.max_grad_norm, c.train.clip_range) == (1e-5, 1e-4, 1.0, 1e-4)
    assert c.rl.clip == 5.0 and _n_trained(c) == 49
    assert [(x.name, x.weight) for x in c.reward.components] == [("hpsv21", 1.0), ("clip", 1.0)]


def test_flux_config_carries_published_settings():
    c = load_config(FLUX)
    s = c.sample
    assert (c.model.family, s.resolution, s.num_steps, s.shift, s.eta, s.guidance_scale, s.group_size) == (
        "flux", 720, 16, 3.0, 0.3, 3.5, 12)
    assert _n_trained(c) == 9 and c.train.lr == 1e-5
    lora = c.model.lora
    assert (lora.rank, lora.alpha, lora.lr) == (128, 256, 3e-4) and {"to_q", "to_k", "to_v"} <= set(lora.target_modules)
    assert [(x.name, x.weight) for x in c.reward.components] == [("hpsv21", 0.7), ("clip", 1.4)]


def test_presets_switch_by_override():
    d = load_config(SD, ["rl.preset=dancegrpo"]).rl
    assert (d.std_scope, d.power) == ("prompt", 1.0)  # the file's power 2 is the SLAS exponent only
    s = load_config(SD, ["rl.preset=slas", "rl.power=3"]).rl
    assert (s.std_scope, s.power) == ("batch", 3.0)
    c = load_config(SD, ["rl.preset=custom", "rl.std_scope=none", "rl.power=1.5"]).rl
    assert (c.std_scope, c.power) == ("none", 1.5)
    with pytest.raises(ConfigError, match="needs both"):
        load_config(SD, ["rl.preset=custom"])
    with pytest.raises(ConfigError, match=r"rl\.std_scope=batch conflicts with rl.preset=dancegrpo"):
        load_config(SD, ["rl.preset=dancegrpo", "rl.std_scope=batch"])


def test_override_parsing():
    data = {"a": {"b": 1}}
    for ov in ("a.b=2", "a.c=0.5", "a.d=true", "a.e=[1, 2]", "a.f=null", "x.y.z=hi"):
        apply_override(data, ov)
    assert data == {"a": {"b": 2, "c": 0.5, "d": True, "e": [1, 2], "f": None}, "x": {"y": {"z": "hi"}}}
    with pytest.raises(ConfigError, match="not a section"):
        apply_override(data, "a.b.c=1")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override(data, "a.b")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rl.powr=3", "config error: rl.powr: unknown key"),
        ("bogus=1", "config error: bogus: unknown key"),
        ("sample.eta=-1", "config error: sample.eta: Input should be greater than 0"),
        ("train.timestep_fraction=1.5", "config error: train.timestep_fraction: Input should be less than or equal to 1"),
        ("model.family=sdxl", "config error: model.family: Input should be 'sd' or 'flux'"),
        ("sample.group_size=many", "config error: sample.group_size: Input should be a valid integer"),
    ],
)
def test_bad_keys_and_values_name_the_key_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(SD, [override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config error: model: required key is missing"):
        config_from_dict({"data": {"prompts": "p.txt"}, "reward": {"components": [{"name": "x"}]}})


def test_flatten_gives_dotted_keys():
    flat = flatten(load_config(SD))
    assert flat["rl.std_scope"] == "batch" and flat["sample.num_steps"] == 50 and flat["model.lora.rank"] == 128


def test_resolve_model_path(tmp_path, tiny_sd_dir, empty_hub_cache):
    assert resolve_model_path(str(tiny_sd_dir)) == str(tiny_sd_dir)
    with pytest.raises(PreflightError, match="does not exist"):
        resolve_model_path(str(tmp_path / "absent"))
    with pytest.raises(PreflightError, match=r"no model_index\.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(PreflightError) as err:
        resolve_model_path("nobody/not-a-model", revision="v2")
    msg = str(err.value)
    assert "hf download nobody/not-a-model --revision v2" in msg and "\n" not in msg
    with pytest.raises(PreflightError, match=r"hf download xswu/HPSv2 HPS_v2\.1_compressed\.pt"):
        resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt", key="checkpoint")
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert resolve_file(str(f), key="checkpoint") == str(f)


def test_preflight_fails_before_loading(tmp_path, tiny_sd_dir, monkeypatch):
    from slas.t2i.sd import SDPolicy

    monkeypatch.setattr(SDPolicy, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    base = {"model": {"family": "sd", "path": str(tiny_sd_dir)}, "data": {"prompts": str(tmp_path / "none.txt")},
            "reward": {"components": [{"name": "test_ok"}]}}

    @register("test_ok", preflight=lambda **opts: None)
    def ok():
        return lambda images, prompts, **_: {}

    try:
        with pytest.raises(PreflightError, match=r"data\.prompts: prompt file not found"):
            preflight(config_from_dict(base))
        base["data"]["prompts"] = str(prompts)
        preflight(config_from_dict(base))
        base["reward"]["components"] = [{"name": "nope"}]
        with pytest.raises(PreflightError, match=r"reward.components.0.name: unknown reward 'nope'; available: \[.*test_ok"):
            preflight(config_from_dict(base))
    finally:
        unregister("test_ok")
