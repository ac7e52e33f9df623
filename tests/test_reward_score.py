"""`slas reward score`: score a folder of images with a reward spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from slas.cli import app
from slas.rewards.registry import register, unregister
from slas.rewards.score import parse_reward_spec


@pytest.fixture
def rewards():
    seen = {}

    @register("test_mean")
    def mean_factory(scale: float = 1.0):
        def reward(images, prompts, **cond):
            seen["cond"] = cond
            return {"mean": scale * images.mean(dim=(1, 2, 3))}

        return reward

    @register("test_len")
    def len_factory():
        return lambda images, prompts, **_: {"len": torch.tensor([float(len(p)) for p in prompts])}

    yield seen
    unregister("test_mean")
    unregister("test_len")


def _folder(tmp_path, name, values, sizes=None):
    d = tmp_path / name
    d.mkdir()
    for i, v in enumerate(values):
        size = sizes[i] if sizes else 8
        Image.fromarray(np.full((size, size, 3), v, dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


def test_parse_reward_spec(tmp_path):
    spec = parse_reward_spec("hpsv21:0.7, clip:1.4")
    assert [(c.name, c.weight) for c in spec.components] == [("hpsv21", 0.7), ("clip", 1.4)]
    f = tmp_path / "r.yaml"
    f.write_text("reward:\n  normalize: group_zscore\n  components:\n    - {name: clip, weight: 2, options: {backend: open_clip}}\n")
    spec = parse_reward_spec(str(f))
    assert spec.normalize == "group_zscore" and spec.components[0].options == {"backend": "open_clip"}
    with pytest.raises(ValueError, match="weight must be a number"):
        parse_reward_spec("clip:x")


def test_reward_score_cli(rewards, tmp_path):
    images = _folder(tmp_path, "imgs", [0, 255, 51], sizes=[8, 8, 16])  # two sizes: two reward calls
    refs = _folder(tmp_path, "refs", [10, 20, 30])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nbb\nccc\n")
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, [
        "reward", "score", "--reward", "test_mean:2,test_len:0.5", "--images", str(images), "--prompts", str(prompts),
        "--condition", f"reference_images={refs}", "--output", str(out),
    ])
    assert result.exit_code == 0, result.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in recs] == ["00.png", "01.png", "02.png"]
    assert recs[1]["test_mean"] == pytest.approx(1.0) and recs[2]["test_mean"] == pytest.approx(0.2)
    assert recs[2]["total"] == pytest.approx(2 * 0.2 + 0.5 * 3)
    assert "total: mean" in result.output
    assert all(p.endswith(".png") for p in rewards["cond"]["reference_images"])


def test_reward_score_errors(rewards, tmp_path):
    images = _folder(tmp_path, "imgs", [0, 1])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    runner = CliRunner()
    r = runner.invoke(app, ["reward", "score", "--reward", "test_mean", "--images", str(images), "--prompts", str(prompts)])
    assert r.exit_code == 2 and "3 prompts for 2 images" in r.output
    prompts.write_text("one prompt for all\n")
    r = runner.invoke(app, ["reward", "score", "--reward", "nope", "--images", str(images), "--prompts", str(prompts)])
    assert r.exit_code == 2 and "unknown reward 'nope'" in r.output
    r = runner.invoke(app, ["reward", "score", "--reward", "test_mean", "--images", str(tmp_path / "missing"),
                            "--prompts", str(prompts)])
    assert r.exit_code == 2 and "image folder not found" in r.output
