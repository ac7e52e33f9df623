"""``slas eval unigenbench``: the shipped prompt sets, the command end to end on the shapes model and a tiny
random Qwen2.5-VL judge, the aggregation on a hand-computed example, the benchmark protocol, and bad input."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from slas.cli.common import SlasTyper
from slas.cli.eval import app as eval_app
from slas.eval import unigenbench as ugb
from slas.shapes.assets import T2I, assets_dir
from slas.testing.cli import ENV, cli_runner, error_text

SHAPES = assets_dir() / T2I
TABLE_HEADER = ("| Model | Overall | Style | World Knowledge | Attribute | Action | Relationship | Compound | Grammar | "
                "Layout | Logical Reasoning | Text |")


def run_eval(*args: object):
    """``slas eval ARGS...`` through a root app holding only the eval group (as ``slas`` registers it)."""
    root = SlasTyper()
    root.add_typer(eval_app, name="eval")
    return cli_runner().invoke(root, ["eval", *(str(a) for a in args)], env=ENV)


def read_outputs(out: Path) -> tuple[list[dict], dict, dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text()), json.loads((out / "scores.json").read_text())


# ------------------------------------------------------------------------------------------- prompt sets


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_shipped_sets_hold_600_prompts_over_the_27_test_points(name):
    items, repaired = ugb.load_prompt_set(ugb.prompt_file(name))
    assert [it.index for it in items] == list(range(600))
    used = {tp for it in items for tp in it.testpoints}
    assert used == set(ugb.TESTPOINTS)
    assert {ugb.dimension_of(tp) for tp in used} == {n for n, _ in ugb.DIMENSIONS}
    assert repaired == ([] if name == "short" else [509])  # the long set's one missing comma


def test_the_long_set_is_the_unmodified_release_and_its_defect_is_repaired_on_load():
    raw = ugb.prompt_file("long").read_text(encoding="utf-8")
    assert '""Grammar - Negation"" ""Attribute - Color""' in raw  # shipped as released (CSV-quoted)
    items, _ = ugb.load_prompt_set(ugb.prompt_file("long"))
    assert items[509].testpoints[1:3] == ("Grammar - Negation", "Attribute - Color")
    assert len(items[509].testpoints) == len(items[509].descriptions) == 5


def _csv(tmp_path: Path, sub_dims: str, header: str = "index,prompt_en,sub_dims_en") -> Path:
    path = tmp_path / "set.csv"
    path.write_text(f'{header}\n0,a red fox,"{sub_dims}"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize(("sub_dims", "needle"), [
    ('{""Testpoints"": [""Style""], ""Testpoint Description"": [""ink""', "line 2: sub_dims_en is not JSON"),
    ('{""Testpoints"": [""Colour""], ""Testpoint Description"": [""red""]}', "unknown test point(s) ['Colour']"),
    ('{""Testpoints"": [""Style""], ""Testpoint Description"": []}', "must be 1 strings, one per test point"),
    ('[1, 2]', "sub_dims_en must be a JSON object"),
])
def test_a_malformed_row_is_one_line_naming_file_and_line(tmp_path, sub_dims, needle):
    with pytest.raises(ugb.UnigenbenchError) as err:
        ugb.load_prompt_set(_csv(tmp_path, sub_dims))
    assert needle in str(err.value) and "set.csv" in str(err.value) and "\n" not in str(err.value)


def test_a_csv_without_the_benchmark_columns_is_refused(tmp_path):
    with pytest.raises(ugb.UnigenbenchError, match=r"no column\(s\) \['prompt_en'\]"):
        ugb.load_prompt_set(_csv(tmp_path, "{}", header="index,prompt,sub_dims_en"))


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_qwen_vl) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("unigenbench") / "out"
    result = run_eval("unigenbench", "--checkpoint", SHAPES, "--prompts", "short", "--limit", 2,
                      "--images-per-prompt", 2, "--judge-model", tiny_qwen_vl, "--batch-size", 4, "--output", out)
    return out, result


def test_the_command_renders_judges_and_writes_the_benchmark_layout(cli_run):
    out, result = cli_run
    assert result.exit_code == 0, error_text(result)
    rows, summary, scores = read_outputs(out)
    items, _ = ugb.load_prompt_set(ugb.prompt_file("short"))
    assert [(r["index"], Path(r["image"]).name, r["seed"]) for r in rows] == [
        (0, "0_0.png", 3407), (0, "0_1.png", 3408), (1, "1_0.png", 3407), (1, "1_1.png", 3408)]
    for row in rows:
        item = items[row["index"]]
        assert Path(row["image"]).is_file() and Path(row["image"]).parent == out / "images"
        assert row["prompt"] == item.prompt
        assert (row["prompt_set"], row["protocol"]) == ("short", "testpoint")  # what slas eval compare pairs on
        assert [tp["testpoint"] for tp in row["testpoints"]] == list(item.testpoints)
        for tp in row["testpoints"]:
            assert 0.0 <= tp["score"] <= 1.0 and tp["verdict"] == int(tp["score"] > 0.5)
            assert tp["dimension"] == ugb.dimension_of(tp["testpoint"])
    assert summary == pytest.approx(ugb.summarize(rows))
    assert list(summary) == ["overall", *(n for n, _ in ugb.DIMENSIONS if n in summary)]
    assert summary["overall"] == pytest.approx(sum(list(summary.values())[1:]) / (len(summary) - 1))
    assert set(scores["primary_dimensions"]) == set(summary) - {"overall"}
    table = (out / "table.md").read_text()
    assert TABLE_HEADER in table and TABLE_HEADER in result.stdout
    assert f"| {SHAPES.name} | {100 * summary['overall']:.2f} | " in result.stdout


def test_the_testpoint_scores_are_the_judges_yes_no_logits(cli_run, tiny_qwen_vl):
    """Re-ask one (image, test point) question through the reward's judge: the same P(Yes) comes back."""
    from slas.rewards.mllm import QwenVLJudge, score_from_logits

    out, _ = cli_run
    row = read_outputs(out)[0][0]
    item = ugb.load_prompt_set(ugb.prompt_file("short"))[0][0]
    vl = QwenVLJudge(model=str(tiny_qwen_vl), device="cpu", dtype="bfloat16")
    message = [{"role": "user", "content": [vl.image_part(ugb.as_sent(Path(row["image"]))),
                                            {"type": "text", "text": ugb.testpoint_question(item, 1)}]}]
    logits = vl.first_token_logits(vl.encode([message]))
    want = score_from_logits(logits, "yesno", vl.answer_token_ids("yesno")).item()
    assert row["testpoints"][1]["score"] == pytest.approx(want, abs=1e-2)  # batched in bf16 with other queries
    question = ugb.testpoint_question(item, 1)
    assert "World Knowledge" in question and ugb.TESTPOINTS["World Knowledge"] in question
    assert item.descriptions[1] in question and question.endswith("Answer Yes or No.")


# ------------------------------------------------------------------------------------------- aggregation


class SeedPolicy:
    """Renders image j of every prompt black (j = 0) or white (j = 1), so a judge can tell them apart."""

    def generate(self, prompts, seeds, *, batch_size=8):
        return torch.stack([torch.full((3, 8, 8), float(s - ugb.REFERENCE_SEED)) for s in seeds])


def brightness_judge(images, items):
    """A black image meets every test point; a white one only the first of its prompt."""
    out = []
    for image, item in zip(images, items, strict=True):
        white = image.getpixel((0, 0))[0] > 127
        out.append({"testpoints": [{"score": float(v), "verdict": v}
                                   for v in ([1] + [0] * (len(item.testpoints) - 1) if white
                                             else [1] * len(item.testpoints))]})
    return out


def test_dimensions_pool_test_points_and_overall_is_their_mean(tmp_path, tiny_qwen_vl):
    plan = ugb.plan_unigenbench(SHAPES, judge_model=tiny_qwen_vl, limit=4, images_per_prompt=2, batch_size=3)
    assert [it.testpoints for it in plan.items] == [
        ("Style", "World Knowledge", "Attribute - Quantity"),
        ("Action - Hand (Character/Anthropomorphic)", "Relationship - Composition",
         "Action - Full-body (Character/Anthropomorphic)", "Style"),
        ("Attribute - Expression", "Relationship - Similarity", "World Knowledge"),
        ("Style", "Action - Animal", "Attribute - Material", "Attribute - Quantity", "Compound - Imagination"),
    ]
    summary, _ = ugb.run_unigenbench(plan, tmp_path, progress=False, load=lambda src: SeedPolicy(),
                                     judge_fn=brightness_judge)
    # Each test point is judged on 2 images: met on both when it is its prompt's first, else on the black one only.
    expected = {
        "Style": Fraction(2 + 1 + 2, 6),                      # first of p0 and p3, fourth of p1
        "World Knowledge": Fraction(1 + 1, 4),                # second of p0, third of p2
        "Attribute": Fraction(1 + 2 + 1 + 1, 8),              # p0 quantity, p2 expression (first), p3 x2
        "Action": Fraction(2 + 1 + 1, 6),                     # p1 hand (first), p1 full-body, p3 animal
        "Relationship": Fraction(1 + 1, 4),
        "Compound": Fraction(1, 2),
    }
    assert list(summary) == ["overall", *expected]  # Table 2's order, dimensions without test points left out
    for name, value in expected.items():
        assert summary[name] == pytest.approx(float(value))
    assert summary["overall"] == pytest.approx(float(sum(expected.values()) / 6))  # 0.6042, not the pooled 19/30
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["sub_dimensions"]["Attribute - Quantity"] == {"correct": 2, "total": 4, "accuracy": 0.5}
    assert scores["primary_dimensions"]["Attribute"]["total"] == 8 and scores["unjudged_testpoints"] == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i}_{k}.png" for i in range(4) for k in (0, 1)]


# ------------------------------------------------------------------------------------------- benchmark protocol


def test_the_benchmark_prompt_lists_every_test_point_with_its_definition_and_description():
    item = ugb.load_prompt_set(ugb.prompt_file("short"))[0][0]
    text = ugb.benchmark_instruction(item)
    assert f"「{item.prompt}」" in text and "['Style', 'World Knowledge', 'Attribute - Quantity']" in text
    assert "Checkpoints Defination:「\nStyle: Art, painting" in text
    assert "Checkpoints Description:「\nStyle: classical ink painting\nWorld Knowledge: Egyptian pyramids\n" in text
    assert text.count("<score>") == 1 and "{" not in text


@pytest.mark.parametrize(("answer", "want"), [
    ("<analysis>['a', 'b', 'c']</analysis>\n<score>[1, 0, 1]</score>", [1, 0, 1]),
    ("<description><analysis>['a', 'b', 'c']</analysis><score>[1, 2, '1']</score></description>", [1, 0, 0]),
    ("<analysis>['a', 'b']</analysis><score>[1, 0]</score>", None),  # two scores for three test points
    ("<score>[1, 0, 1]</score>", None),  # no analysis: the benchmark skips the row
    ("<analysis>['a', 'b', 'c']</analysis><score>1, 0, oops</score>", None),
    ("", None),
])
def test_answers_parse_by_the_benchmarks_rule(answer, want):
    assert ugb.parse_benchmark_answer(answer, 3) == want


class ScriptedVL:
    """Stands in for the Qwen2.5-VL: answers each encoded question with a scripted text."""

    batch_size = 2

    def __init__(self, answers):
        self.answers = list(answers)

    def image_part(self, image):
        return {"type": "image", "image": image}

    def encode(self, messages):
        return messages

    def generate_text(self, inputs, max_new_tokens):
        return [self.answers.pop(0) for _ in inputs]


def test_the_benchmark_protocol_scores_parsed_answers_and_leaves_out_the_rest():
    items, _ = ugb.load_prompt_set(ugb.prompt_file("short"))
    good = "<analysis>['x', 'y', 'z']</analysis><score>[0, 1, 1]</score>"
    judged = ugb.BenchmarkJudge(ScriptedVL([good, "I cannot tell."]))([None, None], items[:1] * 2)
    assert [tp["verdict"] for tp in judged[0]["testpoints"]] == [0, 1, 1] and judged[0]["output"] == good
    assert [tp["verdict"] for tp in judged[1]["testpoints"]] == [None, None, None]
    rows = [{"testpoints": [{"testpoint": tp, "dimension": ugb.dimension_of(tp), **mark}
                            for tp, mark in zip(items[0].testpoints, j["testpoints"], strict=True)]} for j in judged]
    assert ugb.summarize(rows) == {"overall": pytest.approx(2 / 3), "Style": 0.0, "World Knowledge": 1.0,
                                   "Attribute": 1.0}
    assert ugb.detailed_scores(rows)["unjudged_testpoints"] == 3


def test_the_benchmark_protocol_runs_on_the_tiny_judge(cli_run, tiny_qwen_vl):
    """A random judge writes no parsable answer: every test point is left out and the table says so."""
    from slas.rewards.mllm import QwenVLJudge

    out, _ = cli_run
    plan = ugb.plan_unigenbench(SHAPES, judge_model=tiny_qwen_vl, limit=1, images_per_prompt=1,
                                protocol="benchmark", max_new_tokens=3)
    rows = [{"item": plan.items[0], "k": 0, "seed": ugb.REFERENCE_SEED, "image": out / "images" / "0_0.png"}]
    vl = QwenVLJudge(model=str(tiny_qwen_vl), device="cpu", dtype="float32")
    results = ugb.judge(plan, rows, ugb.BenchmarkJudge(vl, plan.max_new_tokens), progress=False)
    assert isinstance(results[0]["output"], str) and all(tp["verdict"] is None for tp in results[0]["testpoints"])
    assert ugb.summarize(results) == {"overall": None}
    assert "3 test points left out" in ugb.table_text(ugb.summarize(results), results, "tiny", "title")


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "needle"), [
    (["--prompts", "medium"], "--prompts: 'medium' is not a UniGenBench prompt set (short, long)"),
    (["--judge-protocol", "vibes"], "--judge-protocol: 'vibes' is not a protocol"),
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--images-per-prompt", "0"], "--images-per-prompt must be >= 1"),
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint: /nonexistent/ckpt does not exist"),
    (["--set", "rl.power=3"], "--set rl.power=3: a model dir takes only"),
    (["--judge-model", "/nonexistent/qwen"], "--judge-model: directory /nonexistent/qwen does not exist"),
    (["--judge-model", "Qwen/Qwen2.5-VL-7B-Instruct"], "hf download Qwen/Qwen2.5-VL-7B-Instruct"),
    (["--judge-model", "QWEN3"], "is a 'qwen3_vl' model; the judge loads Qwen2.5-VL"),
])
def test_bad_input_fails_in_one_line_before_any_model_loads(tmp_path, monkeypatch, tiny_qwen_vl, args, needle):
    import slas.policies
    import slas.rewards.mllm

    monkeypatch.setattr(slas.policies, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(slas.rewards.mllm, "QwenVLJudge", lambda *a, **k: pytest.fail("a judge was loaded"))
    qwen3 = tmp_path / "qwen3"
    qwen3.mkdir()
    (qwen3 / "config.json").write_text('{"model_type": "qwen3_vl"}')
    base = {"--checkpoint": str(SHAPES), "--output": str(tmp_path / "out"), "--judge-model": str(tiny_qwen_vl)}
    given = dict(zip(args[::2], [str(qwen3) if a == "QWEN3" else a for a in args[1::2]], strict=True))
    result = run_eval("unigenbench", *[x for kv in {**base, **given}.items() for x in kv])
    assert result.exit_code == 2, result.stdout
    err = error_text(result)
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
