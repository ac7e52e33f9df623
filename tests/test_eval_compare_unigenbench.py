"""``slas eval compare`` on UniGenBench++ results: hand-made result folders (no model), paired by (prompt, image,
test point), dimensions resampled within themselves, overall over all prompts at once, and the refusals."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import slas.eval.unigenbench as ugb
from slas.cli.common import SlasTyper
from slas.cli.eval import app as eval_app
from slas.eval.compare import CompareError, compare, read_results, to_markdown
from slas.platform.db import open_store
from slas.testing.cli import ENV, cli_runner, error_text

# Four prompts, hand-picked test points: Style x3, World Knowledge x2, Attribute x3, Action x2, Relationship x1.
ITEMS = [
    (0, "a cat in the style of Monet", ("Style", "World Knowledge", "Attribute - Color")),
    (1, "a dog jumping over a red box", ("Action - Animal", "Attribute - Color", "Relationship - Inclusion")),
    (2, "the Eiffel tower in ukiyo-e", ("Style", "World Knowledge")),
    (3, "two running children, watercolour", ("Action - Full-body (Character/Anthropomorphic)", "Style",
                                              "Attribute - Quantity")),
]
FIVE = ("Style", "World Knowledge", "Attribute - Color", "Action - Animal", "Relationship - Inclusion")


def run_eval(*args: object):
    root = SlasTyper()
    root.add_typer(eval_app, name="eval")
    return cli_runner().invoke(root, ["eval", *(str(a) for a in args)], env=ENV)


def write_unigen(root: Path, items, marks, *, images: int = 2, prompt_set: str | None = "short",
                 protocol: str | None = "testpoint", output: bool = False) -> Path:
    """``root/results.jsonl`` as ``slas eval unigenbench`` writes it: one row per image, ``marks(p, k, j)`` the
    verdict (1, 0 or None) of test point j of image k of the p-th item; ``prompt_set``/``protocol`` None
    writes rows as the command did before it recorded them."""
    mark = (lambda p, k, j: marks[p, k, j]) if isinstance(marks, dict) else marks
    rows = []
    for p, (index, prompt, points) in enumerate(items):
        for k in range(images):
            tps = [{"testpoint": tp, "dimension": ugb.dimension_of(tp), "description": "d",
                    "score": None if mark(p, k, j) is None else float(mark(p, k, j)), "verdict": mark(p, k, j)}
                   for j, tp in enumerate(points)]
            row = {"index": index, "prompt": prompt, "image": str(root / "images" / f"{index}_{k}.png"),
                   "seed": ugb.REFERENCE_SEED + k, "theme": ""}
            row |= {"prompt_set": prompt_set} if prompt_set else {}
            row |= {"protocol": protocol} if protocol else {}
            row |= {"testpoints": tps} | ({"output": "<score>[...]</score>"} if output else {})
            rows.append(row)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def shipped(name: str, n: int, step: int = 1) -> list[tuple[int, str, tuple[str, ...]]]:
    """``n`` prompts of a shipped set, every ``step``-th (the sets are ordered by theme: step 5 or 20 reaches all
    ten dimensions), as ``write_unigen`` items."""
    items = ugb.load_prompt_set(ugb.prompt_file(name))[0][::step][:n]
    return [(it.index, it.prompt, it.testpoints) for it in items]


def random_marks(items, images: int = 2, p: float = 0.5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {(i, k, j): int(rng.random() < p) for i, (_, _, pts) in enumerate(items) for k in range(images)
            for j in range(len(pts))}


def by_tag(c) -> dict:
    return {r.tag: r for r in c.rows}


def test_dimension_scores_are_the_benchmarks_own_numbers(tmp_path):
    """Per dimension: met over judged test points pooled over images (an unjudged one counts in neither);
    overall: the mean of the dimensions; the same numbers as the command's summary.json."""
    def marks(p, k, j):  # image 0 meets everything; image 1 only its first test point; p1 k1 j2 unjudged
        return None if (p, k, j) == (1, 1, 2) else int(k == 0 or j == 0)

    root = write_unigen(tmp_path / "a", ITEMS, marks)
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    c = compare([read_results(root), read_results(root)])
    scores = {r.tag: r.scores[0] for r in c.rows}
    assert [r.tag for r in c.rows] == ["Style", "World Knowledge", "Attribute", "Action", "Relationship", "overall"]
    assert scores == pytest.approx(ugb.summarize(rows))
    assert scores["Style"] == pytest.approx(float(Fraction(2 + 2 + 1, 6)))   # first of p0, p2; second of p3
    assert scores["Relationship"] == pytest.approx(1.0)                       # p1's third: met, then unjudged
    assert scores["Attribute"] == pytest.approx(float(Fraction(1 + 1 + 1, 6)))  # p0 c, p1 c, p3 q: on image 0
    assert {r.tag: r.prompts for r in c.rows} == {"Style": 3, "World Knowledge": 2, "Attribute": 3, "Action": 2,
                                                  "Relationship": 1, "overall": 4}
    assert c.images == 8 and c.units == 2 * sum(len(pts) for *_, pts in ITEMS)


def test_an_identical_pair_differs_by_zero_with_a_zero_interval(tmp_path):
    items = shipped("short", 40)
    marks = random_marks(items)
    a = read_results(write_unigen(tmp_path / "a", items, marks))
    b = read_results(write_unigen(tmp_path / "b", items, marks))
    for row in compare([a, b]).rows:
        assert row.diffs == (0.0,) and row.lows == (0.0,) and row.highs == (0.0,), row
        assert row.lows[0] <= 0 <= row.highs[0]


def test_a_run_better_on_every_unit_has_intervals_above_zero(tmp_path):
    """B meets every test point A meets and, on each of A's misses, wins with probability 0.4: never worse,
    so every dimension's and overall's interval lies above 0, around the true gain."""
    items = shipped("short", 120, step=5)
    marks = random_marks(items, p=0.5, seed=1)
    rng = np.random.default_rng(2)
    better = {key: 1 if v or rng.random() < 0.4 else 0 for key, v in marks.items()}
    a = read_results(write_unigen(tmp_path / "a", items, marks), "a")
    b = read_results(write_unigen(tmp_path / "b", items, better), "b")
    c = compare([a, b], seed=3)
    assert len(c.rows) == 11  # the ten dimensions and overall
    for row in c.rows:
        assert row.diffs[0] > 0 and 0 < row.lows[0] <= row.diffs[0] <= row.highs[0], row
    everywhere = compare([a, read_results(write_unigen(tmp_path / "c", items, lambda *_: 1), "c")])
    assert all(r.lows[0] > 0 for r in everywhere.rows)  # the literal case: B = 1 where A is 0 or 1


def test_overall_is_resampled_over_all_prompts_because_dimensions_share_them(tmp_path):
    """Every prompt tests the same five dimensions and every image is wholly met or not: the dimensions carry
    the same information, so overall is no better known than one dimension (independent draws per dimension
    would shrink its interval by about 1/sqrt(5))."""
    items = [(i, f"prompt {i}", FIVE) for i in range(60)]
    rng = np.random.default_rng(4)
    a_img = rng.random((60, 2)) < 0.5
    b_img = np.where(rng.random((60, 2)) < 0.3, ~a_img, a_img)  # a noisy, mostly unchanged B
    a = read_results(write_unigen(tmp_path / "a", items, lambda p, k, j: int(a_img[p, k])))
    b = read_results(write_unigen(tmp_path / "b", items, lambda p, k, j: int(b_img[p, k])))
    rows = by_tag(compare([a, b], seed=5))
    widths = {tag: r.highs[0] - r.lows[0] for tag, r in rows.items()}
    dims = [widths[t] for t in widths if t != "overall"]
    assert min(dims) > 0.1
    assert widths["overall"] > 0.8 * float(np.median(dims)), widths
    assert rows["overall"].diffs[0] == pytest.approx(rows["Style"].diffs[0])


def test_older_rows_are_told_apart_by_their_prompts_and_kept_output(tmp_path):
    """Rows written before the prompt set and protocol were recorded: the set whose prompts they match, the
    benchmark protocol when the evaluator's answer was kept."""
    short = read_results(write_unigen(tmp_path / "s", shipped("short", 3), lambda *_: 1, prompt_set=None,
                                      protocol=None))
    long = read_results(write_unigen(tmp_path / "l", shipped("long", 3), lambda *_: 1, prompt_set=None,
                                     protocol=None, output=True))
    assert (short.benchmark, short.prompt_set, short.protocol) == ("unigenbench", "short", "testpoint")
    assert (long.prompt_set, long.protocol) == ("long", "benchmark")
    made_up = read_results(write_unigen(tmp_path / "m", ITEMS, lambda *_: 1, prompt_set=None, protocol=None))
    assert made_up.prompt_set is None
    with pytest.raises(CompareError, match=r"is on UniGenBench\+\+'s short prompts, .* on its long prompts"):
        compare([short, long])


def test_the_command_prints_the_dimension_table(tmp_path):
    items = shipped("short", 30, step=20)
    a = write_unigen(tmp_path / "base", items, random_marks(items, seed=1))
    b = write_unigen(tmp_path / "tuned", items, random_marks(items, seed=2))
    out = tmp_path / "compare.md"
    result = run_eval("compare", a, b, "--output", out, "--resamples", 300)
    assert result.exit_code == 0, error_text(result)
    table = out.read_text()
    assert table in result.stdout
    assert table.splitlines()[0] == f"| dimension | prompts | {a} | {b} | {b} - {a} (95% CI) |"
    assert table.splitlines()[2].startswith("| Style | ")
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + 10 + 1
    assert "| **overall** | 30 |" in table
    assert "UniGenBench++ short prompts, testpoint judge protocol: 60 images (" in table and "300 resamples" in table


def test_the_command_reads_a_unigenbench_evaluation_of_the_job_store(tmp_path):
    items = shipped("long", 5)
    a = write_unigen(tmp_path / "a", items, random_marks(items, seed=1), prompt_set="long")
    b = write_unigen(tmp_path / "b", items, random_marks(items, seed=2), prompt_set="long")
    with open_store() as store:
        row = store.add_eval(checkpoint="/r/model", benchmark="unigenbench", scores={"overall": 0.5}, n_images=10,
                             settings={"prompt_set": "long", "protocol": "testpoint"},
                             results_path=b / "results.jsonl")
    result = run_eval("compare", a, row.id, "--resamples", 200)
    assert result.exit_code == 0, error_text(result)
    assert f"| eval {row.id} (model) - {a} (95% CI) |" in result.stdout and "| dimension |" in result.stdout


def geneval_results(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "results.jsonl").write_text(json.dumps({"tag": "counting", "prompt": "two cats", "seed": 0, "correct": True,
                                                    "image": str(root / "images/00000/samples/0000.png")}) + "\n")
    return root


@pytest.mark.parametrize(("kind", "needle"), [
    ("geneval", "not the same evaluation: {A} is a GenEval result, {B} a UniGenBench++ one"),
    ("long", "not the same evaluation: {A} is on UniGenBench++'s long prompts, {B} on its short prompts"),
    ("benchmark", "not the same evaluation: {A} was judged with the benchmark protocol, {B} with the testpoint "
                  "protocol"),
])
def test_mixed_evaluations_are_refused_in_one_line_naming_both(tmp_path, kind, needle):
    items = shipped("short", 3)
    b = write_unigen(tmp_path / "B", items, lambda *_: 1)
    if kind == "geneval":
        a = geneval_results(tmp_path / "A")
    else:
        a = write_unigen(tmp_path / "A", shipped(kind, 3) if kind == "long" else items, lambda *_: 0,
                         protocol=kind if kind == "benchmark" else "testpoint", prompt_set=kind if kind == "long"
                         else "short")
    result = run_eval("compare", a, b)
    assert result.exit_code == 2, result.stdout
    err = error_text(result)
    assert len(err.splitlines()) == 1 and needle.format(A=a, B=b) in err, err


@pytest.mark.parametrize(("change", "needle"), [
    ("fewer images", "{A} has 33 test points, {B} 22; {B} lacks prompt 0 image 2 test point 0"),
    ("other test point", "prompt 0 image 0 test point 2 has test point 'Attribute - Color' in {A} but "
                         "'Attribute - Shape' in {B}"),
])
def test_different_units_are_refused_naming_the_unit(tmp_path, change, needle):
    a = write_unigen(tmp_path / "A", ITEMS, lambda *_: 1, images=3)
    other = [(0, ITEMS[0][1], ("Style", "World Knowledge", "Attribute - Shape")), *ITEMS[1:]]
    b = write_unigen(tmp_path / "B", other if change == "other test point" else ITEMS, lambda *_: 1,
                     images=2 if change == "fewer images" else 3)
    with pytest.raises(CompareError) as err:
        compare([read_results(a, str(a)), read_results(b, str(b))])
    assert needle.format(A=a, B=b) in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda r: r["testpoints"][1].update(verdict=2), "line 2: test point 1 needs a 'testpoint' and a 'verdict'"),
    (lambda r: r.update(image="/x/7_1.png"), "line 2: no image index: 'image' is not .../0_<image>.png"),
    (lambda r: r["testpoints"][0].update(testpoint="Vibes"), "line 2: test point 'Vibes' belongs to no"),
    (lambda r: r.update(prompt_set="long"), "rows of more than one prompt_set (long, short)"),
])
def test_bad_unigenbench_rows_are_named_with_their_line(tmp_path, edit, needle):
    root = write_unigen(tmp_path / "a", ITEMS, lambda *_: 1)
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    edit(rows[1])
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CompareError) as err:
        read_results(root)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_table_is_reproducible(tmp_path):
    items = shipped("short", 20)
    a = read_results(write_unigen(tmp_path / "a", items, random_marks(items, seed=1)))
    b = read_results(write_unigen(tmp_path / "b", items, random_marks(items, seed=2)))
    assert to_markdown(compare([a, b], seed=9)) == to_markdown(compare([a, b], seed=9))
