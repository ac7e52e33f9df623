"""The `slas` command line: help, one-line errors, fast preflight failures, config printing."""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from slas.cli import app
from slas.config import config_from_dict, load_config
from slas.rewards import register
from slas.rewards.registry import unregister
from slas.testing.cli import ANSI, ENV, cli_runner

ROOT = Path(__file__).resolve().parents[1]
SD = str(ROOT / "configs" / "sd14_hps_clip.yaml")
FLUX = str(ROOT / "configs" / "flux_dev_hps_clip.yaml")
runner = cli_runner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def stdout(result) -> str:
    return ANSI.sub("", result.stdout)


def stderr_lines(result) -> list[str]:
    """Non-empty stderr lines (the whole output where this click cannot separate stderr)."""
    try:
        err = result.stderr
    except ValueError:
        err = result.output
    return [line for line in ANSI.sub("", err).splitlines() if line.strip()]


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import time
    return cache


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Loading a model, building a reward or training fails the test (exit code 1, not 2)."""
    from slas import run
    from slas.rl.trainer import Trainer
    from slas.t2i.flux import FluxPolicy
    from slas.t2i.sd import SDPolicy

    def boom(*args, **kwargs):
        raise AssertionError("heavy work started before the config and preflight checks")

    for cls in (SDPolicy, FluxPolicy):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(run, "build", boom)
    monkeypatch.setattr(Trainer, "train", boom)


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("train", "config", "bench"):
        assert re.search(rf"^\W*{cmd}\b", stdout(r), re.M), f"{cmd} missing from --help"
    t = invoke("train", "--help")
    assert t.exit_code == 0 and "--set" in stdout(t) and "--resume" in stdout(t)
    c = invoke("config", "--help")
    assert c.exit_code == 0 and "--set" in stdout(c)
    b = invoke("bench", "--help")
    assert b.exit_code == 0 and "overhead" in stdout(b)


def test_train_unknown_key_fails_in_one_line(no_heavy_work):
    r = invoke("train", SD, "--set", "rl.powr=3")
    assert r.exit_code == 2
    assert stderr_lines(r) == ["error: config error: rl.powr: unknown key"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [("sample.eta=-1", "error: config error: sample.eta:"), ("rl.power", "error: --set 'rl.power': expected key=value")],
)
def test_train_bad_value_or_malformed_set_fails_in_one_line(no_heavy_work, override, expected):
    r = invoke("train", SD, "--set", override)
    assert r.exit_code == 2
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith(expected)


def test_train_missing_config_file_fails_in_one_line(tmp_path, no_heavy_work):
    r = invoke("train", str(tmp_path / "none.yaml"))
    assert r.exit_code == 2
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: config file not found")


def test_train_absent_model_gives_fetch_command_fast(empty_hub_cache, no_heavy_work):
    r = invoke("train", SD)
    assert r.exit_code == 2, r.output
    lines = stderr_lines(r)
    # every missing piece at once, the model first: one round trip instead of three
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert lines[0].startswith("error: model.path:")
    assert "hf download CompVis/stable-diffusion-v1-4" in lines[0] and str(empty_hub_cache) in lines[0]
    assert "reward hpsv21" in lines[1] and "reward clip" in lines[2]


def test_train_absent_model_with_revision(tmp_path, empty_hub_cache, no_heavy_work):
    ckpt = tmp_path / "runs" / "sd14_hps_clip" / "checkpoints" / "iter_000001"  # something to resume from
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("")
    r = invoke("train", SD, "--set", "model.revision=fp16", "--set", f"run.output_dir={tmp_path / 'runs'}", "--resume")
    assert r.exit_code == 2
    assert "hf download CompVis/stable-diffusion-v1-4 --revision fp16" in stderr_lines(r)[0]


def test_config_prints_resolved_yaml():
    r = invoke("config", SD, "--set", "rl.preset=dancegrpo")
    assert r.exit_code == 0
    data = yaml.safe_load(stdout(r))
    assert data["rl"]["preset"] == "dancegrpo"
    assert data["rl"]["std_scope"] == "prompt" and data["rl"]["power"] == 1.0
    assert config_from_dict(data) == load_config(SD, ["rl.preset=dancegrpo"])  # complete and re-loadable


def test_config_without_overrides_applies_the_slas_preset():
    r = invoke("config", SD)
    assert r.exit_code == 0
    rl = yaml.safe_load(stdout(r))["rl"]
    assert (rl["std_scope"], rl["power"]) == ("batch", 2.0)


def test_config_error_exits_2_in_one_line():
    r = invoke("config", SD, "--set", "rl.preset=dancegrpo", "--set", "rl.std_scope=batch")
    assert r.exit_code == 2
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: config error:") and "rl.std_scope" in lines[0]


@pytest.fixture
def test_reward():
    register("test_cli_mean")(lambda: lambda images, prompts, **_: {"mean": images.mean(dim=(1, 2, 3))})
    yield "test_cli_mean"
    unregister("test_cli_mean")


def test_config_check_lists_every_missing_piece_at_once(empty_hub_cache):
    r = invoke("config", SD, "--check")
    assert r.exit_code == 2
    lines = stderr_lines(r)
    assert [line.split(":")[1].strip() for line in lines] == [
        "model.path", "reward hpsv21 options.checkpoint", "reward clip options.model"]
    assert all(line.startswith("error: ") and "hf download" in line for line in lines)
    assert r.stdout == ""  # nothing printed as if the config were fine


def test_config_check_passes_for_a_complete_config(tmp_path, tiny_sd_dir, test_reward):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"family": "sd", "path": str(tiny_sd_dir)},
                                      "data": {"prompts": str(prompts)},
                                      "reward": {"components": [{"name": test_reward}]}}))
    r = invoke("config", str(config), "--check")
    assert r.exit_code == 0, stderr_lines(r)
    assert r.stdout.strip() == "preflight: ok"


def test_gated_flux_names_the_licence_and_login_before_the_download(empty_hub_cache):
    r = invoke("config", FLUX, "--check")
    assert r.exit_code == 2
    first = stderr_lines(r)[0]
    assert first.startswith("error: model.path: 'black-forest-labs/FLUX.1-dev'")
    licence = first.index("accept the licence on https://huggingface.co/black-forest-labs/FLUX.1-dev")
    assert licence < first.index("hf auth login") < first.index("hf download black-forest-labs/FLUX.1-dev")
    assert not any("hf auth login" in line for line in stderr_lines(invoke("config", SD, "--check")))  # not gated


def test_power_set_with_dancegrpo_is_a_config_error_naming_both_keys():
    r = invoke("config", SD, "--set", "rl.preset=dancegrpo", "--set", "rl.power=3")
    assert r.exit_code == 2 and r.stdout == ""
    assert stderr_lines(r) == ["error: config error: rl: rl.power=3 conflicts with rl.preset=dancegrpo (power 1)"]
    ok = invoke("config", SD, "--set", "rl.preset=dancegrpo", "--set", "rl.power=1")
    assert ok.exit_code == 0 and yaml.safe_load(ok.stdout)["rl"]["power"] == 1.0
