"""`slas train` end to end: a shipped config, overridden onto tiny offline models and real reward classes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from slas.cli import app
from slas.platform.tracking import read_metrics
from slas.rl.checkpoint import latest_checkpoint
from slas.testing.tiny_clip import (
    TINY_OPEN_CLIP_MODEL,
    register_tiny_open_clip,
    save_tiny_hf_clip,
    save_tiny_open_clip_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


def test_slas_train_sd_config_with_hps_and_clip(tiny_sd_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's prompt file is relative to the repo root
    register_tiny_open_clip()
    hps = save_tiny_open_clip_checkpoint(tmp_path / "HPS_v2.1_compressed.pt")
    clip = save_tiny_hf_clip(tmp_path / "clip")
    rewards = json.dumps([
        {"name": "hpsv21", "weight": 1.0, "options": {"checkpoint": str(hps), "model_name": TINY_OPEN_CLIP_MODEL,
                                                      "device": "cpu"}},
        {"name": "clip", "weight": 1.0, "options": {"backend": "transformers", "model": str(clip), "device": "cpu"}},
    ])
    out = tmp_path / "runs"
    args = ["train", "configs/sd14_hps_clip.yaml",
            "--set", f"model.path={tiny_sd_dir}", "--set", "model.dtype=float32",
            "--set", "model.gradient_checkpointing=false", "--set", "sample.resolution=32",
            "--set", "sample.num_steps=4", "--set", "sample.group_size=3", "--set", "sample.prompts_per_iter=2",
            "--set", "train.batch_size=3", "--set", "train.gradient_accumulation_steps=1",
            "--set", "run.iterations=2", "--set", "run.checkpoint_every=1", "--set", f"run.output_dir={out}",
            "--set", "run.progress=false", "--set", f"reward.components={rewards}"]
    for preset in ("dancegrpo", "slas"):
        result = CliRunner().invoke(app, [*args, "--set", f"rl.preset={preset}", "--set", f"run.name={preset}"])
        assert result.exit_code == 0, result.output
        run = out / preset
        recs = read_metrics(run / "metrics.jsonl")
        assert [r["step"] for r in recs] == [1, 2]
        for key in ("reward/hpsv21/mean", "reward/clip/mean", "reward/total/mean"):
            assert recs[0][key] is not None
        assert recs[0]["ratio_dev_before_update"] < 1e-4
        assert latest_checkpoint(run / "checkpoints").name == "iter_000002"
        assert json.loads((run / "params.json").read_text())["rl.std_scope"] == {"dancegrpo": "prompt", "slas": "batch"}[preset]
