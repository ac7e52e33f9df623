"""The typed run config: shipped configs, presets, overrides, one-line errors, preflight, reward registry."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from slas.config import ConfigError, apply_override, config_from_dict, flatten, load_config
from slas.preflight import PreflightError, preflight, resolve_file, resolve_model_path
from slas.rewards import build, register
from slas.rewards.registry import available, unregister
from slas.rl.objectives import trained_steps

ROOT = Path(__file__).resolve().parents[1]
SD = ROOT / "configs" / "sd14_hps_clip.yaml"
FLUX = ROOT / "configs" / "flux_dev_hps_clip.yaml"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache. huggingface_hub reads HF_HUB_CACHE into its constants at import time,
    so the env var alone would not reach it: patch both."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def test_rewards():
    """Two registered test rewards (and one whose own preflight fails); unregistered afterwards."""

    def _not_here(**options):
        raise PreflightError(f"reward.components.0.options.checkpoint: file not found: {options.get('checkpoint')}")

    @register("test_mean")
    def mean(scale: float = 1.0):
        return lambda images, prompts, **_: {"mean": scale * images.mean(dim=(1, 2, 3))}

    @register("test_red")
    def red():
        return lambda images, prompts, **_: {"red": images[:, 0].mean(dim=(1, 2))}

    @register("test_short")
    def short():  # one value too few
        return lambda images, prompts, **_: {"short": torch.zeros(images.shape[0] - 1)}

    register("test_missing_files", preflight=_not_here)(lambda **_: None)
    names = ["test_mean", "test_red", "test_short", "test_missing_files"]
    yield names
    for name in names:
        unregister(name)
    assert not set(names) & set(available())


def _n_trained(cfg, n: int = 3) -> int:
    g = torch.Generator().manual_seed(0)
    steps = trained_steps(cfg.sample.num_steps, cfg.train.timestep_fraction, n, cfg.train.timestep_selection, g)
    assert steps.shape[0] == n
    assert int(steps.max()) < cfg.sample.num_steps - 1  # the last step is never trained
    for row in steps:
        assert len(set(row.tolist())) == steps.shape[1]  # distinct steps per sample
    return steps.shape[1]


# ------------------------------------------------------------------ shipped configs


def test_sd14_config_carries_published_settings():
    c = load_config(SD)
    s, t = c.sample, c.train
    assert (c.model.family, c.model.path) == ("sd", "CompVis/stable-diffusion-v1-4")
    assert (s.resolution, s.num_steps, s.eta, s.guidance_scale, s.group_size) == (512, 50, 1.0, 5.0, 16)
    assert s.shared_noise is True
    assert (t.lr, t.weight_decay, t.max_grad_norm, t.clip_range) == (1e-5, 1e-4, 1.0, 1e-4)
    assert c.rl.clip == 5.0
    assert t.timestep_fraction == 1.0 and _n_trained(c) == (50 - 1) == 49
    assert [(x.name, x.weight) for x in c.reward.components] == [("hpsv21", 1.0), ("clip", 1.0)]
    assert (c.rl.preset, c.rl.std_scope, c.rl.power) == ("slas", "batch", 2.0)


def test_flux_config_carries_published_settings():
    c = load_config(FLUX)
    s, t = c.sample, c.train
    assert (c.model.family, c.model.path) == ("flux", "black-forest-labs/FLUX.1-dev")
    assert (s.resolution, s.num_steps, s.shift, s.eta, s.guidance_scale, s.group_size) == (720, 16, 3.0, 0.3, 3.5, 12)
    assert _n_trained(c) == int(15 * 0.6) == 9
    assert t.lr == 1e-5
    lora = c.model.lora
    assert (lora.rank, lora.alpha, lora.lr) == (128, 256.0, 3e-4)
    assert set(lora.target_modules) == {  # FLUX attention projections (image and text streams), nothing else
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    assert [(x.name, x.weight) for x in c.reward.components] == [("hpsv21", 0.7), ("clip", 1.4)]
    lora_run = load_config(FLUX, ["model.finetune=lora"])
    assert lora_run.model.finetune == "lora" and lora_run.model.lora.rank == 128


# ------------------------------------------------------------------ presets


def test_dancegrpo_preset_overrides_the_files_power():
    assert load_config(SD).rl.power == 2.0  # the file's SLAS exponent
    d = load_config(SD, ["rl.preset=dancegrpo"]).rl
    assert (d.preset, d.std_scope, d.power) == ("dancegrpo", "prompt", 1.0)


def test_slas_preset_takes_power_from_override():
    s = load_config(SD, ["rl.preset=slas", "rl.power=3"]).rl
    assert (s.std_scope, s.power) == ("batch", 3.0)


def test_custom_preset_needs_scope_and_power():
    c = load_config(SD, ["rl.preset=custom", "rl.std_scope=none", "rl.power=1.5"]).rl
    assert (c.std_scope, c.power) == ("none", 1.5)
    for extra in ([], ["rl.std_scope=prompt"]):
        with pytest.raises(ConfigError) as err:  # the file's power alone is not enough without a scope
            load_config(SD, ["rl.preset=custom", "rl.power=null", *extra])
        assert "rl.preset=custom needs both rl.std_scope and rl.power" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        load_config(SD, ["rl.preset=custom"])
    assert "needs both" in _one_line(err)


@pytest.mark.parametrize(("preset", "scope"), [("dancegrpo", "batch"), ("dancegrpo", "none"), ("slas", "prompt")])
def test_scope_conflicting_with_preset_fails(preset, scope):
    with pytest.raises(ConfigError) as err:
        load_config(SD, [f"rl.preset={preset}", f"rl.std_scope={scope}"])
    msg = _one_line(err)
    assert msg.startswith("config error:") and f"rl.std_scope={scope} conflicts with rl.preset={preset}" in msg


@pytest.mark.parametrize("sets", [["rl.preset=dancegrpo", "rl.power=3"], ["rl.power=3", "rl.preset=dancegrpo"]])
def test_power_set_with_dancegrpo_is_an_error_naming_both_keys(sets):
    with pytest.raises(ConfigError) as err:
        load_config(SD, sets)
    assert _one_line(err).endswith("rl.power=3 conflicts with rl.preset=dancegrpo (power 1)")


def test_power_written_beside_dancegrpo_in_a_file_is_an_error(tmp_path):
    data = {"model": {"family": "sd", "path": "x"}, "data": {"prompts": "p.txt"},
            "reward": {"components": [{"name": "clip"}]}, "rl": {"preset": "dancegrpo", "power": 2.5}}
    with pytest.raises(ConfigError, match=r"rl\.power=2\.5 conflicts with rl\.preset=dancegrpo \(power 1\)"):
        config_from_dict(data)
    data["rl"]["power"] = 1.0
    assert config_from_dict(data).rl.power == 1.0  # dancegrpo's own power is no conflict
    assert load_config(SD, ["rl.preset=dancegrpo", "rl.power=1"]).rl.power == 1.0


def test_scope_agreeing_with_preset_is_fine():
    assert load_config(SD, ["rl.preset=dancegrpo", "rl.std_scope=prompt"]).rl.std_scope == "prompt"


def test_resolved_config_round_trips():
    for path, sets in ((SD, ["rl.preset=dancegrpo"]), (FLUX, [])):
        c = load_config(path, sets)
        assert config_from_dict(c.model_dump(mode="json")) == c


# ------------------------------------------------------------------ overrides


def test_override_values_are_typed_as_yaml():
    data = {"a": {"b": 1}}
    for ov in ("a.b=2", "a.c=0.5", "a.g=1e-5", "a.d=true", "a.e=[1, 2]", "a.f=null", "a.h=x=y", "x.y.z=hi"):
        apply_override(data, ov)
    assert data == {
        "a": {"b": 2, "c": 0.5, "g": 1e-5, "d": True, "e": [1, 2], "f": None, "h": "x=y"},
        "x": {"y": {"z": "hi"}},
    }
    assert type(data["a"]["b"]) is int and type(data["a"]["c"]) is float and type(data["a"]["g"]) is float


def test_overrides_index_lists_such_as_reward_components():
    data = {"reward": {"components": [{"name": "mllm_judge", "options": {}}, {"name": "clip"}]}}
    apply_override(data, "reward.components.0.options.model=/models/judge")
    apply_override(data, "reward.components.1.weight=0.5")
    assert data["reward"]["components"] == [{"name": "mllm_judge", "options": {"model": "/models/judge"}},
                                            {"name": "clip", "weight": 0.5}]
    for bad in ("reward.components.2.weight=1", "reward.components.first.weight=1"):
        with pytest.raises(ConfigError, match=r"reward\.components is a list of 2; index it with 0\.\.1"):
            apply_override(data, bad)


def test_overrides_reach_the_config_typed():
    c = load_config(SD, ["sample.num_steps=20", "train.lr=3e-6", "sample.shared_noise=false",
                         "train.betas=[0.8, 0.99]", "rl.clip=null", "model.lora.rank=8"])
    assert (c.sample.num_steps, c.train.lr, c.sample.shared_noise) == (20, 3e-6, False)
    assert (c.train.betas, c.rl.clip, c.model.lora.rank) == ((0.8, 0.99), None, 8)


def test_override_through_a_scalar_fails():
    data = {"a": {"b": 1}}
    with pytest.raises(ConfigError) as err:
        apply_override(data, "a.b.c=1")
    assert "a.b is not a section" in _one_line(err)
    with pytest.raises(ConfigError, match=r"rl\.preset is not a section"):
        load_config(SD, ["rl.preset.x=1"])


@pytest.mark.parametrize("bad", ["a.b", "=3", "", "  =x"])
def test_malformed_set_fails(bad):
    with pytest.raises(ConfigError) as err:
        apply_override({}, bad)
    assert "expected key=value" in _one_line(err)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(SD, [bad])


def test_override_with_invalid_yaml_value_fails():
    with pytest.raises(ConfigError) as err:
        load_config(SD, ["train.betas=[0.9, 0.99"])
    assert "train.betas" in _one_line(err)


# ------------------------------------------------------------------ validation errors


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bogus=1", "config error: bogus: unknown key"),
        ("rl.powr=3", "config error: rl.powr: unknown key"),
        ("model.lora.rnk=3", "config error: model.lora.rnk: unknown key"),
        ("reward.components=[{name: clip, wieght: 1}]", "config error: reward.components.0.wieght: unknown key"),
        ("sample.eta=0", "config error: sample.eta=0 samples a deterministic chain without log-probs; "
                         "train.objective=grpo needs sample.eta > 0"),
        ("sample.eta=-1", "config error: sample.eta: Input should be greater than or equal to 0"),
        ("train.timestep_fraction=1.5", "config error: train.timestep_fraction: Input should be less than or equal to 1"),
        ("model.family=sdxl", "config error: model.family: Input should be 'sd', 'flux', 'qwen_image_edit' or 'flux_kontext'"),
        ("sample.group_size=many", "config error: sample.group_size: Input should be a valid integer"),
        ("rl.std_scope=global", "config error: rl.std_scope: Input should be"),
        ("reward.components=[]", "config error: reward.components: List should have at least 1 item"),
        ("run=3", "config error: run: Input should be a valid dictionary"),
    ],
)
def test_bad_keys_and_values_name_the_key_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(SD, [override])
    assert _one_line(err).startswith(message)


@pytest.mark.parametrize("section", ["model", "data", "reward"])
def test_missing_required_section_is_named(section):
    data = {"model": {"family": "sd", "path": "x"}, "data": {"prompts": "p.txt"},
            "reward": {"components": [{"name": "clip"}]}}
    del data[section]
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert _one_line(err) == f"config error: {section}: required key is missing"


def test_missing_required_nested_key_is_named():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"family": "sd"}, "data": {"prompts": "p.txt"},
                          "reward": {"components": [{"name": "clip"}]}})
    assert _one_line(err) == "config error: model.path: required key is missing"


def test_config_errors_are_slas_errors():
    from slas.errors import SlasError

    assert issubclass(ConfigError, SlasError) and issubclass(ConfigError, ValueError)
    assert issubclass(PreflightError, SlasError) and issubclass(PreflightError, RuntimeError)


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "none.yaml")
    assert _one_line(err).startswith("config file not found") and "none.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)  # a directory is not a config file
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  name: x\nmodel: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml is not valid YAML at line" in _one_line(err)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as err:
        load_config(listed)
    assert "must hold a mapping" in _one_line(err)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as err:
        load_config(empty)
    assert _one_line(err) == "config error: model: required key is missing"


def test_flatten_gives_dotted_keys():
    flat = flatten(load_config(SD))
    assert flat["rl.std_scope"] == "batch" and flat["sample.num_steps"] == 50 and flat["model.lora.rank"] == 128
    assert flat["train.ema.enabled"] is False and flat["model.path"] == "CompVis/stable-diffusion-v1-4"
    assert all(not isinstance(v, dict) or not v for v in flat.values())
    assert "rl" not in flat and "model.lora" not in flat
    assert flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}


# ------------------------------------------------------------------ preflight


def test_resolve_model_path_local_dirs(tmp_path, tiny_sd_dir):
    assert resolve_model_path(str(tiny_sd_dir)) == str(tiny_sd_dir)
    with pytest.raises(PreflightError) as err:
        resolve_model_path(str(tmp_path / "absent"))
    assert "model.path" in _one_line(err) and "does not exist" in str(err.value)
    with pytest.raises(PreflightError) as err:
        resolve_model_path(str(tmp_path))
    assert "no model_index.json" in _one_line(err)
    not_dir = tmp_path / "file.txt"
    not_dir.write_text("x")
    with pytest.raises(PreflightError, match="not a model directory"):
        resolve_model_path(str(not_dir))


def test_uncached_hub_id_gives_the_download_command(empty_hub_cache):
    with pytest.raises(PreflightError) as err:
        resolve_model_path("nobody/not-a-model")
    msg = _one_line(err)
    assert msg.startswith("model.path:") and "hf download nobody/not-a-model" in msg and "--revision" not in msg
    assert str(empty_hub_cache) in msg
    with pytest.raises(PreflightError) as err:
        resolve_model_path("nobody/not-a-model", revision="v2")
    assert "hf download nobody/not-a-model --revision v2" in _one_line(err)


def test_resolve_file(tmp_path, empty_hub_cache):
    with pytest.raises(PreflightError) as err:
        resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt", key="reward.checkpoint")
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in _one_line(err)
    with pytest.raises(PreflightError, match="file not found"):
        resolve_file(str(tmp_path / "none.pt"), key="reward.checkpoint")
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert resolve_file(str(f), key="reward.checkpoint") == str(f)


def test_gated_model_names_the_licence_and_the_login(empty_hub_cache):
    with pytest.raises(PreflightError) as err:
        resolve_model_path("black-forest-labs/FLUX.1-dev")
    msg = _one_line(err)
    steps = ("accept the licence on https://huggingface.co/black-forest-labs/FLUX.1-dev", "hf auth login",
             "hf download black-forest-labs/FLUX.1-dev")
    assert [msg.index(step) for step in steps] == sorted(msg.index(step) for step in steps)
    with pytest.raises(PreflightError) as err:
        resolve_model_path("nobody/not-a-model")
    assert "licence" not in str(err.value) and "hf auth login" not in str(err.value)


def _config(model_path, prompts, reward="test_mean", **options):
    return config_from_dict({
        "model": {"family": "sd", "path": str(model_path)},
        "data": {"prompts": str(prompts)},
        "reward": {"components": [{"name": reward, "options": options}]},
    })


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Any model load or reward build fails the test: preflight must come first."""
    from slas import run
    from slas.t2i.flux import FluxPolicy
    from slas.t2i.sd import SDPolicy

    def boom(*args, **kwargs):
        pytest.fail("heavy work started before preflight failed")

    for cls in (SDPolicy, FluxPolicy):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(run, "build", boom)
    monkeypatch.setattr(run.PromptSource, "from_file", classmethod(boom))
    return run.build_trainer


def test_preflight_passes_for_a_complete_config(tmp_path, tiny_sd_dir, test_rewards):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    preflight(_config(tiny_sd_dir, prompts))


def test_preflight_missing_prompt_file_fails_before_loading(tmp_path, tiny_sd_dir, test_rewards, no_heavy_work):
    cfg = _config(tiny_sd_dir, tmp_path / "none.txt")
    for check in (preflight, no_heavy_work):
        with pytest.raises(PreflightError) as err:
            check(cfg)
        assert _one_line(err).startswith("data.prompts: prompt file not found")


def test_preflight_unknown_reward_fails_before_loading(tmp_path, tiny_sd_dir, test_rewards, no_heavy_work):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    cfg = _config(tiny_sd_dir, prompts, reward="nope")
    for check in (preflight, no_heavy_work):
        with pytest.raises(PreflightError) as err:
            check(cfg)
        msg = _one_line(err)
        assert msg.startswith("reward.components.0.name: unknown reward 'nope'; available:")
        assert all(name in msg for name in ("test_mean", "hpsv21", "clip"))


def test_preflight_lists_every_problem_one_line_each_in_order(tmp_path, test_rewards, no_heavy_work):
    cfg = config_from_dict({
        "model": {"family": "sd", "path": str(tmp_path / "no_model")},
        "data": {"prompts": str(tmp_path / "none.txt")},
        "reward": {"components": [{"name": "nope"}, {"name": "test_mean"},
                                  {"name": "test_missing_files", "options": {"checkpoint": "/nowhere/w.pt"}}]},
    })
    for check in (preflight, no_heavy_work):
        with pytest.raises(PreflightError) as err:
            check(cfg)
        assert [line.split(":")[0] for line in err.value.problems] == [
            "model.path", "data.prompts", "reward.components.0.name", "reward.components.0.options.checkpoint"]
        assert str(err.value).splitlines() == err.value.problems  # the first line is the first problem


def test_preflight_runs_each_rewards_own_check(tmp_path, tiny_sd_dir, test_rewards, no_heavy_work):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    cfg = _config(tiny_sd_dir, prompts, reward="test_missing_files", checkpoint="/nowhere/w.pt")
    with pytest.raises(PreflightError, match=r"/nowhere/w\.pt"):
        no_heavy_work(cfg)


def test_preflight_absent_model_fails_before_loading(tmp_path, empty_hub_cache, test_rewards, no_heavy_work):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    with pytest.raises(PreflightError) as err:
        no_heavy_work(load_config(SD, [f"data.prompts={prompts}"]))
    first, *others = err.value.problems  # the model first, then each missing reward file: one line each
    assert "hf download CompVis/stable-diffusion-v1-4" in first and "\n" not in first
    assert str(err.value).splitlines()[0] == first and len(others) == 2


# ------------------------------------------------------------------ reward registry


def test_composite_is_the_weighted_sum(test_rewards):
    images = torch.rand(5, 3, 8, 8)
    reward = build({"components": [{"name": "test_mean", "weight": 0.7, "options": {"scale": 2.0}},
                                    {"name": "test_red", "weight": 1.4}]})
    out = reward(images, ["p"] * 5)
    assert set(out) == {"test_mean", "test_red", "total"}
    torch.testing.assert_close(out["test_mean"], 2.0 * images.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(out["test_red"], images[:, 0].mean(dim=(1, 2)))
    torch.testing.assert_close(out["total"], 0.7 * out["test_mean"] + 1.4 * out["test_red"])
    assert out["total"].shape == (5,)


def test_composite_builds_from_a_reward_config(test_rewards):
    cfg = _config("x", "p.txt", reward="test_red")
    images = torch.rand(2, 3, 4, 4)
    out = build(cfg.reward)(images, ["p", "q"])
    torch.testing.assert_close(out["total"], out["test_red"])


def test_wrong_length_reward_output_raises(test_rewards):
    reward = build({"components": [{"name": "test_mean"}, {"name": "test_short"}]})
    with pytest.raises(ValueError, match="'test_short' returned 2 values for 3 images"):
        reward(torch.rand(3, 3, 4, 4), ["p"] * 3)


def test_unknown_reward_name_lists_available(test_rewards):
    with pytest.raises(KeyError) as err:
        build({"components": [{"name": "test_mean"}, {"name": "nope"}]})
    msg = str(err.value)
    assert "unknown reward 'nope'" in msg and "test_mean" in msg and "test_red" in msg

