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

UniGenBench++ results (``slas eval unigenbench``'s ``results.jsonl``: one row per image with its ``index``,
``prompt``, ``seed``, ``image`` ``images/<index>_<j>.png`` and ``testpoints``, each with a ``verdict`` 1, 0
or null) are recognised by their ``testpoints`` and compared on their own units: the key is (prompt index,
image index, test point's position), with the same test point, prompt and seed in every run. A primary
dimension's score is a run's met test points over its judged ones (the benchmark's pooling; a test point
whose judge answer did not parse counts in neither), and its interval resamples, within that dimension,
the prompts that test it. ``overall`` is the mean of the dimensions, the benchmark's Overall, but its
interval draws all prompts at once: dimensions are not strata as GenEval's tags are (a prompt tests 2.9
dimensions on average in the short set, 4.8 in the long one, and one image answers all of them), and
independent draws per dimension would treat their correlated differences as independent and narrow
Overall's interval. Two UniGenBench++ results compare only with the same prompt set (short or long) and the
same judge protocol: each row records both (rows written before they did: the prompt set is the shipped
set whose prompts they match, the protocol ``benchmark`` when the rows kept the evaluator's ``output``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
_UNIGEN_IMAGE = re.compile(r"(?:^|[/\\])(\d+)_(\d+)\.[A-Za-z0-9]+$")
BENCHMARK_NAMES = {"geneval": "GenEval", "unigenbench": "UniGenBench++"}

Key = tuple[int, ...]  # (prompt index, image index), then the test point's position for UniGenBench++


class CompareError(SlasError, ValueError):
    """Runs that cannot be compared (not the same evaluation, unreadable results); one line naming it."""


@dataclass(frozen=True)
class Verdict:
    """One image's row: what it was asked (tag, prompt, seed) and how it was judged (``value`` in [0, 1]).
    For UniGenBench++ one test point of an image: ``tag`` is the test point, ``value`` NaN when unjudged."""

    tag: str
    prompt: str
    seed: int | None
    value: float


@dataclass(frozen=True)
class EvalResults:
    """One evaluation's verdicts by key: per (prompt index, image index) for GenEval, per (prompt index, image
    index, test point) for UniGenBench++, with the prompt set and judge protocol that make its scores what
    they are (``None`` for GenEval)."""

    label: str
    verdicts: Mapping[Key, Verdict]
    benchmark: str = "geneval"
    prompt_set: str | None = None
    protocol: str | None = None


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
    benchmark: str = "geneval"
    units: int = 0  # UniGenBench++: test points per run
    prompt_set: str | None = None
    protocol: str | None = None


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


def _rows(file: Path) -> Iterator[tuple[str, object]]:
    """The non-blank lines of a results file, parsed one at a time, each with where it is (for the errors)."""
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file} line {n}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompareError(f"{where} is not JSON ({exc.msg})") from None


def read_results(path: str | Path, label: str | None = None) -> EvalResults:
    """An evaluation's verdicts from its output dir (or its ``results.jsonl``), GenEval's or UniGenBench++'s
    (told by the first row: UniGenBench++ rows have ``testpoints``); one-line errors naming the line."""
    p = Path(path).expanduser()
    file = p / RESULTS if p.is_dir() else p
    if not file.is_file():
        raise CompareError(f"{path}: no {RESULTS} there (give an eval output dir or an evaluation id)")
    rows = _rows(file)
    first = next(rows, None)
    if first is None:
        raise CompareError(f"{file} holds no results")
    if isinstance(first[1], dict) and "testpoints" in first[1]:
        return read_unigenbench(itertools.chain([first], rows), file, label or str(path))
    verdicts: dict[Key, Verdict] = {}
    for where, row in itertools.chain([first], rows):
        verdict = _verdict(row, where)
        key = key_of(row, where)
        if key in verdicts:
            raise CompareError(f"{where}: prompt {key[0]} image {key[1]} appears twice")
        verdicts[key] = verdict
    return EvalResults(label or str(path), verdicts)


def unigen_units(row: object, where: str) -> list[tuple[Key, Verdict]]:
    """One UniGenBench++ image row as its test points, keyed (prompt index, image index, position): the
    image index is read from the benchmark's file name ``<index>_<image>.png``."""
    from slas.eval.unigenbench import UnigenbenchError, dimension_of

    if not (isinstance(row, dict) and isinstance(row.get("index"), int) and isinstance(row.get("prompt"), str)
            and isinstance(row.get("testpoints"), list) and row["testpoints"]):
        raise CompareError(f"{where}: not a UniGenBench++ results row (needs 'index', 'prompt', 'image' and "
                           "'testpoints')")
    match = _UNIGEN_IMAGE.search(str(row.get("image", "")))
    if match is None or int(match.group(1)) != row["index"]:
        raise CompareError(f"{where}: no image index: 'image' is not .../{row['index']}_<image>.png")
    seed = row.get("seed")
    units = []
    for j, point in enumerate(row["testpoints"]):
        name = point.get("testpoint") if isinstance(point, dict) else None
        mark = point.get("verdict", -1) if isinstance(point, dict) else -1
        if not isinstance(name, str) or not (mark is None or (isinstance(mark, bool | int) and mark in (0, 1))):
            raise CompareError(f"{where}: test point {j} needs a 'testpoint' and a 'verdict' of 1, 0 or null")
        try:
            dimension_of(name)
        except UnigenbenchError as exc:
            raise CompareError(f"{where}: {exc}") from None
        units.append(((row["index"], int(match.group(2)), j),
                      Verdict(name, row["prompt"], int(seed) if isinstance(seed, int) else None,
                              math.nan if mark is None else float(mark))))
    return units


def read_unigenbench(rows: Iterator[tuple[str, object]], file: Path, label: str) -> EvalResults:
    """A UniGenBench++ ``results.jsonl`` as test-point verdicts, with the prompt set and judge protocol its
    rows record (or, for rows written before they recorded them, what the rows show: see the module doc)."""
    verdicts: dict[Key, Verdict] = {}
    recorded: dict[str, set] = {"prompt_set": set(), "protocol": set()}
    kept_output = False
    for where, row in rows:
        for key, verdict in unigen_units(row, where):
            if key in verdicts:
                raise CompareError(f"{where}: prompt {key[0]} image {key[1]} appears twice")
            verdicts[key] = verdict
        for name, seen in recorded.items():
            seen.add(row.get(name))
        kept_output |= "output" in row
    found = {}
    for name, seen in recorded.items():
        values = sorted(str(v) for v in seen - {None})
        if len(values) > 1:
            raise CompareError(f"{file}: rows of more than one {name} ({', '.join(values)})")
        found[name] = values[0] if values else None
    prompt_set = found["prompt_set"] or shipped_prompt_set(verdicts)
    protocol = found["protocol"] or ("benchmark" if kept_output else "testpoint")
    return EvalResults(label, verdicts, "unigenbench", prompt_set, protocol)


def shipped_prompt_set(verdicts: Mapping[Key, Verdict]) -> str | None:
    """The shipped UniGenBench++ set (``short`` | ``long``) whose prompts ``verdicts`` were asked, for rows
    that do not say; ``None`` when no shipped set has all of them."""
    from slas.eval.unigenbench import PROMPT_SETS, UnigenbenchError, load_prompt_set, prompt_file

    asked = {key[0]: v.prompt for key, v in verdicts.items()}
    for name in PROMPT_SETS:
        try:
            texts = {item.index: item.prompt for item in load_prompt_set(prompt_file(name))[0]}
        except UnigenbenchError:  # not in this install: nothing to match against
            continue
        if all(texts.get(index) == prompt for index, prompt in asked.items()):
            return name
    return None


def _unit(key: Key) -> str:
    """A key in words: ``prompt P image I`` (GenEval), then ``test point J`` (UniGenBench++)."""
    return f"prompt {key[0]} image {key[1]}" + (f" test point {key[2]}" if len(key) > 2 else "")


def check_same_benchmark(runs: Sequence[EvalResults]) -> None:
    """Every run is of the first one's benchmark and, for UniGenBench++, of its prompt set and judge protocol;
    checked before the keys so that the message says what differs, naming both inputs."""
    base = runs[0]
    for run in runs[1:]:
        if run.benchmark != base.benchmark:
            raise CompareError(f"not the same evaluation: {base.label} is a {BENCHMARK_NAMES[base.benchmark]} result, "
                               f"{run.label} a {BENCHMARK_NAMES[run.benchmark]} one")
        if run.prompt_set != base.prompt_set:
            raise CompareError(f"not the same evaluation: {base.label} is on UniGenBench++'s "
                               f"{base.prompt_set or 'unrecognised'} prompts, {run.label} on its "
                               f"{run.prompt_set or 'unrecognised'} prompts")
        if run.protocol != base.protocol:
            raise CompareError(f"not the same evaluation: {base.label} was judged with the {base.protocol} protocol, "
                               f"{run.label} with the {run.protocol} protocol")


def check_same_evaluation(runs: Sequence[EvalResults]) -> None:
    """Every run has the first one's keys, each with the same tag (test point), prompt and seed."""
    base = runs[0]
    units = "test points" if base.benchmark == "unigenbench" else "images"
    for run in runs[1:]:
        missing = sorted(set(base.verdicts) - set(run.verdicts))
        extra = sorted(set(run.verdicts) - set(base.verdicts))
        if missing or extra:
            key, side = (missing[0], f"{run.label} lacks") if missing else (extra[0], f"{base.label} lacks")
            raise CompareError(f"not the same evaluation: {base.label} has {len(base.verdicts)} {units}, {run.label} "
                               f"{len(run.verdicts)}; {side} {_unit(key)}")
        for key in sorted(base.verdicts):
            a, b = base.verdicts[key], run.verdicts[key]
            for what in ("tag", "prompt", "seed"):
                if getattr(a, what) != getattr(b, what):
                    shown = "test point" if what == "tag" and len(key) > 2 else what
                    raise CompareError(f"not the same evaluation: {_unit(key)} has {shown} "
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


def unigen_tables(runs: Sequence[EvalResults]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                        dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per UniGenBench++ primary dimension (Table 2's order): met and judged test points [runs, prompts] over
    the prompts that test it (the strata of its interval), and the same over every prompt, zero where a
    prompt does not test it (the one draw of ``overall``). Each run keeps its own judged counts."""
    from slas.eval.unigenbench import DIMENSIONS, dimension_of

    base = runs[0].verdicts
    column = {p: i for i, p in enumerate(sorted({key[0] for key in base}))}
    dimension = {v.tag: dimension_of(v.tag) for v in base.values()}
    tested: dict[str, set[int]] = {}
    for key, v in base.items():
        tested.setdefault(dimension[v.tag], set()).add(column[key[0]])
    order = [name for name, _ in DIMENSIONS if name in tested]
    met = {d: np.zeros((len(runs), len(column))) for d in order}
    judged = {d: np.zeros((len(runs), len(column))) for d in order}
    for r, run in enumerate(runs):
        for key, v in run.verdicts.items():
            if not math.isnan(v.value):
                met[dimension[v.tag]][r, column[key[0]]] += v.value
                judged[dimension[v.tag]][r, column[key[0]]] += 1
    strata = {}
    for d in order:
        cols = sorted(tested[d])
        strata[d] = (met[d][:, cols], judged[d][:, cols])
    return strata, {d: (met[d], judged[d]) for d in order}


def resampled_ratio(hits: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[runs, resamples] pooled scores of drawn prompts: hits [runs, prompts] over counts ([prompts], shared
    by the runs, or [runs, prompts]), the prompts of draw ``b`` being ``idx[b]``."""
    return hits[..., idx].sum(-1) / counts[..., idx].sum(-1)


def bootstrap_scores(tables: Mapping[str, tuple[np.ndarray, np.ndarray]], resamples: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per tag and ``overall``: [runs, resamples] scores, prompts drawn with replacement within each tag
    (one draw shared by every run: the pairing)."""
    out = {}
    for tag, (hits, counts) in tables.items():
        n = counts.shape[-1]
        out[tag] = resampled_ratio(hits, counts, rng.integers(0, n, size=(resamples, n)))
    out["overall"] = np.mean([out[t] for t in tables], axis=0)
    return out


def point_scores(tables: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per tag and ``overall``: [runs] scores on the whole set (the benchmark's own numbers)."""
    out = {tag: hits.sum(-1) / counts.sum(-1) for tag, (hits, counts) in tables.items()}
    out["overall"] = np.mean([out[t] for t in tables], axis=0)
    return out


def unigen_scores(strata: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  everything: Mapping[str, tuple[np.ndarray, np.ndarray]], resamples: int,
                  rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """UniGenBench++'s point scores and draws: each dimension drawn within its strata
    (:func:`bootstrap_scores`), ``overall`` = the mean of the dimensions on one draw of all prompts. A run
    that judged none of a dimension's (drawn) test points has no score there (NaN), and its ``overall`` is
    the mean of the dimensions it has, as the benchmark's summary computes it."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a run without any judged test point
        point = point_scores(strata)
        point["overall"] = np.nanmean([point[d] for d in strata], axis=0)
        drawn = bootstrap_scores(strata, resamples, rng)  # its within-strata "overall" is replaced below
        n = next(iter(everything.values()))[1].shape[-1]
        idx = rng.integers(0, n, size=(resamples, n))
        drawn["overall"] = np.nanmean([resampled_ratio(m, j, idx) for m, j in everything.values()], axis=0)
    return point, drawn


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
    check_same_benchmark(runs)
    check_same_evaluation(runs)
    rng = np.random.default_rng(seed)
    base = runs[0]
    if base.benchmark == "unigenbench":
        tables, everything = unigen_tables(runs)
        point, drawn = unigen_scores(tables, everything, resamples, rng)
        total = next(iter(everything.values()))[1].shape[-1]
    else:
        tables = _by_tag(runs)
        point = point_scores(tables)
        drawn = bootstrap_scores(tables, resamples, rng)
        total = sum(len(c) for _, c in tables.values())
    tail = (1 - level) / 2 * 100
    rows = []
    for tag in [*tables, "overall"]:
        diffs = drawn[tag][1:] - drawn[tag][0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row no draw could score: NaN bounds
            percentile = np.nanpercentile if np.isnan(diffs).any() else np.percentile
            lows, highs = percentile(diffs, [tail, 100 - tail], axis=1)
        n = tables[tag][1].shape[-1] if tag in tables else total
        rows.append(Row(tag, n, tuple(map(float, point[tag])), tuple(map(float, point[tag][1:] - point[tag][0])),
                        tuple(map(float, lows)), tuple(map(float, highs))))
    images = len({key[:2] for key in base.verdicts})
    return Comparison(tuple(r.label for r in runs), tuple(rows), resamples, seed, level, images, base.benchmark,
                      len(base.verdicts), base.prompt_set, base.protocol)


# ---------------------------------------------------------------------------------------------- the table


def _signed(x: float) -> str:
    return f"{0.0 if math.isclose(x, 0.0, abs_tol=5e-5) else x:+.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(c: Comparison) -> str:
    """The comparison as a markdown table (tags or dimensions, then ``overall``), with a line saying how it was
    computed."""
    base = c.labels[0]
    head = ["dimension" if c.benchmark == "unigenbench" else "tag", "prompts", *map(_cell, c.labels)]
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
    if c.benchmark == "unigenbench":
        note = (f"UniGenBench++ {c.prompt_set or 'unrecognised'} prompts, {c.protocol} judge protocol: {c.images} "
                f"images ({c.units} test points) per run. Differences to {_cell(base)} with paired bootstrap "
                f"{c.level:.0%} intervals: {c.resamples} resamples (seed {c.seed}) of the prompts testing each "
                "dimension; overall = mean of the dimensions, its interval from resampling all prompts at once "
                "(a prompt tests several dimensions).")
    return "\n".join([*lines, "", note]) + "\n"


__all__ = [
    "BENCHMARK_NAMES", "CompareError", "Comparison", "EvalResults", "Row", "Verdict", "bootstrap_scores",
    "check_request", "check_same_benchmark", "check_same_evaluation", "compare", "key_of", "point_scores",
    "read_results", "read_unigenbench", "resampled_ratio", "shipped_prompt_set", "tag_order", "to_markdown",
    "unigen_scores", "unigen_tables", "unigen_units",
]
