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
        "--condition", f"reference_images={refs}", "--out", str(out),
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


def _sample_set(tmp_path):
    """A folder as `slas sample` writes it: one subfolder per checkpoint and a samples.jsonl manifest."""
    root = tmp_path / "set"
    rows = []
    for label, level in (("iter_000002", 200), ("base", 100)):
        (root / label).mkdir(parents=True)
        for seed in (1, 0):
            rel = f"{label}/p0_s{seed}.png"
            Image.fromarray(np.full((8, 8, 3), level + seed, dtype=np.uint8)).save(root / rel)
            rows.append({"image": rel, "prompt": f"prompt of {label}", "seed": seed, "checkpoint": label})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_reward_score_finds_a_sample_sets_images_and_prompts(rewards, tmp_path):
    root = _sample_set(tmp_path)
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(app, ["reward", "score", "--reward", "test_mean", "--images", str(root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["image"] for x in recs] == ["base/p0_s0.png", "base/p0_s1.png",  # sorted paths, every subfolder
                                         "iter_000002/p0_s0.png", "iter_000002/p0_s1.png"]
    assert [(x["checkpoint"], x["seed"], x["prompt"]) for x in recs[:2]] == [("base", 0, "prompt of base"),
                                                                             ("base", 1, "prompt of base")]
    # the score of the file as decoded from disk: exactly its 8-bit level
    assert [x["test_mean"] for x in recs] == pytest.approx([100 / 255, 101 / 255, 200 / 255, 201 / 255])
    assert "as decoded from disk (8-bit)" in r.output and "samples.jsonl" in r.output
    assert "[base] test_mean: mean" in r.output and "[iter_000002] test_mean: mean" in r.output


def test_reward_score_of_one_checkpoint_folder_reads_the_sets_manifest(rewards, tmp_path):
    root = _sample_set(tmp_path)
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(app, ["reward", "score", "--reward", "test_len", "--images", str(root / "base"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["image"], x["prompt"]) for x in recs] == [("p0_s0.png", "prompt of base"), ("p0_s1.png", "prompt of base")]
    assert recs[0]["test_len"] == len("prompt of base")


def test_reward_score_explicit_prompts_win_and_are_needed_without_a_manifest(rewards, tmp_path):
    root = _sample_set(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(app, ["reward", "score", "--reward", "test_len", "--images", str(root),
                                 "--prompts", str(prompts), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert {json.loads(line)["prompt"] for line in out.read_text().splitlines()} == {"x"}
    plain = _folder(tmp_path, "plain", [0, 1])
    r = CliRunner().invoke(app, ["reward", "score", "--reward", "test_len", "--images", str(plain)])
    assert r.exit_code == 2 and "--prompts is needed: no samples.jsonl in" in r.output
    (root / "base" / "extra.png").write_bytes((root / "base" / "p0_s0.png").read_bytes())
    r = CliRunner().invoke(app, ["reward", "score", "--reward", "test_len", "--images", str(root)])
    assert r.exit_code == 2 and "extra.png is not in" in r.output and "give --prompts" in r.output
