"""The `slas` command line: help, one-line errors, fast preflight failures, config printing."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import yaml
from typer.testing import CliRunner

from slas.cli import app

ROOT = Path(__file__).resolve().parents[1]
SD = str(ROOT / "configs" / "sd14_hps_clip.yaml")
runner = CliRunner()


def test_help_lists_commands():
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("train", "config", "bench", "reward"):
        assert cmd in out
    train_help = runner.invoke(app, ["train", "--help"]).output
    assert "--set" in train_help and "--resume" in train_help


def test_train_unknown_key_fails_in_one_line():
    r = runner.invoke(app, ["train", SD, "--set", "rl.powr=3"])
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines == ["error: config error: rl.powr: unknown key"]


def test_train_absent_model_gives_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    r = runner.invoke(app, ["train", SD])
    assert r.exit_code == 2
    assert "hf download CompVis/stable-diffusion-v1-4" in r.output and r.output.startswith("error: model.path")


def test_config_prints_resolved_yaml():
    r = runner.invoke(app, ["config", SD, "--set", "rl.preset=dancegrpo"])
    assert r.exit_code == 0
    data = yaml.safe_load(r.output)
    assert data["rl"]["std_scope"] == "prompt" and data["rl"]["power"] == 1.0
