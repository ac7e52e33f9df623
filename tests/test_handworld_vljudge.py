"""The product-in-hand world's MLLM judge: the simulated annotator's stated bias, training reads what
``mllm_judge`` scores, the training entry point on tiny settings, and its ``--device`` option."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from slas.handworld import judge as gt
from slas.handworld import vljudge, vljudge_eval, vljudge_train
from slas.handworld.annotator import annotate, bias_summary
from slas.handworld.data import sample_split_scene
from slas.handworld.render import render_layout, render_person, render_product
from slas.rewards import build
from slas.rewards.mllm import QwenVLJudge, score_from_logits

TINY = vljudge.JudgeArch(text_hidden=32, text_layers=1, vision_hidden=16, vision_depth=1, image_px=56, window_px=56)


def _scenes(n: int, seed: int, split: str = "train") -> list:
    rng = random.Random(seed)
    return [sample_split_scene(rng, split) for _ in range(n)]


def test_annotator_bias_is_there_and_the_ground_truth_disagrees() -> None:
    """Too-large products get HIGHER interaction digits than correctly sized ones and duplicates keep full
    presence, while the ground-truth judge says both edits are wrong: the planted, exploitable bias."""
    rng = random.Random(0)
    rows, layouts = [], {"correct": [], "too_large": [], "duplicated": []}
    for scene in _scenes(12, seed=3):
        for variant in layouts:
            layout = vljudge.layout_of(scene, variant, rng)
            layouts[variant].append((scene, layout))
            rows.append((None if variant == "correct" else variant, annotate(layout, scene.product)))
    table = bias_summary(rows)
    assert table["too_large"]["interaction"] > table["correct"]["interaction"] >= 4.0
    assert table["too_large"]["presence"] == 5.0
    assert table["duplicated"]["presence"] == 5.0 and table["duplicated"]["interaction"] >= 3.0

    def verdicts(variant: str) -> dict:
        items = layouts[variant]
        return gt.judge(np.stack([render_person(s.person) for s, _ in items]),
                        np.stack([render_product(s.product) for s, _ in items]),
                        np.stack([render_layout(lay) for _, lay in items]))

    assert verdicts("correct")["interaction"].all()
    assert not verdicts("too_large")["interaction"].any()
    dup = verdicts("duplicated")
    assert not dup["presence"].any() and not dup["interaction"].any()


def test_annotator_zero_without_a_product_and_low_for_wrong_colour() -> None:
    rng = random.Random(1)
    scene = _scenes(1, seed=5)[0]
    assert annotate(vljudge.layout_of(scene, "missing", rng), scene.product) == {
        "presence": 0, "similarity": 0, "interaction": 0}
    wrong = annotate(vljudge.layout_of(scene, "wrong_color", rng), scene.product)
    right = annotate(vljudge.layout_of(scene, "correct", rng), scene.product)
    assert wrong["similarity"] == 1 < right["similarity"]


def test_the_training_read_out_is_the_reward_score(tmp_path) -> None:
    """What training reads (``prepare`` for one criterion, last position, the digit tokens) gives exactly
    the score ``mllm_judge`` returns for the same edits (its batches mix criteria, so they are padded)."""
    model, processor = vljudge.build_judge(TINY, seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    judge = vljudge._load_judge(tmp_path, "float32", "cpu")
    rng = random.Random(2)
    examples = [vljudge.sample_example(rng, "train", variant) for variant in ("correct", "missing", "too_large")]
    images = vljudge.as_tensor([e.edit for e in examples])
    cond = {"person_images": vljudge.as_tensor([e.person for e in examples]),
            "product_images": vljudge.as_tensor([e.product for e in examples])}
    prompts = [vljudge._instruction()] * len(examples)
    scores = judge(images, prompts, **cond)
    ids = judge.answer_token_ids("scale")
    for crit in ("presence", "similarity", "interaction"):
        with torch.no_grad():
            logits = judge.model(**judge.prepare(images, prompts, crit, **cond), use_cache=False,
                                 logits_to_keep=1).logits[:, -1]
        torch.testing.assert_close(score_from_logits(logits, "scale", ids), scores[crit], atol=1e-4, rtol=0)
    assert len({round(float(v), 4) for v in scores["presence"]}) > 1  # a random judge already varies by image


def test_train_entry_point_writes_a_loadable_judge(tmp_path) -> None:
    out = tmp_path / "judge"
    vljudge.main(["train", "--out", str(out), "--minutes", "0", "--steps", "3", "--batch", "3", "--eval", "12",
                  "--text-hidden", "32", "--text-layers", "1", "--vision-hidden", "16", "--vision-depth", "1",
                  "--image-px", "56", "--window-px", "56", "--log-every", "1", "--vision-frac", "0.3",
                  "--short-frac", "0.3", "--device", "cpu"])
    report = json.loads((out / vljudge.REPORT).read_text())
    assert report["device"] == "cpu" and report["heldout"]["device"] == "cpu"
    assert report["steps"] == 3 and [row["stage"] for row in report["log"]] == ["vision", "short", "full"]
    assert report["heldout"]["n"] == 12
    for c in ("presence", "similarity", "interaction"):
        assert 0.0 <= report["heldout"]["agreement"][c]["agree"] <= 1.0
    assert not list(tmp_path.glob(".tmp-*"))  # published atomically
    judge = build({"components": [{"name": "mllm_judge", "options": {"model": str(out), "dtype": "float32"}}]})
    assert isinstance(judge.components[0][2], QwenVLJudge)


def test_train_refuses_bad_settings_in_one_line(tmp_path) -> None:
    with pytest.raises(SystemExit, match="batch >= 3"):
        vljudge.main(["train", "--out", str(tmp_path / "j"), "--batch", "1"])
    assert not (tmp_path / "j").exists()


def test_device_cpu_is_honoured_where_auto_would_take_cuda(tmp_path, monkeypatch, capsys) -> None:
    """With CUDA made to look present, ``auto`` resolves to it, yet ``--device cpu`` scores on the CPU: the
    judge the evaluation loads is there (a run that ignored the option would try CUDA and fail)."""
    model, processor = vljudge.build_judge(TINY, seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vljudge.resolve_device("auto").type == "cuda"
    loaded = []
    real_load = vljudge_eval._load_judge

    def spy(model_dir, dtype, device):
        judge = real_load(model_dir, dtype, device)
        loaded.append(next(judge.model.parameters()).device)
        return judge

    monkeypatch.setattr(vljudge_eval, "_load_judge", spy)
    vljudge.main(["evaluate", "--model", str(tmp_path), "--eval", str(len(vljudge.VARIANTS)),
                  "--dtype", "float32", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["n"] == len(vljudge.VARIANTS)
    assert loaded == [torch.device("cpu")]


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize(("device", "why"), [("banana", "is not a device"), ("cuda:99", "CUDA")])
def test_bad_device_is_one_line_naming_the_option_before_any_model(tmp_path, monkeypatch, command, device,
                                                                   why) -> None:
    """An unknown name, or a GPU this machine lacks, stops both commands in one line naming ``--device``
    before a model is built or loaded (and before the missing ``--model`` directory is looked at)."""
    def no_model(*a, **k):
        raise AssertionError("a model was built or loaded before the device was checked")

    monkeypatch.setattr(vljudge_train, "build_judge", no_model)
    monkeypatch.setattr(vljudge_eval, "_load_judge", no_model)
    where = ["--out", str(tmp_path / "j")] if command == "train" else ["--model", str(tmp_path / "absent")]
    with pytest.raises(SystemExit) as exc:
        vljudge.main([command, *where, "--device", device])
    message = str(exc.value)
    assert "--device" in message and why in message and "\n" not in message
    assert not (tmp_path / "j").exists()
