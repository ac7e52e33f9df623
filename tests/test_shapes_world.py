"""The shapes world's trained components: tokenizers, shipped assets, proxies, pretraining, demo and bench."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer, T5Tokenizer

from slas.rewards import build
from slas.shapes import assets
from slas.shapes.models import IMAGE_SIZE, build_tokenizers, world_words
from slas.shapes.prompts import metadata, perturb
from slas.shapes.render import render_record


def _pixels(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(im).copy()) for im in images]).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def proxies():
    return build(assets.reward_components())


def test_world_words_are_single_tokens_and_survive_a_reload(tmp_path):
    clip, t5 = build_tokenizers()
    for word in world_words():
        assert len(clip.tokenize(word)) == 1, word
        assert len(t5.tokenize(word)) == 1, word
    clip.save_pretrained(tmp_path / "clip")
    t5.save_pretrained(tmp_path / "t5")
    prompt = "a photo of three red circles left of an orange square"
    assert CLIPTokenizer.from_pretrained(tmp_path / "clip")(prompt).input_ids == clip(prompt).input_ids
    assert T5Tokenizer.from_pretrained(tmp_path / "t5")(prompt).input_ids == t5(prompt).input_ids
    assert len(t5.tokenize(prompt)) == 11  # one token per word


def _shipped_tokenizers():
    """The t2i model's tokenizers, loaded by the classes its model_index.json names (as diffusers does)."""
    import transformers

    root = assets.assets_dir() / assets.T2I
    index = json.loads((root / "model_index.json").read_text())
    return [getattr(transformers, index[name][1]).from_pretrained(root / name) for name in ("tokenizer", "tokenizer_2")]


def test_shipped_tokenizers_fold_capitals_and_keep_every_world_prompts_ids():
    """A capitalised prompt tokenizes as its lowercase form in both shipped tokenizers (T5 too, through the
    charsmap in its tokenizer.json), and case folding changed no id of any world prompt: the shipped weights
    see exactly what they were trained on."""
    from tokenizers import Tokenizer

    clip, t5 = _shipped_tokenizers()
    for tok in (clip, t5):
        assert tok("A Photo Of Three RED Circles").input_ids == tok("a photo of three red circles").input_ids
    as_trained = Tokenizer.from_str(t5.backend_tokenizer.to_str())
    as_trained.normalizer = None  # the shipped vocabulary without the case folding
    prompts = sorted({r["prompt"] for split in ("train", "test") for r in metadata(split)})
    assert [e.ids for e in as_trained.encode_batch(prompts)] == [t5(p).input_ids for p in prompts]


def test_shipped_assets_are_complete_and_small():
    root = assets.check_assets()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 30 * 2**20
    report = json.loads((root / "pretrain.json").read_text())
    assert 0.3 <= report["t2i"]["test_scores"]["overall"] <= 0.7


def test_missing_assets_name_the_pretraining_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m slas\.shapes\.pretrain --out"):
        assets.check_assets(tmp_path)


def test_shipped_model_loads_in_the_flux_policy_unchanged():
    from slas.config import ModelConfig, SampleConfig
    from slas.t2i.flux import FluxPolicy

    policy = FluxPolicy.from_pretrained(
        ModelConfig(family="flux", path=str(assets.assets_dir() / assets.T2I), device="cpu", dtype="float32"),
        SampleConfig(resolution=IMAGE_SIZE, num_steps=3, group_size=2, prompts_per_iter=1, eta=0.3,
                     max_sequence_length=24),
    )
    rollout = policy.rollout(["a photo of a red circle"], group_size=2, seed=0)
    assert rollout.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(rollout.trajectory.log_probs).all()


def test_proxies_load_through_the_real_reward_classes_and_prefer_correct_scenes(proxies):
    rng = random.Random(0)
    recs = [rng.choice(metadata("train")) for _ in range(48)]
    good = [render_record(r, rng)[0] for r in recs]
    bad_recs = [perturb(r, rng) for r in recs]
    bad = [render_record(r, rng)[0] for r in bad_recs]
    prompts = [r["prompt"] for r in recs]
    s_good, s_bad = proxies(_pixels(good), prompts), proxies(_pixels(bad), prompts)
    assert set(s_good) == {"hpsv21", "clip", "vividness", "total"}  # vividness: logged at weight 0
    for key in ("hpsv21", "clip"):
        assert torch.isfinite(s_good[key]).all()
        assert (s_good[key] > s_bad[key]).float().mean() > 0.6, key  # better than chance, not perfect


def test_preference_proxy_learned_the_annotators_taste_for_vivid_images(proxies):
    from slas.rewards.vividness import vividness

    rng = random.Random(1)
    recs = [rng.choice(metadata("train")) for _ in range(48)]
    images = _pixels([render_record(r, rng)[0] for r in recs])
    gray = images.mean(1, keepdim=True)
    vivid = (gray + (images - gray) * 1.8).clamp(0, 1)
    assert (vividness(vivid) > vividness(images)).float().mean() > 0.9
    prompts = [r["prompt"] for r in recs]
    plain, boosted = proxies(images, prompts)["hpsv21"], proxies(vivid, prompts)["hpsv21"]
    assert boosted.mean() > plain.mean()


@pytest.mark.slow
def test_pretrain_script_writes_loadable_assets(tmp_path):
    from slas.shapes.pretrain import main

    main([
        "--out", str(tmp_path), "--device", "cpu", "--workers", "1", "--dataset-size", "256",
        "--vae-steps", "2", "--vae-batch", "8", "--t2i-steps", "2", "--t2i-batch", "8", "--eval-every", "2",
        "--eval-limit", "6", "--final-images-per-prompt", "1", "--num-steps", "2", "--proxy-pairs", "16",
        "--preference-pairs", "16", "--proxy-steps", "2", "--proxy-batch", "8",
    ])
    assets.check_assets(tmp_path)
    report = json.loads((tmp_path / "pretrain.json").read_text())
    assert {"vae", "t2i", "clip", "preference", "dataset"} <= set(report)
    assert report["t2i"]["steps"] == 2
    build(assets.reward_components(tmp_path))  # the new proxies load through the reward registry


def test_pretrain_rejects_an_unknown_stage(tmp_path):
    from slas.shapes.pretrain import PretrainConfig, pretrain

    with pytest.raises(ValueError, match="unknown stage"):
        pretrain(PretrainConfig(out=tmp_path, stages=("vae", "unet")))


TINY_PLAN = dict(iterations=2, prompts_per_iter=2, group_size=4, num_steps=3, eval_every=1,
                 eval_images_per_tag=2, eval_prompts_per_tag=1)


@pytest.mark.slow
def test_demo_writes_the_report_contract_and_records_both_runs(tmp_path, capsys):
    from slas.platform.db import open_store
    from slas.shapes.demo import DemoPlan, run_demo

    report = run_demo(tmp_path / "demo", plan=DemoPlan(**TINY_PLAN))
    on_disk = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert {"seconds", "iterations", "methods", "eval_images"} <= set(on_disk) and on_disk["iterations"] == 2
    assert on_disk["eval_images"] == 6 * 2  # one prompt per tag, two images each
    assert set(on_disk["methods"]) == {"dancegrpo", "slas"}
    tags = {"overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"}
    for m in on_disk["methods"].values():
        assert {"proxy_reward", "judge", "judge_se", "judge_gain", "train_reward"} <= set(m)
        assert set(m["proxy_reward"]) == {"before", "after"} and set(m["train_reward"]) == {"first", "last"}
        for when in ("before", "after"):
            assert set(m["judge"][when]) == tags
            assert all(0.0 <= v <= 1.0 for v in m["judge"][when].values())
            assert all(0.0 <= v <= 0.5 for v in m["judge_se"][when].values())
        gain = m["judge_gain"]["overall"]["mean"]
        assert gain == pytest.approx(m["judge"]["after"]["overall"] - m["judge"]["before"]["overall"])
    # same initial weights and seeds: identical "before" for both methods
    assert on_disk["methods"]["dancegrpo"]["judge"]["before"] == on_disk["methods"]["slas"]["judge"]["before"]
    for name in ("report.md", "curves.png", "mechanism.png", "grid_before.png", "grid_after_dancegrpo.png",
                 "grid_after_slas.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "| dancegrpo | **overall** |" in md and "## What this shows" in md and "±" in md
    out = capsys.readouterr().out
    assert str((tmp_path / "demo" / "report.md").resolve()) in out  # the paths are printed
    # every iteration and evaluation went through the tracker, and both runs are store jobs named for the demo
    lines = (tmp_path / "demo" / "demo-slas" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert "reward/vividness/mean" in json.loads(lines[1])  # the planted bias is logged, at weight 0
    with open_store() as store:
        jobs = {j.name: j for j in store.list_jobs()}
    assert jobs["demo-dancegrpo"].status == jobs["demo-slas"].status == "completed"
    from mlflow import MlflowClient

    from slas.platform.tracking import default_tracking_uri

    logged = {a.path for a in MlflowClient(default_tracking_uri()).list_artifacts(jobs["demo-slas"].mlflow_run_id, "demo")}
    assert {"demo/report.md", "demo/mechanism.png", "demo/grid_after_slas.png"} <= logged


@pytest.mark.slow
def test_bench_hacking_summarizes_every_variant_over_seeds(tmp_path, monkeypatch):
    import slas.bench.hacking as hacking

    assert len(hacking.VARIANTS) == 10 and hacking.VARIANTS["slas_auto"]["power"] == "auto"
    monkeypatch.setattr(hacking, "PUBLISHED", tmp_path / "published")
    out = hacking.run_hacking(2, out=tmp_path / "runs", quick=True, variants=["dancegrpo", "slas_p2_norm_first"])
    assert [r["variant"] for r in out["runs"]] == ["dancegrpo", "slas_p2_norm_first"] * 2
    summary = out["summary"]["dancegrpo"]
    assert summary["seeds"] == 2 and len(summary["proxy_gain"]) == 2
    paired = out["paired"]["slas_p2_norm_first"]
    gains = {(r["variant"], r["seed"]): r["judge_after"] - r["judge_before"] for r in out["runs"]}
    diffs = [gains[("slas_p2_norm_first", s)] - gains[("dancegrpo", s)] for s in (0, 1)]
    assert paired["mean"] == pytest.approx(sum(diffs) / 2) and paired["ci95"][0] <= paired["mean"] <= paired["ci95"][1]
    table = (tmp_path / "runs" / "hacking.md").read_text()
    assert "| slas_p2_norm_first |" in table and "Machine:" in table and "95% interval" in table
    assert (tmp_path / "runs" / "hacking.png").stat().st_size > 0
    assert not (tmp_path / "published").exists()  # the committed table is written only with publish=True
    hacking.run_hacking(2, out=tmp_path / "runs", quick=True, variants=["dancegrpo", "slas_p2_norm_first"], publish=True)
    assert (tmp_path / "published" / "hacking.md").read_text() == table  # resumed from results.jsonl, then published
    with pytest.raises(ValueError, match="unknown variant"):
        hacking.run_hacking(1, out=tmp_path, variants=["grpo"])


def test_bench_sigterm_stops_the_parallel_workers(tmp_path):
    """``slas bench hacking --jobs N`` killed with SIGTERM takes its pool workers with it, even workers that
    catch SIGTERM to finish an iteration (they used to go on training, then deadlock the pool's shutdown)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "pool.py"
    script.write_text(  # the workers take SIGTERM as "finish this iteration", as run_training does
        "import multiprocessing as mp, signal, time\n"
        "from slas.bench.hacking import sigterm_exits\n"
        "def train(seconds):\n"
        "    signal.signal(signal.SIGTERM, lambda *_: None)\n"
        "    time.sleep(seconds)\n"
        "if __name__ == '__main__':\n"
        "    with sigterm_exits(), mp.get_context('spawn').Pool(2) as pool:\n"
        "        print('ready', flush=True)\n"
        "        pool.map(train, [120, 120])\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"

    def children() -> set[int]:
        path = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        return {int(p) for p in path.read_text().split()} if path.exists() else set()

    def running(pid: int) -> bool:  # a zombie has exited; its parent is gone and cannot reap it yet
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split()[2] != "Z"

    deadline = time.time() + 60
    while len(children()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = children()
    assert len(workers) >= 2
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.time() + 30
    while any(map(running, workers)) and time.time() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if running(w)]
    assert alive == [], f"pool workers {alive} outlived the SIGTERM'd parent"
