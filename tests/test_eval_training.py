"""The run config's ``eval:`` section: a held-out GenEval evaluation of the live policy during a tiny training run,
checked at preflight, recorded in the job store, and what scores the registered version."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from slas.config import load_config
from slas.eval.during import TrainingEval, round_robin
from slas.eval.geneval import GENEVAL_TAGS
from slas.platform.db import open_store
from slas.platform.tracking import SCORE_TAG, read_metrics
from slas.run import run_training
from slas.testing.cli import error_text, run_cli


def write_meta(root: Path, tags: tuple[str, ...] = GENEVAL_TAGS[:3]) -> Path:
    """One shapes-world test prompt of each of ``tags``."""
    from slas.shapes.prompts import metadata

    records = metadata("test")
    path = root / "meta.jsonl"
    path.write_text("".join(json.dumps(next(r for r in records if r["tag"] == t)) + "\n" for t in tags))
    return path


def test_round_robin_takes_every_tag_before_a_second_of_any():
    records = [{"tag": t, "prompt": f"{t} {i}"} for t in ("a", "b", "c") for i in range(3)]
    assert [r["prompt"] for r in round_robin(records, 4)] == ["a 0", "a 1", "b 0", "c 0"]  # file order kept
    assert round_robin(records, None) == records and round_robin(records, 50) == records


def test_the_live_policy_is_evaluated_recorded_and_scores_the_registered_version(workdir, session_mlflow_uri):
    meta = write_meta(workdir)
    config = load_config(workdir / "tiny.yaml", [f"eval.metadata={meta}", "eval.images_per_prompt=2", "eval.every=1"])
    outcome = run_training(config)
    assert outcome.status == "completed"
    run_dir = config.run_dir.resolve()

    # eval/geneval/<tag> logged at every iteration, as the evaluation's own summary says
    metrics = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    summaries = {it: json.loads((run_dir / "evals" / f"iter_{it:06d}" / "summary.json").read_text()) for it in (1, 2)}
    for it, summary in summaries.items():
        assert set(summary) == {"overall", *GENEVAL_TAGS[:3]}
        assert {k: metrics[it][f"eval/geneval/{k}"] for k in summary} == pytest.approx(summary)

    # one store row per evaluation, naming the job, the iteration's checkpoint and the results compare reads
    with open_store() as store:
        rows = store.list_evals(job_id=outcome.job_id)
    assert [r.iteration for r in rows] == [2, 1]
    for row in rows:
        out = run_dir / "evals" / f"iter_{row.iteration:06d}"
        assert row.scores == pytest.approx(summaries[row.iteration]) and row.n_images == 6
        assert row.checkpoint == str(run_dir / "checkpoints" / f"iter_{row.iteration:06d}")
        assert Path(row.checkpoint).is_dir() and row.results_path == str(out / "results.jsonl")
        assert row.settings["images_per_prompt"] == 2 and row.settings["metadata"] == str(meta.resolve())

    # the registered version is scored by the held-out evaluation, not the reward
    client = MlflowClient(session_mlflow_uri)
    (version,) = client.search_model_versions(f"name='{config.run.name}' and run_id='{outcome.trainer.tracker.run_id}'")
    assert version.tags["slas.score_metric"] == "eval/geneval/overall"
    assert float(version.tags[SCORE_TAG]) == pytest.approx(summaries[2]["overall"])

    # the live evaluation is `slas eval geneval` on the checkpoint written at that iteration, image for image
    out = workdir / "again"
    result = run_cli("eval", "geneval", "--checkpoint", run_dir / "checkpoints" / "iter_000002", "--metadata", meta,
                     "--images-per-prompt", 2, "--output", out, "--no-record")
    assert result.exit_code == 0, error_text(result)
    live = [json.loads(line) for line in (run_dir / "evals" / "iter_000002" / "results.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in live] == [r["correct"] for r in again]
    for a, b in zip(live, again, strict=True):
        assert np.array_equal(np.asarray(Image.open(a["image"])), np.asarray(Image.open(b["image"])))

    # the two are the same evaluation to `slas eval compare`: difference 0
    result = run_cli("eval", "compare", run_dir / "evals" / "iter_000002", out, "--resamples", 200)
    assert result.exit_code == 0, error_text(result)
    assert "| **overall** |" in result.stdout and "+0.0000 [+0.0000, +0.0000]" in result.stdout


def test_a_failing_evaluation_warns_and_training_goes_on_and_register_model_false_registers_nothing(
    workdir, session_mlflow_uri, monkeypatch
):
    import slas.eval.runner
    import slas.run

    def broken(*_a, **_k):
        raise RuntimeError("detector fell over")

    monkeypatch.setattr(slas.eval.runner, "run_geneval", broken)
    monkeypatch.setattr(slas.run, "register_final_checkpoint", lambda *a, **k: pytest.fail("registered a model"))
    config = load_config(workdir / "tiny.yaml", [f"eval.metadata={write_meta(workdir)}", "run.iterations=1",
                                                 "run.register_model=false"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outcome = run_training(config)
    assert outcome.status == "completed" and (config.run_dir / "checkpoints" / "iter_000001").is_dir()
    assert any("evaluation at iteration 1 failed and was skipped: RuntimeError: detector fell over" in str(w.message)
               for w in seen)
    with open_store() as store:
        assert store.list_evals() == []


@pytest.mark.parametrize(("override", "needle"), [
    ("eval.detector=yolo", "eval.detector: 'yolo' is not a detector"),
    ("eval.metadata=missing.jsonl", "eval.metadata: missing.jsonl is not a file"),
    ("eval.detector=mask2former", "eval.detector_model is required by eval.detector=mask2former; fetch it"),
])
def test_a_bad_eval_section_fails_at_preflight_in_one_line(workdir, monkeypatch, override, needle):
    import slas.policies

    monkeypatch.setattr(slas.policies, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    result = run_cli("train", workdir / "tiny.yaml", "--set", override)
    assert result.exit_code == 2
    err = error_text(result)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    with open_store() as store:
        assert store.list_jobs() == []  # refused before any job row


def test_the_eval_section_is_typed_and_off_by_default(workdir):
    from slas.config import ConfigError

    assert load_config(workdir / "tiny.yaml").eval is None
    section = load_config(workdir / "tiny.yaml", ["eval.prompts_limit=3"]).eval
    assert (section.every, section.benchmark, section.detector, section.images_per_prompt) == (None, "geneval",
                                                                                               "shapes", 1)
    with pytest.raises(ConfigError, match=r"eval\.every: Input should be greater than or equal to 1"):
        load_config(workdir / "tiny.yaml", ["eval.every=0"])
    with pytest.raises(ConfigError, match=r"eval\.benchmark"):
        load_config(workdir / "tiny.yaml", ["eval.benchmark=parti"])
    with pytest.raises(ValueError, match="needs a config with an eval: section"):
        TrainingEval(load_config(workdir / "tiny.yaml"))
