"""`slas sample`: comparison sets of real tiny checkpoints, paired by seed, rendered into the job store."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from slas.config import config_from_dict
from slas.images import load_image
from slas.platform.db import open_store
from slas.platform.sampling import SamplingError, parse_seeds, plan_sample_set
from slas.rewards import build, register
from slas.rewards.registry import unregister
from slas.rewards.score import parse_reward_spec
from slas.rl.checkpoint import MARKER
from slas.testing.cli import error_text as err
from slas.testing.cli import run_cli as slas

PROMPTS = "a red circle\ntwo blue squares\n"




def _brightness_factory():
    def reward(images, prompts, **_):
        return {"brightness": images.mean(dim=(1, 2, 3)), "redness": images[:, 0].mean(dim=(1, 2))}

    return reward


@pytest.fixture(autouse=True)
def brightness_reward():
    register("test_sample_brightness")(_brightness_factory)
    yield
    unregister("test_sample_brightness")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd_dir) -> dict:
    """A tiny SD run trained for two iterations as a store job (MLflow off: not what this module tests)."""
    from slas.run import run_training

    root = tmp_path_factory.mktemp("sampling")
    (root / "prompts.txt").write_text(PROMPTS + "a green triangle\none yellow star\n")
    cfg = {
        "run": {"name": "tiny_sd", "output_dir": str(root / "runs"), "seed": 3, "iterations": 2,
                "checkpoint_every": 1, "progress": False},
        "model": {"family": "sd", "path": str(tiny_sd_dir)},
        "data": {"prompts": str(root / "prompts.txt")},
        "sample": {"resolution": 32, "num_steps": 4, "group_size": 3, "prompts_per_iter": 2, "eta": 1.0},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"lr": 3e-3, "clip_range": 0.2, "batch_size": 3, "gradient_accumulation_steps": 1},
        "reward": {"components": [{"name": "test_sample_brightness"}]},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    store_url = f"sqlite:///{root / 'home' / 'slas.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLAS_HOME", str(root / "home"))
        mp.setenv("SLAS_MLFLOW", "0")
        register("test_sample_brightness")(_brightness_factory)
        try:
            with open_store(store_url) as store:
                outcome = run_training(config_from_dict(cfg), store=store)
        finally:
            unregister("test_sample_brightness")
    assert outcome.status == "completed"
    run_dir = root / "runs" / "tiny_sd"
    return {"root": root, "run_dir": run_dir, "ckpt": run_dir / "checkpoints" / "iter_000002",
            "config": root / "run.yaml", "store_url": store_url, "job_id": outcome.job_id}


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _set_id(result) -> int:
    assert result.exit_code == 0, err(result) + result.stdout
    return int(re.search(r"sample set (\d+): ", result.stdout).group(1))


def test_sets_pair_checkpoints_by_prompt_and_seed(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("SLAS_DATABASE_URL", trained["store_url"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    ckpt = trained["ckpt"]
    r = slas("sample", "--checkpoints", f"base,{ckpt}", "--prompts", prompts, "--seeds", "0-2", "--batch-size", "4",
             "--reward", "test_sample_brightness", "--name", "base-vs-trained")
    first = _set_id(r)
    assert "12 images (2 checkpoints x 2 prompts x 3 seeds)" in r.stdout
    with open_store() as store:
        sset = store.get_sample_set(first)
        rows = store.list_samples(first)
    assert sset.name == "base-vs-trained" and sset.job_id == trained["job_id"]  # both come from one run's job
    assert sset.meta["status"] == "complete" and sset.meta["seeds"] == [0, 1, 2]
    assert Path(sset.meta["out_dir"]) == Path(os.environ["SLAS_HOME"]).resolve() / "samples" / str(first)
    by_label: dict[str, dict[tuple[str, int], object]] = {}
    for row in rows:
        by_label.setdefault(row.checkpoint_label, {})[(row.prompt, row.seed)] = row
    assert sorted(by_label) == ["base", "tiny_sd/iter_000002"]
    pairs = {(p, s) for p in PROMPTS.split("\n") if p for s in (0, 1, 2)}
    assert set(by_label["base"]) == set(by_label["tiny_sd/iter_000002"]) == pairs
    for row in rows:
        assert Path(row.image_path).is_file() and _pixels(row.image_path).shape == (32, 32, 3)
        assert set(row.rewards) == {"test_sample_brightness/brightness", "test_sample_brightness/redness", "total"}
        assert row.rewards["total"] == pytest.approx(row.rewards["test_sample_brightness/brightness"]
                                                     + row.rewards["test_sample_brightness/redness"])
    assert by_label["base"][("a red circle", 0)].checkpoint_path is None
    assert by_label["tiny_sd/iter_000002"][("a red circle", 0)].checkpoint_path == str(ckpt.resolve())

    # `base` again (other batches, its config given explicitly): the same seed gives the same image
    out = tmp_path / "again"
    r = slas("sample", "--checkpoints", "base", "--config", trained["config"], "--prompts", prompts,
             "--seeds", "2,0,1", "--batch-size", "1", "--out", out)
    second = _set_id(r)
    with open_store() as store:
        again = {(s.prompt, s.seed): s for s in store.list_samples(second)}
        assert store.get_sample_set(second).job_id is None
    assert set(again) == pairs and all(Path(s.image_path).parent.parent == out.resolve() for s in again.values())
    for key, row in again.items():
        base = _pixels(by_label["base"][key].image_path)
        assert np.abs(_pixels(row.image_path) - base).max() <= 1, key  # batch size may move a pixel by one level
        assert row.rewards == {}
    # different seeds give different noise, and the trained weights give different images for the same seed
    base_imgs = {k: _pixels(v.image_path) for k, v in by_label["base"].items()}
    assert np.abs(base_imgs[("a red circle", 0)] - base_imgs[("a red circle", 1)]).max() > 10
    diffs = [np.abs(_pixels(by_label["tiny_sd/iter_000002"][k].image_path) - base_imgs[k]).mean() for k in pairs]
    assert min(diffs) > 0.5, diffs


def test_stored_scores_are_the_scores_of_the_saved_pngs(trained, tmp_path):
    """Rewards score the 8-bit images the PNGs hold: a saved PNG loaded as `slas reward score` loads it and
    scored again gives the stored number exactly; the set's samples.jsonl lists every image it saved."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "set"
    r = slas("sample", "--checkpoints", trained["ckpt"], "--prompts", prompts, "--seeds", "0-2", "--batch-size", "8",
             "--reward", "test_sample_brightness", "--out", out)
    set_id = _set_id(r)
    with open_store() as store:
        sset = store.get_sample_set(set_id)
        rows = {Path(s.image_path): s for s in store.list_samples(set_id)}
    assert sset.meta["scored"] == "the saved 8-bit PNG images"
    manifest = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    prompt_list = [p for p in PROMPTS.split("\n") if p]
    assert [(m["prompt"], m["seed"]) for m in manifest] == [(p, s) for p in prompt_list for s in (0, 1, 2)]
    assert all(set(m) == {"image", "prompt", "seed", "checkpoint"} for m in manifest)
    assert {m["checkpoint"] for m in manifest} == {"tiny_sd/iter_000002"}
    paths = [(out / m["image"]).resolve() for m in manifest]
    assert set(paths) == set(rows)

    images = torch.stack([load_image(p) for p in paths])  # one batch, as the set was scored (--batch-size 8)
    group_ids = torch.tensor([prompt_list.index(m["prompt"]) for m in manifest])
    scores = build(parse_reward_spec("test_sample_brightness"))(images, [m["prompt"] for m in manifest],
                                                                group_ids=group_ids)
    for k, path in enumerate(paths):
        assert rows[path].rewards == {name: float(v[k]) for name, v in scores.items()}, path


def test_flux_base_and_run_dir_checkpoints(tiny_flux_dir, tmp_path, monkeypatch):
    """A FLUX pipeline renders too; a run dir stands for its newest checkpoint."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "two blue squares"}\n')
    cfg = {"run": {"name": "flux_run", "output_dir": str(tmp_path / "runs")},
           "model": {"family": "flux", "path": str(tiny_flux_dir)}, "data": {"prompts": str(prompts)},
           "sample": {"resolution": 32, "num_steps": 3, "max_sequence_length": 32, "shift": 3.0},
           "reward": {"components": [{"name": "test_sample_brightness"}]}}
    config = tmp_path / "flux.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = slas("sample", "--checkpoints", "base", "--config", config, "--prompts", prompts, "--seeds", "5,6")
    set_id = _set_id(r)
    with open_store() as store:
        rows = store.list_samples(set_id)
    assert [(s.prompt, s.seed) for s in rows] == [("a red circle", 5), ("a red circle", 6),
                                                   ("two blue squares", 5), ("two blue squares", 6)]
    imgs = [_pixels(s.image_path) for s in rows]
    assert np.abs(imgs[0] - imgs[1]).max() > 0  # another seed, other noise

    # a run dir resolves to its newest complete checkpoint (an incomplete newer one is ignored)
    run_dir = tmp_path / "runs" / "flux_run"
    for name, complete in (("iter_000001", True), ("iter_000002", False)):
        (run_dir / "checkpoints" / name / "trainable").mkdir(parents=True)
        if complete:
            (run_dir / "checkpoints" / name / MARKER).write_text("1")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = plan_sample_set(str(run_dir), prompts, "0")
    assert [s.label for s in plan.checkpoints] == ["flux_run/iter_000001"]
    assert plan.checkpoints[0].config.model.family == "flux"


def test_bad_input_fails_in_one_line_before_any_model_loads(trained, tmp_path, monkeypatch):
    from slas import run
    from slas.t2i.flux import FluxPolicy
    from slas.t2i.sd import SDPolicy

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    for cls in (SDPolicy, FluxPolicy):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(run, "build", boom)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    ckpt, config = trained["ckpt"], trained["config"]
    torn = tmp_path / "torn"
    (torn / "trainable").mkdir(parents=True)
    bad_model = tmp_path / "bad_model.yaml"
    bad_model.write_text(config.read_text().replace(str(yaml.safe_load(config.read_text())["model"]["path"]),
                                                    str(tmp_path / "no_model")))
    cases = [
        (["--checkpoints", tmp_path / "missing", "--prompts", prompts], "does not exist"),
        (["--checkpoints", torn, "--prompts", prompts], "is not a complete checkpoint (no COMPLETE marker)"),
        (["--checkpoints", f"{ckpt},{ckpt}", "--prompts", prompts], "tiny_sd/iter_000002 is given twice"),
        (["--checkpoints", "base", "--prompts", prompts], "`base` alone needs --config"),
        (["--checkpoints", ckpt, "--prompts", empty], "--prompts: "),
        (["--checkpoints", ckpt, "--prompts", tmp_path / "nope.txt"], "prompt file not found"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--seeds", "0,x"], "--seeds: 'x' is not a seed"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--seeds", "3-1"], "--seeds: '3-1' is not a valid range"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--seeds", "1,1"], "--seeds: seed 1 is given twice"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--seeds", "-1"], "--seeds: '-1' is not a seed"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--reward", "no_such_reward"], "unknown reward 'no_such_reward'"),
        (["--checkpoints", "base", "--config", bad_model, "--prompts", prompts], "model.path: directory"),
        (["--checkpoints", ckpt, "--prompts", prompts, "--set", "sample.num_steps=1"], "sample.num_steps"),
    ]
    for args, expected in cases:
        r = slas("sample", *args)
        lines = err(r).splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err(r))
        assert expected in lines[0], (args, lines[0])
    with open_store() as store:
        assert store.list_sample_sets() == []  # nothing was recorded for rejected input


def test_weights_that_do_not_fit_the_config_fail_the_set_in_one_line(trained, tiny_flux_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    flux = yaml.safe_load(trained["config"].read_text())
    flux["model"] = {"family": "flux", "path": str(tiny_flux_dir)}
    flux["sample"].update(max_sequence_length=32, shift=3.0)
    config = tmp_path / "flux.yaml"
    config.write_text(yaml.safe_dump(flux))
    r = slas("sample", "--checkpoints", f"base,{trained['ckpt']}", "--config", config, "--prompts", prompts)
    lines = err(r).splitlines()
    assert r.exit_code == 2 and lines[-1].startswith("error: sampling failed: FileNotFoundError: no transformer weights")
    with open_store() as store:
        (sset,) = store.list_sample_sets()
        assert sset.meta["status"] == "failed" and "no transformer weights" in sset.meta["error"]
        assert {s.checkpoint_label for s in store.list_samples(sset.id)} == {"base"}  # the base rows are kept


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3 , 0-2 ,10") == [3, 0, 1, 2, 10]
    for bad in ("", "a", "1.5", "0-", "2-1", "1,1", "0-2,2"):
        with pytest.raises(SamplingError):
            parse_seeds(bad)
