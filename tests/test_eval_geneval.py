"""``slas eval geneval``: the shapes path on the shipped model, a trainer checkpoint, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from slas.cli.common import SlasTyper
from slas.cli.eval import app as eval_app
from slas.eval.geneval import GENEVAL_TAGS, evaluate
from slas.shapes.assets import T2I, assets_dir, reward_components
from slas.testing.cli import ENV, cli_runner, error_text

ROW_KEYS = {"tag", "prompt", "image", "correct", "detections"}


def run_eval(*args: object):
    """``slas eval ARGS...`` through a root app holding only the eval group (as ``slas`` registers it)."""
    root = SlasTyper()
    root.add_typer(eval_app, name="eval")
    return cli_runner().invoke(root, ["eval", *(str(a) for a in args)], env=ENV)


def one_per_tag() -> list[dict]:
    """One shapes-world test prompt of each GenEval tag (six prompts: a fast end-to-end run)."""
    from slas.shapes.prompts import metadata

    records = metadata("test")
    return [next(r for r in records if r["tag"] == tag) for tag in GENEVAL_TAGS]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_outputs(out: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def check_summary(rows: list[dict], summary: dict) -> None:
    """summary.json holds each tag's accuracy over its images and overall = the mean of the tags."""
    tags = {r["tag"] for r in rows}
    assert set(summary) == {"overall", *tags}
    for tag in tags:
        assert summary[tag] == pytest.approx(np.mean([r["correct"] for r in rows if r["tag"] == tag]))
    assert summary["overall"] == pytest.approx(np.mean([summary[t] for t in tags]))


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("geneval_shapes")
    meta = write_jsonl(tmp / "meta.jsonl", one_per_tag())
    out = tmp / "out"
    result = run_eval("geneval", "--checkpoint", assets_dir() / T2I, "--metadata", meta, "--images-per-prompt", 1,
                      "--detector", "shapes", "--output", out)
    return out, result


def test_shapes_model_end_to_end(shapes_run):
    out, result = shapes_run
    assert result.exit_code == 0, error_text(result)
    rows, summary = read_outputs(out)
    assert len(rows) == len(GENEVAL_TAGS)
    assert all(set(r) >= ROW_KEYS for r in rows)
    assert [r["tag"] for r in rows] == list(GENEVAL_TAGS)
    for r in rows:
        assert Path(r["image"]).is_file() and Path(r["image"]).parent.name == "samples"
        assert all({"class", "color", "box"} <= set(d) for d in r["detections"])
    check_summary(rows, summary)
    assert "Task breakdown" in result.stdout
    assert f"Overall score (avg. over tasks): {summary['overall']:.5f}" in result.stdout
    assert (out / "images" / "00000" / "metadata.jsonl").is_file()  # GenEval's own layout, re-judgeable


def test_the_verdicts_are_the_shapes_judge_on_the_saved_images(shapes_run):
    from slas.images import load_image
    from slas.shapes.detect import detect

    out, _ = shapes_run
    rows, _ = read_outputs(out)
    records = {r["prompt"]: r for r in one_per_tag()}
    for row in rows:
        assert evaluate(records[row["prompt"]], detect(load_image(row["image"])))[0] == row["correct"]


def _fake_run(tmp: Path) -> Path:
    """A run dir with a config.yaml and one complete trainer checkpoint holding the shipped weights."""
    from slas.rl.checkpoint import save_checkpoint
    from slas.shapes.models import IMAGE_SIZE, TEXT_MAX_LENGTH

    run = tmp / "runs" / "shapes"
    (run / "checkpoints").mkdir(parents=True)
    prompts = write_jsonl(tmp / "prompts.txt", [])
    config = {
        "run": {"name": "shapes", "output_dir": str(tmp / "runs")},
        "model": {"family": "flux", "path": str(assets_dir() / T2I), "device": "cpu"},
        "data": {"prompts": str(prompts)},
        "sample": {"resolution": IMAGE_SIZE, "num_steps": 10, "max_sequence_length": TEXT_MAX_LENGTH},
        "reward": {"components": reward_components()},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    weights = assets_dir() / T2I / "transformer"
    save_checkpoint(run / "checkpoints", 3,
                    lambda d: shutil.copytree(weights, d / "trainable" / "transformer"))
    return run


def test_a_run_dir_renders_its_checkpoint_like_the_model_it_holds(tmp_path, shapes_run):
    """Same weights, seeds and settings: a run dir's newest checkpoint gives the model dir's images."""
    from PIL import Image

    from slas.eval.runner import plan_geneval, run_geneval

    run = _fake_run(tmp_path)
    meta = write_jsonl(tmp_path / "meta.jsonl", one_per_tag()[:2])
    plan = plan_geneval(run, metadata=meta, images_per_prompt=1)
    assert plan.source.label == "shapes/iter_000003" and plan.source.checkpoint.name == "iter_000003"
    _, rows = run_geneval(plan, tmp_path / "out", progress=False)
    base, _ = read_outputs(shapes_run[0])
    for got, want in zip(rows, base[: len(rows)], strict=True):
        assert np.array_equal(np.asarray(Image.open(got["image"])), np.asarray(Image.open(want["image"])))


def test_set_overrides_the_sample_settings_of_a_model_dir():
    from slas.eval.runner import resolve_checkpoint

    src = resolve_checkpoint(assets_dir() / T2I, ["sample.num_steps=4"])
    assert (src.model.family, src.sample.num_steps, src.sample.resolution) == ("flux", 4, 32)


@pytest.mark.parametrize(("args", "needle"), [
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint: /nonexistent/ckpt does not exist"),
    (["--detector", "yolo"], "--detector: 'yolo' is not a detector"),
    (["--set", "rl.power=3"], "--set rl.power=3: a model dir takes only"),
    (["--detector", "mask2former", "--detector-model", "/nonexistent/m2f", "--clip-model", "/x"],
     "hf download facebook/mask2former-swin-small-coco-instance"),
    (["--images-per-prompt", "0"], "--images-per-prompt must be >= 1"),
])
def test_bad_input_fails_in_one_line_before_any_model_loads(tmp_path, monkeypatch, args, needle):
    import slas.policies

    monkeypatch.setattr(slas.policies, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    base = {"--checkpoint": str(assets_dir() / T2I), "--output": str(tmp_path / "out")}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = [x for k, v in {**base, **given}.items() for x in (k, v)]
    result = run_eval("geneval", *argv)
    assert result.exit_code == 2
    err = error_text(result)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("row", "needle"), [
    ({"prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}, "no 'tag' field"),
    ({"tag": "single_object", "prompt": "a photo of a circle"}, "no 'include' field"),
    ({"tag": "single_object", "prompt": "a circle", "include": []}, "'include' must be a non-empty list"),
    ({"tag": "novel", "prompt": "a circle", "include": [{"class": "circle", "count": 1}]}, "not a GenEval tag"),
    ({"tag": "counting", "prompt": "circles", "include": [{"class": "circle"}]}, "an integer 'count'"),
])
def test_bad_metadata_rows_fail_in_one_line_naming_the_line(tmp_path, monkeypatch, row, needle):
    import slas.policies

    monkeypatch.setattr(slas.policies, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    meta = write_jsonl(tmp_path / "meta.jsonl", [one_per_tag()[0], row])
    result = run_eval("geneval", "--checkpoint", assets_dir() / T2I, "--metadata", meta, "--output", tmp_path / "o")
    assert result.exit_code == 2
    err = error_text(result)
    assert len(err.splitlines()) == 1 and f"{meta} line 2" in err and needle in err, err


# ---------------------------------------------------------------------------------------------- mask2former

GENEVAL_FILE = Path(__file__).resolve().parents[1] / "data" / "geneval" / "evaluation_metadata.jsonl"


def real_prompts_one_per_tag() -> list[dict]:
    """The first of GenEval's 553 prompts of each tag."""
    rows = [json.loads(line) for line in GENEVAL_FILE.read_text().splitlines()]
    return [next(r for r in rows if r["tag"] == tag) for tag in GENEVAL_TAGS]


@pytest.fixture(scope="module")
def mask2former_run(tmp_path_factory):
    """The shapes model rendering six real GenEval prompts, judged by a tiny random Mask2Former made confident
    about the class of the first ``colors`` prompt (so boxes, thresholds and CLIP colours all run) and a tiny CLIP."""
    from slas.testing.tiny_clip import save_tiny_hf_clip
    from slas.testing.tiny_detectors import save_tiny_mask2former

    tmp = tmp_path_factory.mktemp("geneval_m2f")
    records = real_prompts_one_per_tag()
    target = next(r for r in records if r["tag"] == "colors")["include"][0]["class"]
    det = save_tiny_mask2former(tmp / "m2f", confident=target)
    clip = save_tiny_hf_clip(tmp / "clip")
    meta = write_jsonl(tmp / "meta.jsonl", records)
    out = tmp / "out"
    result = run_eval("geneval", "--checkpoint", assets_dir() / T2I, "--metadata", meta, "--images-per-prompt", 1,
                      "--detector", "mask2former", "--detector-model", det, "--clip-model", clip, "--output", out)
    return out, result, records, target


def test_mask2former_end_to_end_on_tiny_weights(mask2former_run):
    from slas.eval.detectors import COLORS, MAX_OBJECTS

    out, result, records, target = mask2former_run
    assert result.exit_code == 0, error_text(result)
    rows, summary = read_outputs(out)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in records]
    assert all(set(r) >= ROW_KEYS for r in rows)
    check_summary(rows, summary)
    assert set(summary) == {"overall", *GENEVAL_TAGS}
    assert f"Overall score (avg. over tasks): {summary['overall']:.5f}" in result.stdout
    colored = next(r for r in rows if r["tag"] == "colors")
    assert colored["detections"], "the confident tiny detector finds its class"
    for d in colored["detections"]:
        assert d["class"] == target and d["color"] in COLORS and d["score"] > 0.3
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32  # boxes in the image's own pixels
    assert all(len(r["detections"]) <= MAX_OBJECTS for r in rows)
    assert max(d["score"] for d in colored["detections"]) < 0.9  # the tiny model's confidences are ~0.5 ...
    assert next(r for r in rows if r["tag"] == "counting")["detections"] == []  # ... below counting's 0.9


def test_mask2former_defaults_to_geneval_553_prompts(mask2former_run):
    from slas.eval.runner import plan_geneval

    tmp = Path(mask2former_run[0]).parent
    plan = plan_geneval(assets_dir() / T2I, detector="mask2former",
                        detector_options={"detector_model": tmp / "m2f", "clip_model": tmp / "clip"})
    assert len(plan.records) == 553 and plan.metadata_file == str(GENEVAL_FILE)


def test_mask2former_refuses_classes_its_id2label_lacks(tmp_path, mask2former_run):
    from slas.eval.detectors import DetectorError, check_classes

    det = Path(mask2former_run[0]).parent / "m2f"
    row = {"tag": "single_object", "prompt": "a photo of a unicorn", "include": [{"class": "unicorn", "count": 1}]}
    with pytest.raises(DetectorError, match="'unicorn'"):
        check_classes("mask2former", {"detector_model": det}, [row])
    check_classes("mask2former", {"detector_model": det}, real_prompts_one_per_tag())  # GenEval's spellings


def test_keep_objects_follows_geneval_threshold_cap_and_overlap():
    from slas.eval.detectors import keep_objects

    boxes = [(0, 0, 9, 9), (0, 0, 9, 9), (20, 20, 29, 29)]
    assert keep_objects([0.5, 0.8, 0.2], boxes, 0.3) == [1, 0]  # above threshold, most confident first
    assert keep_objects([0.5, 0.8, 0.6], boxes, 0.3, max_overlap=0.5) == [1, 2]  # the duplicate box goes
    assert keep_objects([0.9] * 20, [(i, 0, i + 1, 1) for i in range(20)], 0.3) == list(range(16))


def test_top_count_judges_only_the_most_confident_objects():
    """GenEval colours only the ``count`` most confident objects of a class: a weak wrong-coloured one
    behind a strong right-coloured one does not fail a colour prompt, and vice versa."""
    from slas.eval.detectors import ScoredObject

    rec = {"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, "color": "red"}]}
    box = (0.0, 0.0, 5.0, 5.0)
    strong_red = [ScoredObject("car", "red", box, 0.9), ScoredObject("car", "blue", box, 0.4)]
    strong_blue = [ScoredObject("car", "blue", box, 0.9), ScoredObject("car", "red", box, 0.4)]
    assert evaluate(rec, strong_red, top_count=True)[0]
    assert not evaluate(rec, strong_blue, top_count=True)[0]
    assert evaluate(rec, strong_blue)[0]  # the shapes judge's rule counts any red car
