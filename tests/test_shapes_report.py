"""The demo's statistics and report text (slas.shapes.report), on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from slas.shapes import report
from slas.shapes.demo import DemoPlan, balanced_expand


def test_judge_se_is_binomial_per_tag_and_combined_for_the_overall():
    tags = ["a"] * 4 + ["b"] * 2
    verdicts = [True, True, False, False, True, True]
    se = report.judge_se(tags, verdicts)
    se_a = math.sqrt((4 * 0.25) / 3 / 4)  # sample std of [1, 1, 0, 0] over sqrt 4
    assert se["a"] == pytest.approx(se_a) and se["b"] == 0.0
    assert se["overall"] == pytest.approx(math.sqrt(se_a**2 + 0.0) / 2)


def test_paired_gain_uses_per_image_differences():
    tags = ["a"] * 4
    before = [False, False, True, True]
    after = [True, False, True, True]  # one image fixed, nothing broken
    gain = report.paired_gain(tags, before, after)
    assert gain["a"][0] == pytest.approx(0.25) and gain["overall"][0] == pytest.approx(0.25)
    assert gain["a"][1] == pytest.approx(math.sqrt((0.75**2 + 3 * 0.25**2) / 3 / 4))
    same = report.paired_gain(tags, before, before)
    assert same["overall"] == (0.0, 0.0)


def test_balanced_expand_gives_every_tag_about_the_same_images():
    recs = [{"tag": "x", "prompt": f"x{i}"} for i in range(3)] + [{"tag": "y", "prompt": f"y{i}"} for i in range(10)]
    expanded, seeds = balanced_expand(recs, 12, seed=1)
    counts = {t: sum(r["tag"] == t for r in expanded) for t in "xy"}
    assert counts == {"x": 12, "y": 20}  # 4 images per x prompt; y prompts keep at least one (ceil 12/10 = 2)
    assert len(set(seeds)) == len(seeds)


def _run(before: list[bool], after: list[bool], rewards: list[float], proxy: tuple[float, float]) -> dict:
    tags = ["single_object"] * len(before)

    def ev(it, verdicts, p):
        return {"iteration": it, "tags": tags, "verdicts": verdicts,
                "judge": {"overall": sum(verdicts) / len(verdicts), "single_object": sum(verdicts) / len(verdicts)},
                "judge_se": report.judge_se(tags, verdicts), "proxy": {"total": p, "vividness": 0.3}}

    return {"evals": [ev(0, before, proxy[0]), ev(len(rewards), after, proxy[1])],
            "metrics": [{"step": i + 1, "reward/total/mean": r} for i, r in enumerate(rewards)], "groups": []}


def test_report_says_who_gained_and_whether_it_is_beyond_noise(tmp_path):
    before = [False] * 50 + [True] * 50
    runs = {
        "dancegrpo": _run(before, [False] * 60 + [True] * 40, [0.5, 0.6, 0.7, 0.8], (0.5, 0.6)),  # proxy up, judge down
        "slas": _run(before, [False] * 30 + [True] * 70, [0.5, 0.55, 0.6, 0.65], (0.5, 0.55)),
    }
    plan = DemoPlan(iterations=4, eval_images_per_tag=100)
    rep = report.build_report(runs, 12.0, plan)
    assert rep["eval_images"] == 100
    assert rep["methods"]["slas"]["train_reward"] == {"first": 0.5, "last": 0.65}
    assert rep["methods"]["slas"]["judge_gain"]["overall"]["mean"] == pytest.approx(0.2)
    assert rep["difference"]["judge_after"]["mean"] == pytest.approx(0.3)
    text = report.what_this_shows(rep)
    assert "dancegrpo moved the held-out judge by -0.100" in text and "gamed the proxy" in text
    assert "slas moved the held-out judge by +0.200" in text and "beyond noise" in text
    assert "slas ahead beyond noise" in text
    report.write_report(tmp_path, rep, plan, {"report": str(tmp_path / "report.md")})
    md = (tmp_path / "report.md").read_text()
    assert "| slas | **overall** | 0.500 ± 0.050 | 0.700 ± 0.046 | +0.200 ± 0.040 |" in md


def test_plots_and_labelled_grid_draw(tmp_path):
    before = [False, True] * 4
    runs = {"dancegrpo": _run(before, before, [0.1] * 8, (0.5, 0.5)), "slas": _run(before, before, [0.2] * 8, (0.5, 0.6))}
    runs["slas"]["groups"] = [(0.01, 3.0), (0.1, 1.0)]
    report.plot_curves(runs, tmp_path / "c.png")
    report.plot_mechanism(runs, tmp_path / "m.png")
    grid = report.labelled_grid(torch.rand(3, 3, 8, 8), ["a photo of a red circle"] * 3, [True, False, True], per_row=2)
    assert grid.size[0] == 2 * (8 * 4 + 12)
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "m.png").stat().st_size > 0
