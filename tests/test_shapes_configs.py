"""configs/shapes_*.yaml: the shapes world as ordinary configs that name the shipped files portably and
work offline with `slas train`, `slas eval geneval --detector shapes`, `slas sample` and `slas jobs submit`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from slas.config import load_config
from slas.paths import expand_shapes_refs, shapes_assets_dir
from slas.shapes import assets
from slas.shapes.demo import FULL, METHODS, demo_config
from slas.shapes.prompts import balanced_prompts, metadata
from slas.testing.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"slas": ROOT / "configs" / "shapes_slas.yaml", "dancegrpo": ROOT / "configs" / "shapes_dancegrpo.yaml"}
SMALL = ["run.iterations=1", "sample.group_size=2", "sample.prompts_per_iter=2", "sample.groups_per_call=2",
         "sample.num_steps=3", "eval.prompts_limit=6", "eval.batch_size=6"]


def test_shapes_refs_expand_to_the_assets_folder(monkeypatch, tmp_path):
    assert expand_shapes_refs({"a": ["shapes:t2i", "local-dir:shapes:preference", "t2i", "x/shapes:y"]}) == {
        "a": [str(shapes_assets_dir() / "t2i"), f"local-dir:{shapes_assets_dir() / 'preference'}", "t2i", "x/shapes:y"]
    }
    monkeypatch.setenv("SLAS_SHAPES_ASSETS", str(tmp_path))
    assert expand_shapes_refs("shapes:clip") == str(tmp_path / "clip")


@pytest.mark.parametrize("method", ["slas", "dancegrpo"])
def test_the_configs_are_the_demo_runs_with_portable_paths(method, tmp_path):
    text = CONFIGS[method].read_text()
    assert ": /" not in text and "src/slas" not in text  # no absolute or source-tree paths
    cfg = load_config(CONFIGS[method])
    for path in (cfg.model.path, cfg.data.prompts, cfg.eval.metadata):
        assert Path(path).exists(), path
    demo = demo_config(method, METHODS[method], FULL, out_dir=tmp_path)
    for section in ("model", "data", "sample", "train", "reward"):
        assert getattr(cfg, section) == getattr(demo, section), section
    assert cfg.rl == demo.rl and cfg.run.iterations == FULL.iterations


def test_the_shipped_prompt_files_are_the_worlds_splits():
    root = assets.assets_dir()
    lines = (root / assets.TRAIN_PROMPTS).read_text().splitlines()
    assert lines == balanced_prompts("train") and set(lines) == {r["prompt"] for r in metadata("train")}
    tags = {r["prompt"]: r["tag"] for r in metadata("train")}
    counts = {t: sum(tags[p] == t for p in lines) for t in set(tags.values())}
    assert len(set(counts.values())) == 1, counts  # every tag equally often
    rows = [json.loads(line) for line in (root / assets.TEST_METADATA).read_text().splitlines()]
    assert rows == metadata("test")


@pytest.mark.slow
def test_train_eval_and_sample_work_offline_on_the_shapes_config(tmp_path):
    out = tmp_path / "runs"
    sets = [a for kv in [*SMALL, f"run.output_dir={out}"] for a in ("--set", kv)]
    r = run_cli("train", CONFIGS["slas"], *sets)
    assert r.exit_code == 0, r.output
    run_dir = out / "shapes_slas"
    evals = sorted((run_dir / "evals").glob("iter_*/summary.json"))
    assert evals, "the config's eval: section evaluated the held-out split during training"
    r = run_cli("eval", "geneval", "--checkpoint", run_dir, "--detector", "shapes", "--images-per-prompt", "1",
                "--output", tmp_path / "eval", "--no-record")
    assert r.exit_code == 0, r.output
    assert set(json.loads((tmp_path / "eval" / "summary.json").read_text())) >= {"overall", "color_attr"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\n")
    r = run_cli("sample", "--checkpoints", f"base,{run_dir}", "--config", CONFIGS["slas"], "--prompts", prompts,
                "--seeds", "0-1", "--set", "sample.num_steps=3")
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_a_submitted_job_runs_the_shapes_config_to_completion(tmp_path, monkeypatch):
    from slas.platform.db import open_store

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a detached job beside the test process, on a small machine
    sets = [a for kv in [*SMALL, f"run.output_dir={tmp_path}"] for a in ("--set", kv)]
    r = run_cli("jobs", "submit", CONFIGS["dancegrpo"], *sets)
    assert r.exit_code == 0, r.output
    job_id = int(re.search(r"submitted job (\d+)", r.stdout).group(1))
    deadline = time.monotonic() + 240
    with open_store() as store:
        while store.get_job(job_id).status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        job = store.get_job(job_id)
    assert job.status == "completed", (job.status, job.error)
    assert (Path(job.run_dir) / "checkpoints").is_dir()
