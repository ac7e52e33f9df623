"""``slas eval compare``: paired bootstrap intervals on hand-built GenEval results, and the command around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slas.cli.common import SlasTyper
from slas.cli.eval import app as eval_app
from slas.eval.compare import CompareError, compare, read_results, to_markdown
from slas.eval.geneval import summarize
from slas.platform.db import open_store
from slas.testing.cli import ENV, cli_runner, error_text

TAGS = ("single_object", "counting", "position")


def run_eval(*args: object):
    root = SlasTyper()
    root.add_typer(eval_app, name="eval")
    return cli_runner().invoke(root, ["eval", *(str(a) for a in args)], env=ENV)


def verdicts(prompts_per_tag: int = 20, images: int = 4, p: float = 0.5, seed: int = 0) -> np.ndarray:
    """[prompts, images] random verdicts, prompts in tag blocks (TAGS order)."""
    return np.random.default_rng(seed).random((prompts_per_tag * len(TAGS), images)) < p


def write_results(root: Path, correct: np.ndarray, *, prompt_text: str = "prompt {p}", seed0: int = 0) -> Path:
    """``root/results.jsonl`` as ``slas eval geneval`` writes it, one row per (prompt, image)."""
    per_tag = len(correct) // len(TAGS)
    rows = []
    for p, hits in enumerate(correct):
        for k, ok in enumerate(hits):
            rows.append({"tag": TAGS[p // per_tag], "prompt": prompt_text.format(p=p), "seed": seed0 + p * 10 + k,
                         "image": str(root / "images" / f"{p:05d}" / "samples" / f"{k:04d}.png"),
                         "correct": bool(ok), "reason": "", "detections": []})
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def rows_by_tag(comparison) -> dict:
    return {r.tag: r for r in comparison.rows}


def test_an_identical_pair_differs_by_zero_with_a_zero_interval(tmp_path):
    correct = verdicts()
    a, b = write_results(tmp_path / "a", correct), write_results(tmp_path / "b", correct)
    c = compare([read_results(a), read_results(b)])
    assert [r.tag for r in c.rows] == [*TAGS, "overall"]
    for row in c.rows:
        assert row.diffs == (0.0,) and row.lows == (0.0,) and row.highs == (0.0,)
        assert row.scores[0] == row.scores[1]


def test_scores_are_genevals_own_numbers(tmp_path):
    """Per tag: the images' mean verdict; overall: the mean of the tags (what summary.json says)."""
    correct = verdicts(images=3, p=0.3)
    run = read_results(write_results(tmp_path / "a", correct))
    c = compare([run, run])
    expected = summarize([v.tag for v in run.verdicts.values()], [v.value > 0 for v in run.verdicts.values()])
    assert {r.tag: r.scores[0] for r in c.rows} == pytest.approx(expected)
    assert rows_by_tag(c)["overall"].prompts == len(correct) and rows_by_tag(c)["counting"].prompts == 20


def test_a_known_shift_lands_inside_the_interval_and_zero_outside(tmp_path):
    """B fixes one image in 40% of the prompts of every tag: +0.1 everywhere, exactly."""
    correct = np.zeros((40 * len(TAGS), 4), dtype=bool)
    correct[:, :2] = True  # every prompt: 2 of 4 images correct
    better = correct.copy()
    better[np.arange(len(correct)) % 5 < 2, 2] = True  # 2 prompts in 5 gain an image: +0.25 x 0.4 = +0.1
    c = compare([read_results(write_results(tmp_path / "a", correct)),
                 read_results(write_results(tmp_path / "b", better))], resamples=2000, seed=1)
    for row in c.rows:
        assert row.diffs[0] == pytest.approx(0.1)
        assert row.lows[0] < 0.1 < row.highs[0], row
        assert row.lows[0] > 0, row  # 40 prompts a tag tell +0.1 from no change
    overall, tag = rows_by_tag(c)["overall"], rows_by_tag(c)["counting"]
    assert overall.highs[0] - overall.lows[0] < tag.highs[0] - tag.lows[0]  # three tags pin overall tighter


def test_the_pairing_cancels_what_every_run_shares(tmp_path):
    """Hard prompts fail for both runs: the paired interval of a small, consistent gain excludes 0 even though
    each run's own score varies a lot between prompts."""
    rng = np.random.default_rng(3)
    easy = rng.random(len(TAGS) * 30) < 0.5
    a = np.repeat(easy[:, None], 4, axis=1)
    b = a.copy()
    b[::6, 0] = True  # one image better in every sixth prompt, never worse
    c = compare([read_results(write_results(tmp_path / "a", a)), read_results(write_results(tmp_path / "b", b))])
    assert rows_by_tag(c)["overall"].lows[0] >= 0


def test_the_bootstrap_is_reproducible_and_seeded(tmp_path):
    a = read_results(write_results(tmp_path / "a", verdicts(seed=1)))
    b = read_results(write_results(tmp_path / "b", verdicts(seed=2)))
    assert to_markdown(compare([a, b], seed=5)) == to_markdown(compare([a, b], seed=5))
    def bounds(seed):
        return [(r.lows, r.highs) for r in compare([a, b], seed=seed).rows]

    assert bounds(5) != bounds(6)


def test_three_runs_compare_each_to_the_first(tmp_path):
    runs = [read_results(write_results(tmp_path / n, verdicts(seed=s)), n) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    c = compare(runs)
    for row in c.rows:
        assert len(row.scores) == 3 and len(row.diffs) == 2
        assert row.diffs == pytest.approx((row.scores[1] - row.scores[0], row.scores[2] - row.scores[0]))
    table = to_markdown(c)
    assert table.splitlines()[0] == "| tag | prompts | a | b | c | b - a (95% CI) | c - a (95% CI) |"
    assert "| **overall** |" in table and "2000 resamples" in table


@pytest.mark.parametrize(("change", "needle"), [
    ({"images": 3}, "lacks prompt 0 image 3"),
    ({"prompt_text": "other {p}"}, "prompt 0 image 0 has prompt 'prompt 0' in"),
    ({"seed0": 1}, "has seed 0 in"),
])
def test_different_evaluations_are_refused_in_one_line(tmp_path, change, needle):
    images = change.pop("images", 4)
    a = read_results(write_results(tmp_path / "a", verdicts()))
    b = read_results(write_results(tmp_path / "b", verdicts(images=images), **change))
    with pytest.raises(CompareError, match="not the same evaluation") as err:
        compare([a, b])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_results_files_are_named_with_their_line(tmp_path):
    root = write_results(tmp_path / "a", verdicts())
    with (root / "results.jsonl").open("a") as fh:
        fh.write('{"tag": "counting", "prompt": "x", "image": "/somewhere/x.png", "correct": true}\n')
    with pytest.raises(CompareError, match=r"results.jsonl line 241: no \(prompt, image\) index"):
        read_results(root)
    with pytest.raises(CompareError, match=r"no results\.jsonl there"):
        read_results(tmp_path / "nowhere")


def test_compare_command_prints_and_writes_the_table(tmp_path):
    a = write_results(tmp_path / "base", verdicts(seed=1))
    b = write_results(tmp_path / "tuned", verdicts(seed=2))
    out = tmp_path / "reports" / "compare.md"
    result = run_eval("compare", a, b, "--output", out, "--resamples", 500)
    assert result.exit_code == 0, error_text(result)
    table = out.read_text()
    assert table in result.stdout and f"| {b} - {a} (95% CI) |" in table and "500 resamples" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(TAGS) + 1


def test_compare_command_reads_evaluations_of_the_job_store(tmp_path):
    a = write_results(tmp_path / "a", verdicts(seed=1))
    b = write_results(tmp_path / "b", verdicts(seed=2))
    with open_store() as store:
        job = store.create_job(name="run", config={}, run_dir="/r/run")
        row = store.add_eval(checkpoint="/r/run/checkpoints/iter_000004", iteration=4, job_id=job.id,
                             benchmark="geneval", scores={"overall": 0.5}, n_images=240,
                             results_path=b / "results.jsonl")
    result = run_eval("compare", a, row.id)
    assert result.exit_code == 0, error_text(result)
    assert f"eval {row.id} (run/iter_000004) - {a} (95% CI)" in result.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["only_one"], "needs at least two evaluations"),
    (["A", "B", "--resamples", "10"], "--resamples must be >= 100"),
    (["A", "B"], "A: no results.jsonl there"),
    (["B", "999"], "no evaluation with id 999"),
])
def test_compare_bad_input_is_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    write_results(tmp_path / "B", verdicts())
    result = run_eval("compare", *args)
    assert result.exit_code == 2
    err = error_text(result)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
