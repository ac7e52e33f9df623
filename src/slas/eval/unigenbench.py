"""``slas eval unigenbench``: UniGenBench++ (English, short or long prompts) judged by a local Qwen2.5-VL.

UniGenBench++ (Wang et al., 2025, arXiv:2510.18701; github.com/CodeGoat24/UniGenBench) gives each of its 600
prompts 1-10 *test points* (``Testpoints``, e.g. ``"Attribute - Color"``) and, per test point, a
description of what it asks of that prompt (``Testpoint Description``). An MLLM judges every generated image
test point by test point, 1 (met) or 0 (not met). How the benchmark's own code (``eval/src/eval_common.py``)
does it, and what is kept here:

* **Images**: 4 per prompt, image ``j`` of every prompt seeded ``3407 + j`` (its reference inference
  script), saved as ``<index>_<j>.png`` in one folder: ``images/`` here is a folder the benchmark's
  ``--data_path`` accepts, so its own evaluator can re-judge it. Our seeds drive CPU generators
  (``Policy.generate``), so the noise is not the reference script's CUDA noise.
* **Judge input**: one user turn, the image first (sent as JPEG quality 95, as its vLLM client encodes it)
  and then the text, through the model's chat template.
* **Scoring a test point** (two protocols):

  - ``testpoint`` (default): one question per (image, test point), built from the benchmark's facts (the
    prompt, the test point, its definition from the benchmark's table, its description for this prompt),
    answered from the first-token logits: ``P(Yes) / (P(Yes) + P(No))``, verdict 1 when above 0.5. One
    forward pass per question, no parsing, so nothing is lost to malformed answers; this is *our* wording,
    closest to the benchmark's intent rather than its exact prompt.
  - ``benchmark``: the benchmark's own English evaluator prompt (all test points of the image at once),
    greedy generation, and its parsing rule: the ``<analysis>`` and ``<score>`` lists must both parse and
    match the number of test points, and a test point counts as met when its score ``== 1``. An image whose
    answer does not parse is left out of the counts (the benchmark skips such rows after its retries; a
    greedy retry would repeat the same answer, so there is none here). This is the protocol the
    benchmark's fine-tuned evaluators (``CodeGoat24/UniGenBench-EvalModel-qwen-72b-v1``, a Qwen2.5-VL) are
    trained on.

* **Aggregation**: a test point belongs to the primary dimension before its first ``-``
  (``"Entity Layout - Two-Dimensional Space"`` -> Layout); a dimension's score is its met test points over
  its judged test points, pooled over all images (the benchmark's ``calculate_scores``); ``overall`` is the
  mean of the primary dimensions (the leaderboard's Overall). The tables list Overall, then Style, World
  Knowledge, Attribute, Action, Relationship, Compound, Grammar, Layout, Logical Reasoning and Text, in
  percent: that order and those short names are from the benchmark's public descriptions of Table 2 and its
  leaderboard (the PDF itself was not reachable here), the dimension sets are from its code and data.

The prompt sets ship in ``data/prompts/`` (CC BY 4.0, (C) 2025 Tencent, copied unmodified); the test-point
definitions and the evaluator prompt below are the benchmark's text under the same licence. Row 509 of the
long English set has a list with a missing comma (``"Grammar - Negation" "Attribute - Color"``), which the
benchmark's own loader cannot read; two adjacent JSON strings with only whitespace between them are never
valid JSON, so that one defect is repaired on load (the plan lists the repaired rows) and anything else
malformed is refused in one line.

The flow is the GenEval runner's (``slas.eval.runner``): plan (every input checked, nothing heavy loaded)
-> render with the checkpoint's deterministic sampler -> release the policy -> load the judge -> judge the
saved 8-bit files -> write ``results.jsonl``, ``summary.json``, ``scores.json`` and ``table.md``.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slas.errors import SlasError
from slas.eval.runner import DATA_DIR, RESULTS, SUMMARY, EvalSource, load_source_policy

PROMPTS_DIR = DATA_DIR / "prompts"
PROMPT_SETS = {"short": "unigenbench_test_en.csv", "long": "unigenbench_test_en_long.csv"}
PROTOCOLS = ("testpoint", "benchmark")
DEFAULT_JUDGE = "Qwen/Qwen2.5-VL-7B-Instruct"
BENCHMARK_EVALUATOR = "CodeGoat24/UniGenBench-EvalModel-qwen-72b-v1"
REFERENCE_SEED = 3407  # image j of every prompt: seed 3407 + j (the benchmark's reference inference script)
IMAGES_PER_PROMPT = 4
MAX_NEW_TOKENS = 4096  # the benchmark's max_tokens for one evaluator answer
JUDGE_MODEL_TYPE = "qwen2_5_vl"
IMAGES = "images"
SCORES = "scores.json"
TABLE = "table.md"
COLUMNS = ("index", "prompt_en", "sub_dims_en")

DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("Style", "Style"),
    ("World Knowledge", "World Knowledge"),
    ("Attribute", "Attribute"),
    ("Action", "Action"),
    ("Relationship", "Relationship"),
    ("Compound", "Compound"),
    ("Grammar", "Grammar"),
    ("Layout", "Entity Layout"),
    ("Logical Reasoning", "Logical Reasoning"),
    ("Text", "Text Generation"),
)
"""The primary dimensions in Table 2's order: (column name, the test-point prefix it gathers)."""

TESTPOINTS: dict[str, str] = {
    "Relationship - Comparison": "Comparison of attributes between two entities",
    "Relationship - Composition": "An entity is composed of one or more other entities",
    "Relationship - Inclusion": "A container contains an entity; the container can also be a plane, e.g., a snake in "
                                "a painting on a wall",
    "Relationship - Similarity": "Existence of similarities between different entities",
    "Compound - Imagination": "Things that are impossible in real life",
    "Compound - Feature Matching": "Different entities possess different types of attribute features",
    "Attribute - Size": "Assessment of the subject's size, height, length, thickness, width, or tallness/shortness",
    "Attribute - Expression": "Distinguishing expressions from facial actions; expressions must convey a clear emotion",
    "Attribute - Quantity": "Focuses on the challenge of depicting three or more items accurately",
    "Attribute - Material": "Evaluation of different material types and textures",
    "Attribute - Color": "Assessment of different colors",
    "Attribute - Shape": "Assessment of different shapes",
    "Entity Layout - Two-Dimensional Space": "Arrangement and positioning of entities in two-dimensional space",
    "Entity Layout - Three-Dimensional Space": "Arrangement and positioning of entities in three-dimensional space",
    "Action - Full-body (Character/Anthropomorphic)": "Full-body actions by characters or anthropomorphized entities, "
                                                      "such as running, diving, breakdancing, swinging, or hanging "
                                                      "upside down",
    "Action - Hand (Character/Anthropomorphic)": "Focuses on hand structure—checking if fingers are missing, broken, "
                                                 "or distorted",
    "Action - Animal": "Actions performed by animals",
    "Action - Contact Interaction": "Physical interactions between entities",
    "Action - Non-contact Interaction": "For example, two people making eye contact—testing if the model can "
                                        "accurately depict such interactions",
    "Action - State": "A sustained state of an entity, typically expressed with a verb",
    "Grammar - Negation": "Tests the model's understanding of negation grammar",
    "Grammar - Pronoun Reference": "Tests if the model can resolve ambiguous pronoun references correctly",
    "Grammar - Consistency": "Evaluation of shared attributes among entities",
    "World Knowledge": "Covers knowledge of celebrities, architecture, basic domain knowledge, and internet slang. "
                       "Celebrities with modern copyright risk should be avoided",
    "Style": "Art, painting, photography, design styles, and corresponding artist names",
    "Text Generation": "The text content model needed to accurately generate without any omissions or extra words",
    "Logical Reasoning": "Requires the model to deeply understand the intent and perform reasoning",
}
"""The benchmark's 27 test points (sub-dimensions) and their English definitions, as its evaluator shows them."""

_IND = " " * 12
BENCHMARK_INSTRUCTION = "\n".join([
    "You are a precise and objective English-language image description system. I will provide you with a prompt "
    "for image generation, as well as the corresponding generated image. You will be given a set of evaluation "
    "criteria (checkpoints) and their explanations that define the relevance between the prompt and the image. You "
    "must evaluate whether the generated image fulfills the requirements implied by each checkpoint in the prompt.",
    "",
    _IND + "For each image, follow the steps below in order:",
    "",
    _IND + "1. The prompt for the generated image is: 「{prompt}」. You are to analyze the image content in detail "
    "from the angles specified in {testpoint}. Detailed definitions of these checkpoints are provided here: "
    "{explanation}. The specific description of each checkpoint in the context of the prompt is: "
    "{test_explanation}. You must analyze whether the image meets the requirements for each checkpoint "
    "individually.",
    "",
    _IND + "2. Based on the above analysis, determine whether the generated image satisfies each checkpoint in terms "
    "of its visual alignment with the prompt. If the image meets the requirements of a checkpoint, assign a score "
    "of 1 to that checkpoint; otherwise, assign a score of 0.",
    "",
    _IND + "Constraints:",
    _IND + "- Only describe content that is directly visible; do not interpret, speculate, or infer any background "
    "story.",
    _IND + "- Focus solely on visually verifiable details.",
    _IND + "- Omit any uncertain or ambiguous elements.",
    _IND + "- Even if mentioned in the input, do not describe abstract entities, emotions, or speculative ideas.",
    "",
    _IND + "Please strictly follow the output format below:",
    "",
    _IND + "<description>",
    _IND + "    <prompt>{prompt}</prompt>",
    _IND + "    <checkpoint>{testpoint}</checkpoint>",
    _IND + "    <analysis>A list using square brackets `[]`, where each element is a string of detailed analysis "
    "corresponding to one checkpoint, as required in Step 1. **Ensure the list length matches the number of "
    "checkpoints**. Each element should be a string representing the analysis for that specific checkpoint."
    "</analysis>",
    _IND + "    <score>A list using square brackets `[]`, where each element is a binary score (0 or 1) corresponding "
    "to a checkpoint, as required in Step 2. **Ensure the list length matches the number of checkpoints**. Each "
    "element should be either 0 or 1, indicating whether the checkpoint was satisfied.</score>",
    _IND + "</description>",
    _IND,
])
"""The benchmark's English evaluator prompt (its whitespace included: its evaluator models were trained on it)."""

TESTPOINT_QUESTION = (
    "You are a precise and objective judge of generated images. The image was generated for the prompt: "
    "「{prompt}」.\nCheckpoint: {testpoint} ({definition}).\nWhat this checkpoint asks of this prompt: {description}.\n"
    "Judge only what is directly visible in the image. Does the image meet the requirement of this checkpoint? "
    "Answer Yes or No."
)
"""The ``testpoint`` protocol's question: one test point, the benchmark's definition and description of it."""


class UnigenbenchError(SlasError, ValueError):
    """Bad ``slas eval unigenbench`` input; the message is one line naming it."""


# ---------------------------------------------------------------------------------------------- prompt sets


@dataclass(frozen=True)
class Item:
    """One benchmark prompt: its ``index`` (the image file names use it), text, theme and test points."""

    index: int
    prompt: str
    testpoints: tuple[str, ...]
    descriptions: tuple[str, ...]
    theme: str = ""


def dimension_of(testpoint: str) -> str:
    """The Table-2 column of a test point: the part before its first ``-`` (the benchmark's rule), renamed."""
    prefix = testpoint.split("-", 1)[0].strip()
    for name, key in DIMENSIONS:
        if key == prefix:
            return name
    raise UnigenbenchError(f"test point {testpoint!r} belongs to no UniGenBench primary dimension")


_ADJACENT_STRINGS = re.compile(r'(?<!\\)"(\s+)"')


def parse_sub_dims(text: str, where: str) -> tuple[dict, bool]:
    """A row's ``sub_dims_en`` JSON and whether it had to be repaired (two list strings missing their comma)."""
    try:
        return json.loads(text), False
    except json.JSONDecodeError as exc:
        first = exc
    try:
        return json.loads(_ADJACENT_STRINGS.sub(r'",\1"', text)), True
    except json.JSONDecodeError:
        raise UnigenbenchError(f"{where}: sub_dims_en is not JSON ({first.msg} at char {first.pos})") from None


def parse_item(row: dict, where: str) -> tuple[Item, bool]:
    """One CSV row as an :class:`Item` (each field checked), and whether its JSON was repaired."""
    try:
        index = int(str(row["index"]).strip())
    except ValueError:
        raise UnigenbenchError(f"{where}: index {row['index']!r} is not an integer") from None
    prompt = (row["prompt_en"] or "").strip()
    if not prompt:
        raise UnigenbenchError(f"{where}: empty prompt_en")
    dims, repaired = parse_sub_dims(row["sub_dims_en"] or "", where)
    if not isinstance(dims, dict):
        raise UnigenbenchError(f"{where}: sub_dims_en must be a JSON object, got {type(dims).__name__}")
    points, descs = dims.get("Testpoints"), dims.get("Testpoint Description")
    if not (isinstance(points, list) and points and all(isinstance(p, str) for p in points)):
        raise UnigenbenchError(f"{where}: sub_dims_en needs a non-empty 'Testpoints' list of strings")
    if not (isinstance(descs, list) and len(descs) == len(points) and all(isinstance(d, str) for d in descs)):
        raise UnigenbenchError(f"{where}: 'Testpoint Description' must be {len(points)} strings, one per test point")
    unknown = [p for p in points if p not in TESTPOINTS]
    if unknown:
        raise UnigenbenchError(f"{where}: unknown test point(s) {unknown} (UniGenBench has {len(TESTPOINTS)})")
    theme = dims.get("Primary Categories", "")
    return Item(index, prompt, tuple(points), tuple(descs), theme if isinstance(theme, str) else ""), repaired


def read_rows(path: Path) -> list[dict]:
    """The rows of a benchmark CSV (header ``index,prompt_en,sub_dims_en``), or one line naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnigenbenchError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise UnigenbenchError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UnigenbenchError(f"{path}: no column(s) {missing} (UniGenBench's English CSVs have {list(COLUMNS)})")
    return rows


def load_prompt_set(path: str | Path) -> tuple[list[Item], list[int]]:
    """Every prompt of a benchmark CSV, checked, and the indices of the rows whose JSON was repaired."""
    p = Path(path)
    if not p.is_file():
        raise UnigenbenchError(f"--prompts: {p} is not in this install (a source checkout ships data/prompts/)")
    items, repaired, seen = [], [], set()
    for n, row in enumerate(read_rows(p), 2):  # line 1 is the header
        item, fixed = parse_item(row, f"{p.name} line {n}")
        if item.index in seen:
            raise UnigenbenchError(f"{p.name} line {n}: index {item.index} appears twice")
        seen.add(item.index)
        items.append(item)
        if fixed:
            repaired.append(item.index)
    if not items:
        raise UnigenbenchError(f"--prompts: {p} holds no prompts")
    return items, repaired


def prompt_file(prompts: str) -> Path:
    """The shipped CSV of a prompt set (``short`` | ``long``)."""
    if prompts not in PROMPT_SETS:
        raise UnigenbenchError(f"--prompts: {prompts!r} is not a UniGenBench prompt set ({', '.join(PROMPT_SETS)})")
    return PROMPTS_DIR / PROMPT_SETS[prompts]


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class UnigenPlan:
    """A validated request: nothing in it can fail for a reason the user could have fixed up front."""

    source: EvalSource
    items: list[Item]
    prompt_set: str
    prompts_file: str
    judge_model: str
    protocol: str = "testpoint"
    images_per_prompt: int = IMAGES_PER_PROMPT
    batch_size: int = 8
    seed: int = REFERENCE_SEED
    judge_device: str = "auto"
    judge_dtype: str = "bfloat16"
    max_new_tokens: int = MAX_NEW_TOKENS
    repaired: list[int] = field(default_factory=list)
    judge_label: str = ""  # the judge as the user named it (a cached hub id resolves to a snapshot hash dir)

    @property
    def num_images(self) -> int:
        return len(self.items) * self.images_per_prompt


def check_judge_model(judge_model: str) -> str:
    """The local dir (or cached snapshot) of a Qwen2.5-VL judge, or one line with the fetch command."""
    from slas.preflight import resolve_model_path

    path = resolve_model_path(str(judge_model), key="--judge-model", marker="config.json")
    try:
        kind = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise UnigenbenchError(f"--judge-model: {path}/config.json cannot be read ({exc})") from None
    if kind != JUDGE_MODEL_TYPE:
        raise UnigenbenchError(f"--judge-model: {judge_model} is a {kind!r} model; the judge loads Qwen2.5-VL "
                               f"(model_type {JUDGE_MODEL_TYPE!r}), e.g. {DEFAULT_JUDGE}")
    return path


def _check_counts(images_per_prompt: int, batch_size: int, limit: int | None, max_new_tokens: int) -> None:
    for name, value in (("--images-per-prompt", images_per_prompt), ("--batch-size", batch_size),
                        ("--limit", limit), ("max_new_tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise UnigenbenchError(f"{name} must be >= 1, got {value}")


def plan_unigenbench(
    checkpoint: str | Path,
    *,
    prompts: str = "short",
    judge_model: str | Path = DEFAULT_JUDGE,
    protocol: str = "testpoint",
    images_per_prompt: int = IMAGES_PER_PROMPT,
    limit: int | None = None,
    overrides: Sequence[str] = (),
    batch_size: int = 8,
    seed: int = REFERENCE_SEED,
    judge_device: str = "auto",
    judge_dtype: str = "bfloat16",
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> UnigenPlan:
    """Check everything an evaluation needs, cheapest first, and load no model: a typo fails in a second."""
    from slas.eval.runner import resolve_checkpoint
    from slas.preflight import resolve_model_path

    _check_counts(images_per_prompt, batch_size, limit, max_new_tokens)
    path = prompt_file(prompts)
    if protocol not in PROTOCOLS:
        raise UnigenbenchError(f"--judge-protocol: {protocol!r} is not a protocol ({', '.join(PROTOCOLS)})")
    source = resolve_checkpoint(checkpoint, overrides)
    resolve_model_path(source.model.path, source.model.revision)  # one line with the fetch command when absent
    items, repaired = load_prompt_set(path)
    items = items[:limit] if limit is not None else items
    judge = check_judge_model(str(judge_model))
    return UnigenPlan(source, items, prompts, str(path.resolve()), judge, protocol, images_per_prompt, batch_size,
                      seed, judge_device, judge_dtype, max_new_tokens,
                      [i for i in repaired if i in {it.index for it in items}], str(judge_model))


# ---------------------------------------------------------------------------------------------- rendering


def image_file(root: Path, index: int, k: int) -> Path:
    """The benchmark's layout: ``<root>/images/<prompt index>_<image index>.png``."""
    return root / IMAGES / f"{index}_{k}.png"


def render(plan: UnigenPlan, out: Path, *, load: Callable[[EvalSource], Any] = load_source_policy,
           progress: bool = True) -> list[dict]:
    """Render every image of ``plan`` under ``out``; one row (item, image index, seed, path) per image."""
    from slas.eval.runner import render_images

    rows = [{"item": it, "k": k, "seed": plan.seed + k, "image": image_file(out, it.index, k)}
            for it in plan.items for k in range(plan.images_per_prompt)]
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    render_images(plan.source, [(r["item"].prompt, r["seed"], r["image"]) for r in rows],
                  batch_size=plan.batch_size, load=load, progress=progress)
    return rows


# ---------------------------------------------------------------------------------------------- judging


class Judge(Protocol):
    """Judges images test point by test point: per image, ``{"testpoints": [{"score", "verdict"}, ...]}``
    (one entry per test point of its item, ``verdict`` 1, 0 or ``None`` = not judged) plus extra keys."""

    def __call__(self, images: Sequence[Any], items: Sequence[Item]) -> list[dict]: ...


def testpoint_question(item: Item, j: int) -> str:
    """The ``testpoint`` protocol's question about test point ``j`` of ``item``."""
    tp = item.testpoints[j]
    return TESTPOINT_QUESTION.format(prompt=item.prompt, testpoint=tp, definition=TESTPOINTS[tp],
                                     description=item.descriptions[j])


def benchmark_instruction(item: Item) -> str:
    """The benchmark's evaluator prompt for ``item`` (all its test points), as its ``build_system_prompt`` builds it."""
    explanation = "Checkpoints Defination:「" + "".join(f"\n{tp}: {TESTPOINTS[tp]}" for tp in item.testpoints) + "\n」"
    described = "".join(f"\n{tp}: {d}" for tp, d in zip(item.testpoints, item.descriptions, strict=True))
    return BENCHMARK_INSTRUCTION.format(prompt=item.prompt, testpoint=str(list(item.testpoints)),
                                        explanation=explanation,
                                        test_explanation="Checkpoints Description:「" + described + "\n」")


def parse_benchmark_answer(text: str, n: int) -> list[int] | None:
    """The 0/1 verdicts of an evaluator answer by the benchmark's rule, or ``None`` when it does not parse:
    ``<analysis>`` and ``<score>`` must both be Python lists of ``n`` items; a score ``== 1`` is a met test point."""
    lists = []
    for tag in ("analysis", "score"):
        found = re.search(rf"<{tag}>(.*?)</{tag}>", text or "", re.DOTALL)
        if found is None:
            return None
        try:
            value = ast.literal_eval(found.group(1).strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        if not isinstance(value, (list, tuple)) or len(value) != n:
            return None
        lists.append(value)
    return [1 if s == 1 else 0 for s in lists[1]]


def _message(vl: Any, image: Any, text: str) -> list[dict]:
    """One user turn: the image, then the text (the order of the benchmark's vLLM client)."""
    return [{"role": "user", "content": [vl.image_part(image), {"type": "text", "text": text}]}]


class PerTestpointJudge:
    """The ``testpoint`` protocol on a :class:`~slas.rewards.mllm.QwenVLJudge` (first-token Yes/No logits)."""

    def __init__(self, vl: Any) -> None:
        self.vl = vl

    def __call__(self, images: Sequence[Any], items: Sequence[Item]) -> list[dict]:
        from slas.rewards.mllm import score_from_logits

        queries = [(i, j) for i, it in enumerate(items) for j in range(len(it.testpoints))]
        scores: dict[tuple[int, int], float] = {}
        ids = self.vl.answer_token_ids("yesno")
        for b in range(0, len(queries), self.vl.batch_size):
            chunk = queries[b : b + self.vl.batch_size]
            inputs = self.vl.encode([_message(self.vl, images[i], testpoint_question(items[i], j)) for i, j in chunk])
            got = score_from_logits(self.vl.first_token_logits(inputs), "yesno", ids).tolist()
            scores.update(zip(chunk, got, strict=True))
        return [{"testpoints": [{"score": scores[i, j], "verdict": int(scores[i, j] > 0.5)}
                                for j in range(len(it.testpoints))]} for i, it in enumerate(items)]


class BenchmarkJudge:
    """The ``benchmark`` protocol on a :class:`~slas.rewards.mllm.QwenVLJudge`: its prompt, greedy answers, its
    parsing rule; the raw answer is kept in each row's ``output``."""

    def __init__(self, vl: Any, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.vl, self.max_new_tokens = vl, max_new_tokens

    def __call__(self, images: Sequence[Any], items: Sequence[Item]) -> list[dict]:
        out = []
        for b in range(0, len(items), self.vl.batch_size):
            idx = range(b, min(b + self.vl.batch_size, len(items)))
            inputs = self.vl.encode([_message(self.vl, images[i], benchmark_instruction(items[i])) for i in idx])
            for i, text in zip(idx, self.vl.generate_text(inputs, self.max_new_tokens), strict=True):
                verdicts = parse_benchmark_answer(text, len(items[i].testpoints))
                marks = verdicts if verdicts is not None else [None] * len(items[i].testpoints)
                out.append({"testpoints": [{"score": None if v is None else float(v), "verdict": v} for v in marks],
                            "output": text})
        return out


def build_judge(plan: UnigenPlan) -> Judge:
    """The plan's protocol on its Qwen2.5-VL (loaded once, through the ``mllm_judge`` reward's loader)."""
    from slas.rewards.mllm import QwenVLJudge

    vl = QwenVLJudge(model=plan.judge_model, device=plan.judge_device, dtype=plan.judge_dtype,
                     batch_size=plan.batch_size)
    return PerTestpointJudge(vl) if plan.protocol == "testpoint" else BenchmarkJudge(vl, plan.max_new_tokens)


def as_sent(path: Path) -> Any:
    """The saved image as the benchmark's client sends it: RGB, re-encoded as JPEG quality 95."""
    from PIL import Image

    from slas.images import load_image, to_pil

    buf = io.BytesIO()
    to_pil(load_image(path).permute(1, 2, 0)).save(buf, format="JPEG", quality=95)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def result_row(row: dict, judged: dict, plan: UnigenPlan) -> dict:
    """One ``results.jsonl`` row: the image, its prompt, the prompt set and judge protocol (``slas eval
    compare`` refuses to pair results that differ in them) and every test point's dimension, score and verdict."""
    item: Item = row["item"]
    points = [{"testpoint": tp, "dimension": dimension_of(tp), "description": d, **mark}
              for tp, d, mark in zip(item.testpoints, item.descriptions, judged["testpoints"], strict=True)]
    extra = {k: v for k, v in judged.items() if k != "testpoints"}
    return {"index": item.index, "prompt": item.prompt, "image": str(row["image"]), "seed": row["seed"],
            "theme": item.theme, "prompt_set": plan.prompt_set, "protocol": plan.protocol, "testpoints": points,
            **extra}


def judge(plan: UnigenPlan, rows: list[dict], judge_fn: Judge, *, progress: bool = True) -> list[dict]:
    """Judge the saved images ``plan.batch_size`` at a time; one result row per image, in render order."""
    from tqdm.auto import tqdm

    results = []
    bar = tqdm(total=len(rows), unit="img", desc=f"judge ({plan.protocol})", disable=not progress)
    try:
        for b in range(0, len(rows), plan.batch_size):
            batch = rows[b : b + plan.batch_size]
            judged = judge_fn([as_sent(r["image"]) for r in batch], [r["item"] for r in batch])
            results += [result_row(r, j, plan) for r, j in zip(batch, judged, strict=True)]
            bar.update(len(batch))
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------------------------------------- scores


def tally(results: Sequence[dict]) -> tuple[dict[str, list[int]], dict[str, list[int]], int]:
    """``[met, judged]`` per primary dimension and per test point (pooled over images), and how many test
    points went unjudged (an answer that did not parse)."""
    primary: dict[str, list[int]] = {}
    sub: dict[str, list[int]] = {}
    unjudged = 0
    for r in results:
        for tp in r["testpoints"]:
            if tp["verdict"] is None:
                unjudged += 1
                continue
            for counts in (primary.setdefault(tp["dimension"], [0, 0]), sub.setdefault(tp["testpoint"], [0, 0])):
                counts[0] += int(tp["verdict"] == 1)
                counts[1] += 1
    return primary, sub, unjudged


def summarize(results: Sequence[dict]) -> dict[str, float | None]:
    """``{"overall", <dimension>: score}`` in Table 2's order: each dimension's met / judged test points,
    ``overall`` the mean of the dimensions that have any (``None`` when none was judged)."""
    primary, _, _ = tally(results)
    scores = {name: primary[name][0] / primary[name][1] for name, _ in DIMENSIONS if name in primary}
    overall = sum(scores.values()) / len(scores) if scores else None
    return {"overall": overall, **scores}


def detailed_scores(results: Sequence[dict]) -> dict[str, Any]:
    """The benchmark's JSON summary (``primary_dimensions`` / ``sub_dimensions``: correct, total, accuracy)."""
    primary, sub, unjudged = tally(results)

    def block(counts: dict[str, list[int]], order: Sequence[str]) -> dict[str, dict]:
        return {k: {"correct": counts[k][0], "total": counts[k][1], "accuracy": counts[k][0] / counts[k][1]}
                for k in order if k in counts}

    return {"primary_dimensions": block(primary, [n for n, _ in DIMENSIONS]),
            "sub_dimensions": block(sub, sorted(sub)), "unjudged_testpoints": unjudged}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table_text(summary: dict[str, float | None], results: Sequence[dict], label: str, heading: str) -> str:
    """Table 2's layout (Overall, then the ten primary dimensions, in percent) and the 27 sub-dimensions."""
    names = ["Overall", *(n for n, _ in DIMENSIONS)]
    values = [summary.get("overall"), *(summary.get(n) for n, _ in DIMENSIONS)]
    lines = [heading, "", "| Model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
             f"| {label} | " + " | ".join(_pct(v) for v in values) + " |", ""]
    detail = detailed_scores(results)
    lines += ["| Sub-dimension | Met | Judged | Score |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['correct']} | {v['total']} | {_pct(v['accuracy'])} |"
              for k, v in detail["sub_dimensions"].items()]
    if detail["unjudged_testpoints"]:
        lines += ["", f"{detail['unjudged_testpoints']} test points left out: the judge's answer did not parse."]
    return "\n".join(lines)


def heading(plan: UnigenPlan) -> str:
    """What was evaluated, in one line (the table's title)."""
    return (f"UniGenBench++ English {plan.prompt_set}: {plan.source.label}, {len(plan.items)} prompts x "
            f"{plan.images_per_prompt} images, judge {plan.judge_label or plan.judge_model} ({plan.protocol} protocol)")


def write_outputs(out: Path, results: Sequence[dict], plan: UnigenPlan) -> dict[str, float | None]:
    """``results.jsonl``, ``summary.json`` (overall + dimensions), ``scores.json`` (the benchmark's detailed
    JSON) and ``table.md`` (Table 2's layout) under ``out``; returns the summary."""
    summary = summarize(results)
    with (out / RESULTS).open("w", encoding="utf-8") as fh:
        for row in results:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / SCORES).write_text(json.dumps(detailed_scores(results), indent=2, ensure_ascii=False) + "\n",
                              encoding="utf-8")
    (out / TABLE).write_text(table_text(summary, results, plan.source.label, heading(plan)) + "\n", encoding="utf-8")
    return summary


def run_unigenbench(plan: UnigenPlan, out: str | Path, *, progress: bool = True,
                    load: Callable[[EvalSource], Any] = load_source_policy,
                    judge_fn: Judge | None = None) -> tuple[dict[str, float | None], list[dict]]:
    """Render, judge and write ``plan`` under ``out``; the summary and the per-image rows. The judge is built
    after the policy is released (one model in memory at a time) unless ``judge_fn`` is given."""
    import gc

    root = Path(out).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    rows = render(plan, root, load=load, progress=progress)
    fn = judge_fn if judge_fn is not None else build_judge(plan)
    try:
        results = judge(plan, rows, fn, progress=progress)
    finally:
        del fn
        gc.collect()
    return write_outputs(root, results, plan), results


__all__ = [
    "BENCHMARK_EVALUATOR", "BENCHMARK_INSTRUCTION", "DEFAULT_JUDGE", "DIMENSIONS", "PROMPT_SETS", "PROTOCOLS",
    "TESTPOINTS", "BenchmarkJudge", "Item", "PerTestpointJudge", "UnigenPlan", "UnigenbenchError",
    "benchmark_instruction", "detailed_scores", "dimension_of", "load_prompt_set", "parse_benchmark_answer",
    "plan_unigenbench", "render", "run_unigenbench", "summarize", "table_text", "testpoint_question",
    "write_outputs",
]
