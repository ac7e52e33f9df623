"""The `slas` command line: help, one-line errors, fast preflight failures, config printing."""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from slas.cli import app
from slas.config import config_from_dict, load_config
from slas.testing.cli import ANSI, ENV, cli_runner

ROOT = Path(__file__).resolve().parents[1]
SD = str(ROOT / "configs" / "sd14_hps_clip.yaml")
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
    [("sample.eta=0", "error: config error: sample.eta:"), ("rl.power", "error: --set 'rl.power': expected key=value")],
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
    assert len(lines) == 1 and lines[0].startswith("error: model.path:")
    assert "hf download CompVis/stable-diffusion-v1-4" in lines[0] and str(empty_hub_cache) in lines[0]


def test_train_absent_model_with_revision(empty_hub_cache, no_heavy_work):
    r = invoke("train", SD, "--set", "model.revision=fp16", "--resume")
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
