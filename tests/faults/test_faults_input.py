"""Bad input, injected by the tests themselves (escaping run names, non-finite numbers, duplicate YAML keys,
empty and binary files, a model of the other family, absent devices, LoRA typos, impossible sizes), and what
the tool does about it: one line naming the key or file and the fix, before any job row or model load; and
an unexpected error is one line too, its traceback in a log file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from slas.config import ConfigError, config_from_dict, load_config
from slas.preflight import PreflightError, preflight
from slas.testing.cli import error_text, run_cli

REWARD = "faults_brightness"  # the brightness_reward fixture (tests/faults/conftest.py)


@pytest.fixture(autouse=True)
def _reward(brightness_reward):
    """Every test here may name REWARD (the fault tests' brightness reward) in its config."""
    assert brightness_reward == REWARD


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na blue square\n")
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a pipeline fails the test: every check here must come before any model is loaded."""
    from slas.t2i.flux import FluxPolicy
    from slas.t2i.sd import SDPolicy

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    for cls in (SDPolicy, FluxPolicy):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(boom))


def _data(model_dir: Path | str, prompts: Path, tmp_path: Path, family: str = "sd", **sections: dict) -> dict:
    data = {"run": {"name": "faults", "output_dir": str(tmp_path / "runs"), "iterations": 1},
            "model": {"family": family, "path": str(model_dir), "device": "cpu"},
            "data": {"prompts": str(prompts)},
            "sample": {"resolution": 32, "num_steps": 2, "group_size": 2, "prompts_per_iter": 1},
            "reward": {"components": [{"name": REWARD}]}}
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values}
    return data


def _write(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


def _lines(result) -> list[str]:
    return [line for line in error_text(result).splitlines() if line.strip()]


def _no_jobs() -> bool:
    r = run_cli("jobs", "list", "--json")
    assert r.exit_code == 0, error_text(r)
    return r.stdout.strip() == ""


# ------------------------------------------------------------------------------------ item 3: run names


@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "a/b", "..", ".hidden", "a\\b", "ü", "a b", ""])
def test_a_run_name_that_is_not_one_folder_name_is_refused(tmp_path, tiny_sd_dir, prompts, name):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, run={"name": name}))
    msg = _one_line(err)
    assert msg.startswith("config error: run.name:")
    assert "letters, digits" in msg or "at least 1 character" in msg


@pytest.mark.parametrize("name", ["run", "sd14_hps_clip", "my-run.2", "A1", "-x"])
def test_safe_run_names_pass(tmp_path, tiny_sd_dir, prompts, name):
    cfg = config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, run={"name": name}))
    assert cfg.run_dir == tmp_path / "runs" / name


def test_a_run_dir_linked_out_of_the_runs_folder_is_refused(tmp_path, tiny_sd_dir, prompts):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "faults").symlink_to(victim)
    with pytest.raises(ConfigError) as err:
        config_from_dict(_data(tiny_sd_dir, prompts, tmp_path))
    msg = _one_line(err)
    assert msg.startswith("config error: run.name: run dir") and "outside the runs folder" in msg


def test_train_with_an_escaping_name_leaves_the_victim_alone(tmp_path, tiny_sd_dir, prompts, no_model_load):
    """The original failure: `run.name=../../victim` overwrote victim/config.yaml and moved victim/images/."""
    victim = tmp_path / "victim"
    (victim / "images").mkdir(parents=True)
    (victim / "config.yaml").write_text("mine\n")
    config = _write(tmp_path, _data(tiny_sd_dir, prompts, tmp_path / "a" / "b"))
    r = run_cli("train", config, "--set", "run.name=../../victim")
    assert r.exit_code == 2 and len(_lines(r)) == 1 and "run.name" in _lines(r)[0]
    assert (victim / "config.yaml").read_text() == "mine\n" and (victim / "images").is_dir()
    assert not (victim / "previous").exists() and _no_jobs()


# ------------------------------------------------------------------------------ item 6: non-finite numbers


@pytest.mark.parametrize(("override", "key"), [
    ("train.lr=.inf", "train.lr"), ("train.lr=inf", "train.lr"), ("train.adam_eps=.inf", "train.adam_eps"),
    ("rl.eps=.inf", "rl.eps"), ("sample.eta=.inf", "sample.eta"), ("train.weight_decay=.inf", "train.weight_decay"),
    ("train.betas=[0.9, .nan]", "train.betas.1"), ("model.lora.lr=.nan", "model.lora.lr"),
    ("train.max_grad_norm=.inf", "train.max_grad_norm"), ("sample.guidance_scale=.nan", "sample.guidance_scale"),
    (f"reward.components=[{{name: {REWARD}, weight: .inf}}]", "reward.components.0.weight"),
    (f"reward.components=[{{name: {REWARD}, weight: {{mean: .nan}}}}]", "reward.components.0.weight.mean"),
])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, tiny_sd_dir, prompts, override, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_data(tiny_sd_dir, prompts, tmp_path), [override])
    assert _one_line(err).startswith(f"config error: {key}:") and "finite" in str(err.value)


def test_non_finite_reward_options_are_refused_too(tmp_path, tiny_sd_dir, prompts):
    data = _data(tiny_sd_dir, prompts, tmp_path,
                 reward={"components": [{"name": REWARD, "options": {"scale": {"inner": [1.0, float("nan")]}}}]})
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert _one_line(err) == ("config error: reward.components.0.options: options.scale.inner.1 is not a finite "
                              "number; give a finite value")


def test_an_inf_learning_rate_in_the_file_never_reaches_a_job(tmp_path, tiny_sd_dir, prompts, no_model_load):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_data(tiny_sd_dir, prompts, tmp_path)) + "train:\n  lr: .inf\n")
    r = run_cli("train", config)
    assert r.exit_code == 2 and _lines(r) == ["error: config error: train.lr: Input should be a finite number"]
    assert _no_jobs()


# ------------------------------------------------------------------------------- item 7: YAML and files


def test_a_second_section_of_the_same_name_is_refused_with_both_lines(tmp_path, tiny_sd_dir, prompts):
    """The original failure: a second `run:` section silently replaced the first."""
    text = yaml.safe_dump(_data(tiny_sd_dir, prompts, tmp_path), sort_keys=False)
    config = tmp_path / "run.yaml"
    config.write_text(text + "run:\n  name: other\n")
    second = len(text.splitlines()) + 1
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert _one_line(err) == (f"config file {config}: duplicate key 'run' at line {second} (first at line 1); "
                              "merge them into one")


def test_a_duplicate_nested_key_is_refused_but_merge_keys_may_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("sample:\n  group_size: 4\n  eta: 1.0\n  group_size: 8\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'group_size' at line 4 \(first at line 2\)"):
        load_config(config)
    from slas.config import load_yaml

    assert load_yaml("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  x: 3\n")["mine"] == {"x": 3, "y": 2}


def test_duplicates_in_set_are_refused(tmp_path, tiny_sd_dir, prompts):
    data = _data(tiny_sd_dir, prompts, tmp_path)
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, ["sample={group_size: 4, group_size: 8}"])
    assert _one_line(err) == "--set sample: value '{group_size: 4, group_size: 8}' names 'group_size' twice; keep one"
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, ["sample.group_size=4", "sample.group_size=8"])
    assert _one_line(err) == "--set sample.group_size is given twice ('4' and '8'); give it once"
    assert config_from_dict(data, ["sample.group_size=4", "sample.group_size=4"]).sample.group_size == 4


@pytest.mark.parametrize(("content", "expected"), [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "is a binary file (NUL byte at offset 7)"),
    (b"run:\n  name: caf\xe9\n", "is not UTF-8 text (byte 16)"),
])
def test_a_binary_config_file_is_one_line(tmp_path, content, expected, no_model_load):
    config = tmp_path / "weights.yaml"
    config.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert _one_line(err) == f"config file {config} {expected}; give a UTF-8 text file"
    r = run_cli("train", config)
    assert r.exit_code == 2 and len(_lines(r)) == 1 and _no_jobs()


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.txt", b"", "holds no prompts (empty or blank)"),
    ("blank.txt", b"\n   \n\t\n", "holds no prompts (empty or blank)"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file (NUL byte at offset 8)"),
    ("latin1.txt", b"a caf\xe9\n", "is not UTF-8 text (byte 5)"),
    ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": \n', "line 2 is not JSON"),
    ("list.jsonl", b'["a"]\n', "line 1 is not a JSON object"),
    ("gaps.jsonl", b'{"prompt": "a"}\n{"text": "b"}\n', "record 2 has no 'prompt'"),
])
def test_a_prompt_file_without_prompts_fails_preflight_in_one_line(tmp_path, tiny_sd_dir, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PreflightError) as err:
        preflight(config_from_dict(_data(tiny_sd_dir, path, tmp_path)))
    msg = _one_line(err)
    assert msg.startswith("data.prompts: ") and str(path) in msg and expected in msg


def test_load_prompts_errors_stay_the_builtins_callers_catch(tmp_path):
    from slas.errors import SlasError
    from slas.t2i.prompts import load_prompts

    (tmp_path / "empty.txt").write_text("")
    for path, builtin in ((tmp_path / "empty.txt", ValueError), (tmp_path / "none.txt", FileNotFoundError)):
        with pytest.raises(builtin) as err:
            load_prompts(path)
        assert isinstance(err.value, SlasError)


# ------------------------------------------------------------------------------------- item 7: the model


@pytest.mark.parametrize(("family", "model", "found", "fix"), [
    ("sd", "tiny_flux_dir", "FluxPipeline", "set model.family=flux"),
    ("flux", "tiny_sd_dir", "StableDiffusionPipeline", "set model.family=sd"),
])
def test_a_model_of_the_other_family_is_refused(request, tmp_path, prompts, family, model, found, fix, no_model_load):
    model_dir = request.getfixturevalue(model)
    with pytest.raises(PreflightError) as err:
        preflight(config_from_dict(_data(model_dir, prompts, tmp_path, family=family)))
    msg = _one_line(err)
    assert msg.startswith(f"model.family: {family} loads a ") and f"holds a {found} pipeline" in msg
    assert msg.endswith(fix)


def test_the_family_of_a_cached_hub_model_is_read_from_its_snapshot(tmp_path, tiny_flux_dir, prompts, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-flux" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_flux_dir, snapshot)
    (cache / "models--someone--tiny-flux" / "refs").mkdir()
    (cache / "models--someone--tiny-flux" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(PreflightError, match=r"^model\.family: sd loads a StableDiffusionPipeline but .* holds a "
                                             r"FluxPipeline pipeline .*; set model\.family=flux$"):
        preflight(config_from_dict(_data("someone/tiny-flux", prompts, tmp_path)))
    preflight(config_from_dict(_data("someone/tiny-flux", prompts, tmp_path, family="flux")))


@pytest.mark.parametrize("device", ["banana", "meta", "cuda:x", "gpu"])
def test_a_device_name_that_is_not_one_is_a_config_error(tmp_path, tiny_sd_dir, prompts, device):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, model={"device": device}))
    msg = _one_line(err)
    assert msg.startswith(f"config error: model.device: {device!r}") and "auto, cpu, cuda, cuda:N or mps" in msg


def test_a_cuda_device_this_machine_lacks_fails_preflight(tmp_path, tiny_sd_dir, prompts, no_model_load):
    """`cuda:N` with N the number of GPUs here is always one too many (on a machine without any, too)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cfg = config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, model={"device": f"cuda:{count}"}))
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    msg = _one_line(err)
    assert msg.startswith(f"model.device: 'cuda:{count}': this machine has ") and "use model.device=auto" in msg
    if count == 0:
        with pytest.raises(PreflightError, match=r"^model\.device: 'cuda': this machine has no CUDA GPU"):
            preflight(config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, model={"device": "cuda"})))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_where_there_is_none_fails_preflight(tmp_path, tiny_sd_dir, prompts):
    with pytest.raises(PreflightError, match=r"^model\.device: 'mps': MPS \(Apple GPU\) is not available"):
        preflight(config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, model={"device": "mps"})))


def _lora(targets: list[str]) -> dict:
    return {"finetune": "lora", "lora": {"rank": 2, "alpha": 2.0, "target_modules": targets}}


@pytest.mark.parametrize("model", ["tiny_sd_dir", "tiny_flux_dir"])
def test_the_default_lora_targets_pass_preflight(request, tmp_path, prompts, model, no_model_load):
    family = "sd" if model == "tiny_sd_dir" else "flux"
    cfg = config_from_dict(_data(request.getfixturevalue(model), prompts, tmp_path, family=family,
                                 model={"finetune": "lora"}))
    preflight(cfg)


def test_bad_lora_targets_are_named_one_line_each(tmp_path, tiny_sd_dir, prompts, no_model_load):
    cfg = config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, model=_lora(["to_q", "to_qq", "attn1"])))
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    first, second = err.value.problems
    assert first.startswith("model.lora.target_modules.1: 'to_qq' names no module of the unet; name its layers, e.g. ")
    assert "to_q" in first.split("e.g. ")[1]
    assert second.startswith("model.lora.target_modules.2: 'attn1' matches Attention modules of the unet, which "
                             "LoRA cannot wrap")


@pytest.mark.parametrize("target", ["to_q", "to_out.0", "attn1.to_k", "proj_in", "to_qq", "attn1", "down_blocks"])
def test_the_lora_target_check_agrees_with_peft(tmp_path, tiny_sd_dir, prompts, target):
    """What preflight accepts, peft wraps on the real denoiser; what it refuses, peft refuses."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    cfg = config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, model=_lora([target])))
    try:
        preflight(cfg)
        accepted = True
    except PreflightError:
        accepted = False
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    try:
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=[target]))
        wrapped = True
    except ValueError:
        wrapped = False
    assert accepted == wrapped


def test_an_impossible_rollout_size_is_refused_with_the_estimate(tmp_path, tiny_sd_dir, prompts, no_model_load):
    """`sample.group_size=10**9`: the rollout's latents alone exceed the machine; the estimate is stated."""
    cfg = config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, sample={"group_size": 10**9}))
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    msg = _one_line(err)
    # tiny SD: a 3-level VAE (scale 4) with 4 latent channels, so 32 px is an 8x8x4 latent
    assert msg.startswith("sample.group_size: a rollout keeps 2.8 TiB of latents (1 prompts x 1000000000 samples "
                          "x 3 steps x 4x8x8 latents x 4 bytes) but this machine has ")
    assert msg.endswith("in all; lower sample.group_size, sample.prompts_per_iter, sample.num_steps or sample.resolution")


def test_a_large_but_possible_rollout_passes(tmp_path, tiny_sd_dir, prompts):
    preflight(config_from_dict(_data(tiny_sd_dir, prompts, tmp_path, sample={"group_size": 64, "prompts_per_iter": 8})))


# ------------------------------------------------------------------------- no job row for invalid input


def _bad_inputs(tmp_path: Path, sd: Path, flux: Path, prompts: Path) -> dict[str, Path | tuple[Path, list[str]]]:
    """Each bad input as a config file (and overrides), every one of them refused before a job row."""
    good = _data(sd, prompts, tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x00\x01\x02")
    dup = tmp_path / "dup.yaml"
    dup.write_text(yaml.safe_dump(good) + "run:\n  name: again\n")
    config = _write(tmp_path, good)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "escaping name": (config, ["run.name=../../victim"]),
        "inf lr": (config, ["train.lr=.inf"]),
        "nan betas": (config, ["train.betas=[.nan, 0.999]"]),
        "duplicate keys": (dup, []),
        "empty prompts": (config, [f"data.prompts={empty}"]),
        "binary prompts": (config, [f"data.prompts={binary}"]),
        "flux model as sd": (config, [f"model.path={flux}"]),
        "absent gpu": (config, [f"model.device=cuda:{count}"]),
        "banana": (config, ["model.device=banana"]),
        "lora typo": (config, ["model.finetune=lora", "model.lora.target_modules=[to_qq]"]),
        "group_size=10**9": (config, [f"sample.group_size={10**9}"]),
    }


def test_no_bad_input_leaves_a_job_row_or_a_traceback(tmp_path, tiny_sd_dir, tiny_flux_dir, prompts, no_model_load):
    for what, (config, overrides) in _bad_inputs(tmp_path, tiny_sd_dir, tiny_flux_dir, prompts).items():
        sets = [arg for ov in overrides for arg in ("--set", ov)]
        r = run_cli("train", config, *sets)
        lines = _lines(r)
        assert r.exit_code == 2, (what, error_text(r))
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in error_text(r), (what, lines)
        submit = run_cli("jobs", "submit", config, *sets)
        assert submit.exit_code == 2 and len(_lines(submit)) == 1, (what, error_text(submit))
        assert _no_jobs(), what


# ------------------------------------------------------------------------- unexpected errors: one line


@pytest.fixture
def demo_raises(monkeypatch):
    """`slas demo` raising what the test gives (standing in for a bug anywhere in a command)."""
    import slas.shapes.demo

    def set_error(exc: BaseException) -> None:
        def run_demo(out, **_):
            raise exc

        monkeypatch.setattr(slas.shapes.demo, "run_demo", run_demo)

    return set_error


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(tmp_path, demo_raises):
    from slas.paths import slas_home

    demo_raises(ZeroDivisionError("float division by zero\nsecond line"))
    r = run_cli("demo", "--out", tmp_path)
    log = slas_home() / "logs" / "last-error.txt"
    assert r.exit_code == 1
    assert _lines(r) == [f"error: ZeroDivisionError: float division by zero (traceback in {log})"]
    text = log.read_text()
    assert text.startswith("Traceback (most recent call last):") and "in run_demo" in text
    assert "ZeroDivisionError: float division by zero\nsecond line" in text


def test_debug_shows_the_traceback_instead(tmp_path, demo_raises):
    from slas.paths import slas_home

    demo_raises(ZeroDivisionError("float division by zero"))
    r = run_cli("--debug", "demo", "--out", tmp_path)
    assert r.exit_code == 1 and isinstance(r.exception, ZeroDivisionError)
    assert not (slas_home() / "logs" / "last-error.txt").exists()


def test_usage_errors_slas_errors_and_ctrl_c_keep_their_paths(tmp_path, demo_raises):
    from slas.errors import SlasError
    from slas.paths import slas_home

    usage = run_cli("train")
    assert usage.exit_code == 2 and "Missing argument" in error_text(usage)
    demo_raises(SlasError("named, with its fix"))
    mine = run_cli("demo", "--out", tmp_path)
    assert mine.exit_code == 2 and _lines(mine) == ["error: named, with its fix"]
    demo_raises(KeyboardInterrupt())
    ctrl_c = run_cli("demo", "--out", tmp_path)
    assert ctrl_c.exit_code != 0 and "traceback in" not in error_text(ctrl_c)
    assert not (slas_home() / "logs" / "last-error.txt").exists()



def test_a_reward_on_a_device_this_machine_lacks_fails_preflight():
    """A reward's own `options.device` is checked like the model's: before any weights load."""
    from slas.rewards.options import check_common_options

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(PreflightError, match=rf"^reward clip options\.device=cuda:{count}: this machine has"):
        check_common_options("clip", device=f"cuda:{count}", dtype="float32", batch_size=8)
    with pytest.raises(PreflightError, match=r"^reward clip options\.device: 'banana' is not a device"):
        check_common_options("clip", device="banana", dtype="float32", batch_size=8)
