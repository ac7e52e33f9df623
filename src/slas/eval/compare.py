"""Compare evaluations of several checkpoints on the same benchmark run, with paired bootstrap intervals.

Two GenEval scores a few points apart may be noise: GenEval has a few hundred prompts, and a tag such as
``counting`` only dozens. The comparison is *paired* because every run rendered the same prompts with
the same seeds (same initial noise), so what varies between runs on one prompt is the model, and the
prompt-to-prompt variation (some prompts are hard for every model) cancels in the difference.

The resampled unit is the prompt (its images share the prompt's difficulty, so they are not independent).
Prompts are drawn with replacement *within each tag* (the tags are fixed by the benchmark's design, and a
resample that drew no ``counting`` prompt would have no ``counting`` score), the same draw for every run;
per draw each tag's score is its images' mean verdict and ``overall`` is the mean of the tag scores, as
GenEval computes it. The interval is the percentile interval of the drawn differences.

Input: ``results.jsonl`` as ``slas eval geneval`` writes it (one row per image: ``tag``, ``prompt``,
``seed``, ``image`` under ``images/<prompt index>/samples/<image index>.png``, ``correct``). A row's
(prompt index, image index) is its key; two runs are the same evaluation when they have the same keys
with the same prompt, tag and seed each.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slas.errors import SlasError
from slas.eval.geneval import GENEVAL_TAGS

RESULTS = "results.jsonl"
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
MIN_RESAMPLES = 100
_IMAGE_KEY = re.compile(r"(\d+)[/\\]samples[/\\](\d+)\.[A-Za-z0-9]+$")

Key = tuple[int, int]  # (prompt index, image index)


class CompareError(SlasError, ValueError):
    """Runs that cannot be compared (not the same evaluation, unreadable results); one line naming it."""


@dataclass(frozen=True)
class Verdict:
    """One image's row: what it was asked (tag, prompt, seed) and how it was judged (``value`` in [0, 1])."""

    tag: str
    prompt: str
    seed: int | None
    value: float


@dataclass(frozen=True)
class EvalResults:
    """One evaluation's per-image verdicts by (prompt index, image index)."""

    label: str
    verdicts: Mapping[Key, Verdict]


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a tag (or ``overall``), each run's score, and each later run's difference
    to the first with its interval."""

    tag: str
    prompts: int
    scores: tuple[float, ...]
    diffs: tuple[float, ...]
    lows: tuple[float, ...]
    highs: tuple[float, ...]


@dataclass(frozen=True)
class Comparison:
    labels: tuple[str, ...]
    rows: tuple[Row, ...]
    resamples: int
    seed: int
    level: float
    images: int


# ---------------------------------------------------------------------------------------------- reading


def key_of(row: Mapping, where: str) -> Key:
    """A row's (prompt index, image index): its ``prompt_index``/``image_index`` fields when it has them,
    else read from GenEval's image path ``.../<prompt index>/samples/<image index>.png``."""
    if isinstance(row.get("prompt_index"), int) and isinstance(row.get("image_index"), int):
        return row["prompt_index"], row["image_index"]
    match = _IMAGE_KEY.search(str(row.get("image", "")))
    if match is None:
        raise CompareError(f"{where}: no (prompt, image) index: 'image' is not .../<prompt>/samples/<image>.png")
    return int(match.group(1)), int(match.group(2))


def _verdict(row: object, where: str) -> Verdict:
    if not isinstance(row, dict) or not isinstance(row.get("tag"), str) or not isinstance(row.get("prompt"), str):
        raise CompareError(f"{where}: not a results row (needs 'tag', 'prompt', 'image' and 'correct')")
    value = row.get("correct", row.get("score"))
    if not isinstance(value, bool | int | float) or not 0 <= float(value) <= 1:
        raise CompareError(f"{where}: 'correct' must be true/false (or a 'score' in [0, 1]), got {value!r}")
    seed = row.get("seed")
    return Verdict(row["tag"], row["prompt"], int(seed) if isinstance(seed, int) else None, float(value))


def read_results(path: str | Path, label: str | None = None) -> EvalResults:
    """An evaluation's verdicts from its output dir (or its ``results.jsonl``); one-line errors naming the line."""
    p = Path(path).expanduser()
    file = p / RESULTS if p.is_dir() else p
    if not file.is_file():
        raise CompareError(f"{path}: no {RESULTS} there (give an eval output dir or an evaluation id)")
    verdicts: dict[Key, Verdict] = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompareError(f"{where} is not JSON ({exc.msg})") from None
        verdict = _verdict(row, where)
        key = key_of(row, where)
        if key in verdicts:
            raise CompareError(f"{where}: prompt {key[0]} image {key[1]} appears twice")
        verdicts[key] = verdict
    if not verdicts:
        raise CompareError(f"{file} holds no results")
    return EvalResults(label or str(path), verdicts)


def check_same_evaluation(runs: Sequence[EvalResults]) -> None:
    """Every run has the first one's (prompt, image) keys, each with the same tag, prompt and seed."""
    base = runs[0]
    for run in runs[1:]:
        missing = sorted(set(base.verdicts) - set(run.verdicts))
        extra = sorted(set(run.verdicts) - set(base.verdicts))
        if missing or extra:
            key, side = (missing[0], f"{run.label} lacks") if missing else (extra[0], f"{base.label} lacks")
            raise CompareError(f"not the same evaluation: {base.label} has {len(base.verdicts)} images, {run.label} "
                               f"{len(run.verdicts)}; {side} prompt {key[0]} image {key[1]}")
        for key in sorted(base.verdicts):
            a, b = base.verdicts[key], run.verdicts[key]
            for what in ("tag", "prompt", "seed"):
                if getattr(a, what) != getattr(b, what):
                    raise CompareError(f"not the same evaluation: prompt {key[0]} image {key[1]} has {what} "
                                       f"{getattr(a, what)!r} in {base.label} but {getattr(b, what)!r} in {run.label}")


# ---------------------------------------------------------------------------------------------- the math


def tag_order(tags: Sequence[str]) -> list[str]:
    """GenEval's tag order first, then any other tags in order of appearance."""
    seen = list(dict.fromkeys(tags))
    return [t for t in GENEVAL_TAGS if t in seen] + [t for t in seen if t not in GENEVAL_TAGS]


def _by_tag(runs: Sequence[EvalResults]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tag: hits [runs, prompts] (sum of verdicts over each prompt's images) and images per prompt [prompts]."""
    base = runs[0].verdicts
    prompts: dict[int, str] = {}
    counts: dict[int, int] = {}
    for (p, _), v in sorted(base.items()):
        prompts[p] = v.tag
        counts[p] = counts.get(p, 0) + 1
    out = {}
    for tag in tag_order(list(prompts.values())):
        ids = [p for p, t in prompts.items() if t == tag]
        hits = np.zeros((len(runs), len(ids)))
        for r, run in enumerate(runs):
            totals: dict[int, float] = {}
            for (p, _), v in run.verdicts.items():
                totals[p] = totals.get(p, 0.0) + v.value
            hits[r] = [totals[p] for p in ids]
        out[tag] = (hits, np.array([counts[p] for p in ids], dtype=float))
    return out


def bootstrap_scores(tables: Mapping[str, tuple[np.ndarray, np.ndarray]], resamples: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per tag and ``overall``: [runs, resamples] scores, prompts drawn with replacement within each tag
    (one draw shared by every run: the pairing)."""
    out = {}
    for tag, (hits, counts) in tables.items():
        idx = rng.integers(0, len(counts), size=(resamples, len(counts)))
        out[tag] = hits[:, idx].sum(-1) / counts[idx].sum(-1)
    out["overall"] = np.mean([out[t] for t in tables], axis=0)
    return out


def point_scores(tables: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per tag and ``overall``: [runs] scores on the whole set (the benchmark's own numbers)."""
    out = {tag: hits.sum(-1) / counts.sum() for tag, (hits, counts) in tables.items()}
    out["overall"] = np.mean([out[t] for t in tables], axis=0)
    return out


def check_request(n_runs: int, resamples: int) -> None:
    """What a comparison needs before anything is read: two runs or more, enough resamples for a 95% tail."""
    if n_runs < 2:
        raise CompareError(f"compare needs at least two evaluations (A B ...), got {n_runs}")
    if resamples < MIN_RESAMPLES:
        raise CompareError(f"--resamples must be >= {MIN_RESAMPLES}, got {resamples}")


def compare(runs: Sequence[EvalResults], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
            level: float = 0.95) -> Comparison:
    """Each run's scores and, for each run after the first, its difference to the first with a paired
    bootstrap ``level`` interval (``resamples`` draws from a generator seeded with ``seed``: reproducible)."""
    check_request(len(runs), resamples)
    check_same_evaluation(runs)
    tables = _by_tag(runs)
    point = point_scores(tables)
    drawn = bootstrap_scores(tables, resamples, np.random.default_rng(seed))
    tail = (1 - level) / 2 * 100
    rows = []
    for tag in [*tables, "overall"]:
        diffs = drawn[tag][1:] - drawn[tag][0]
        lows, highs = np.percentile(diffs, [tail, 100 - tail], axis=1)
        n = len(tables[tag][1]) if tag in tables else sum(len(c) for _, c in tables.values())
        rows.append(Row(tag, n, tuple(map(float, point[tag])), tuple(map(float, point[tag][1:] - point[tag][0])),
                        tuple(map(float, lows)), tuple(map(float, highs))))
    return Comparison(tuple(r.label for r in runs), tuple(rows), resamples, seed, level, len(runs[0].verdicts))


# ---------------------------------------------------------------------------------------------- the table


def _signed(x: float) -> str:
    return f"{0.0 if math.isclose(x, 0.0, abs_tol=5e-5) else x:+.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(c: Comparison) -> str:
    """The comparison as a markdown table (tags, then ``overall``), with a line saying how it was computed."""
    base = c.labels[0]
    head = ["tag", "prompts", *map(_cell, c.labels)]
    head += [f"{_cell(label)} - {_cell(base)} ({c.level:.0%} CI)" for label in c.labels[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in c.rows:
        name = f"**{row.tag}**" if row.tag == "overall" else row.tag
        cells = [name, str(row.prompts), *(f"{s:.4f}" for s in row.scores)]
        cells += [f"{_signed(d)} [{_signed(lo)}, {_signed(hi)}]" for d, lo, hi in zip(row.diffs, row.lows, row.highs,
                                                                                      strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"{c.images} images per run. Differences to {_cell(base)} with paired bootstrap {c.level:.0%} intervals: "
            f"{c.resamples} resamples of the prompts within each tag (seed {c.seed}); overall = mean of the tags.")
    return "\n".join([*lines, "", note]) + "\n"


__all__ = [
    "CompareError", "Comparison", "EvalResults", "Row", "Verdict", "bootstrap_scores", "check_request",
    "check_same_evaluation",
    "compare", "key_of", "point_scores", "read_results", "tag_order", "to_markdown",
]
