"""``slas eval geneval``: render a GenEval prompt set with a checkpoint's deterministic sampler and judge it.

The flow is plan -> render -> judge. :func:`plan_geneval` checks every input (checkpoint, metadata,
detector, overrides) and loads nothing heavy, so a typo fails in a second with one line. :func:`run_geneval`
renders every (prompt, seed) pair with the policy's deterministic sampler (fixed per-image seeds, so two
checkpoints see the same initial noise), writes the PNGs in GenEval's folder layout
(``images/<prompt index>/samples/<image index>.png`` beside a ``metadata.jsonl``, so GenEval's own
``evaluate_images.py`` can re-judge the folder), releases the policy, then judges the saved 8-bit images
with the chosen detector and GenEval's rules. One model is in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slas.config import ConfigError, ModelConfig, SampleConfig, apply_override
from slas.errors import SlasError
from slas.eval.geneval import GENEVAL_TAGS, evaluate, summarize

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
IMAGES = "images"
SHAPES_STEPS = 10  # the shapes world's evaluation steps (its pretraining and demo judge with 10)
FAMILIES = {"FluxPipeline": "flux", "StableDiffusionPipeline": "sd"}
DATA_DIR = Path(__file__).resolve().parents[3] / "data"  # a source checkout's data/ (benchmark prompt sets)
GENEVAL_DATA = DATA_DIR / "geneval"
GENEVAL_METADATA = "evaluation_metadata.jsonl"


class GenevalError(SlasError, ValueError):
    """Bad ``slas eval geneval`` input; the message is one line naming it."""


@dataclass
class EvalSource:
    """What renders the images: the model (and sampler settings) plus, for a trainer checkpoint, its weights."""

    label: str
    model: ModelConfig
    sample: SampleConfig
    checkpoint: Path | None = None  # a trainer checkpoint dir (its ``trainable/`` is loaded over the model)


@dataclass
class GenevalPlan:
    """A validated request: nothing in it can fail for a reason the user could have fixed up front."""

    source: EvalSource
    records: list[dict]
    metadata_file: str
    detector: str
    images_per_prompt: int = 4
    batch_size: int = 8
    seed: int = 0
    detector_options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.records) * self.images_per_prompt


# ---------------------------------------------------------------------------------------------- metadata


def default_metadata(detector: str) -> Path | None:
    """The prompt set a detector is meant for: ``None`` (the shapes world's test split) for ``shapes``,
    GenEval's 553 prompts shipped in ``data/geneval/`` for a COCO detector."""
    if detector == "shapes":
        return None
    path = GENEVAL_DATA / GENEVAL_METADATA
    if not path.is_file():
        raise GenevalError(f"--metadata: GenEval's prompt file is not in this install ({path}); pass --metadata FILE")
    return path


def check_record(record: Any, where: str) -> dict:
    """One GenEval metadata row, or a one-line error naming the row and the missing or wrong field."""
    if not isinstance(record, dict):
        raise GenevalError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("tag", "prompt", "include"):
        if key not in record:
            raise GenevalError(f"{where}: no {key!r} field (GenEval rows have tag, prompt, include)")
    if record["tag"] not in GENEVAL_TAGS:
        raise GenevalError(f"{where}: tag {record['tag']!r} is not a GenEval tag ({', '.join(GENEVAL_TAGS)})")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        raise GenevalError(f"{where}: 'prompt' must be a non-empty string")
    reqs = [("include", r) for r in record["include"]] if isinstance(record["include"], list) else None
    if not reqs:
        raise GenevalError(f"{where}: 'include' must be a non-empty list of {{class, count}} requirements")
    exclude = record.get("exclude", [])
    if not isinstance(exclude, list):
        raise GenevalError(f"{where}: 'exclude' must be a list")
    for kind, req in [*reqs, *(("exclude", r) for r in exclude)]:
        if not isinstance(req, dict) or not isinstance(req.get("class"), str) or not isinstance(req.get("count"), int):
            raise GenevalError(f"{where}: each {kind!r} requirement needs a 'class' string and an integer 'count'")
    return record


def load_metadata(path: str | Path | None) -> list[dict]:
    """GenEval rows from a JSON-lines file (``None``: the shapes world's test split), each one checked."""
    if path is None:
        from slas.shapes.prompts import metadata

        return metadata("test")
    p = Path(path).expanduser()
    if not p.is_file():
        raise GenevalError(f"--metadata: {p} is not a file")
    records = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenevalError(f"--metadata: {p} line {n} is not JSON ({exc.msg})") from None
        records.append(check_record(row, f"--metadata: {p} line {n}"))
    if not records:
        raise GenevalError(f"--metadata: {p} holds no prompts")
    return records


# ---------------------------------------------------------------------------------------------- checkpoints


def _is_shapes_model(path: Path) -> bool:
    from slas.shapes.assets import T2I, assets_dir

    try:
        return path.resolve() == (assets_dir() / T2I).resolve()
    except OSError:
        return False


def model_dir_defaults(path: Path) -> tuple[dict, dict]:
    """The model and sample sections for a bare diffusers dir: the family from ``model_index.json``'s
    ``_class_name``; the shapes world's own settings for the shipped shapes model, else the config defaults."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GenevalError(f"--checkpoint: {path}/model_index.json cannot be read ({exc})") from None
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in FAMILIES:
        raise GenevalError(f"--checkpoint: {path} is a {cls} model; supported: {', '.join(FAMILIES)}")
    model = {"family": FAMILIES[cls], "path": str(path.resolve())}
    sample: dict[str, Any] = {}
    if _is_shapes_model(path):
        from slas.shapes.models import IMAGE_SIZE, TEXT_MAX_LENGTH

        sample = {"resolution": IMAGE_SIZE, "num_steps": SHAPES_STEPS, "max_sequence_length": TEXT_MAX_LENGTH}
    return model, sample


def _model_dir_source(path: Path, overrides: Sequence[str]) -> EvalSource:
    """A bare diffusers model dir, with ``--set model.*=`` / ``sample.*=`` overrides over its defaults."""
    model, sample = model_dir_defaults(path)
    data = {"model": model, "sample": sample}
    for ov in overrides:
        if ov.partition("=")[0].strip().split(".")[0] not in data:
            raise GenevalError(f"--set {ov}: a model dir takes only model.* and sample.* overrides")
        apply_override(data, ov)
    from pydantic import ValidationError

    try:
        return EvalSource(path.name, ModelConfig.model_validate(data["model"]), SampleConfig.model_validate(data["sample"]))
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--set: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _checkpoint_source(path: Path, overrides: Sequence[str]) -> EvalSource:
    """A trainer checkpoint or a run dir (its newest complete checkpoint), rendered with its run config."""
    from slas.platform.sampling import SamplingError, _checkpoint_dir, _run_config_of

    try:
        ckpt = _checkpoint_dir(str(path))
    except SamplingError as exc:
        raise GenevalError(str(exc).replace("--checkpoints:", "--checkpoint:", 1)) from None
    cfg = _run_config_of(ckpt, list(overrides))
    if cfg is None:
        raise GenevalError(f"--checkpoint: no run config for {path} (no config.yaml in its run dir, none in "
                           "trainer_state.json)")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    label = f"{run_dir.name}/{ckpt.name}" if run_dir is not None else ckpt.name
    return EvalSource(label, cfg.model, cfg.sample, ckpt)


def resolve_checkpoint(spec: str | Path, overrides: Sequence[str] = ()) -> EvalSource:
    """What ``--checkpoint`` names: a diffusers model dir, a trainer checkpoint, or a run dir."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise GenevalError(f"--checkpoint: {spec} does not exist (give a run dir, a checkpoint dir or a model dir)")
    if not path.is_dir():
        raise GenevalError(f"--checkpoint: {spec} is not a directory")
    if (path / "model_index.json").is_file():
        return _model_dir_source(path, overrides)
    return _checkpoint_source(path, overrides)


# ---------------------------------------------------------------------------------------------- plan


def plan_geneval(
    checkpoint: str | Path,
    *,
    metadata: str | Path | None = None,
    images_per_prompt: int = 4,
    detector: str = "shapes",
    overrides: Sequence[str] = (),
    batch_size: int = 8,
    seed: int = 0,
    detector_options: dict[str, Any] | None = None,
) -> GenevalPlan:
    """Check everything an evaluation needs, in the order a user would fix it, and load no model."""
    from slas.eval.detectors import check_classes, check_detector
    from slas.preflight import resolve_model_path

    if images_per_prompt < 1:
        raise GenevalError(f"--images-per-prompt must be >= 1, got {images_per_prompt}")
    if batch_size < 1:
        raise GenevalError(f"--batch-size must be >= 1, got {batch_size}")
    options = dict(detector_options or {})
    check_detector(detector, options)
    source = resolve_checkpoint(checkpoint, overrides)
    resolve_model_path(source.model.path, source.model.revision)  # one line with the fetch command when absent
    meta_path = metadata if metadata is not None else default_metadata(detector)
    records = load_metadata(meta_path)
    check_classes(detector, options, records)
    where = str(Path(meta_path).resolve()) if meta_path is not None else "shapes world test split"
    return GenevalPlan(source, records, where, detector, images_per_prompt, batch_size, seed, options)


# ---------------------------------------------------------------------------------------------- running


def load_source_policy(source: EvalSource) -> Any:
    """The policy of ``source``'s family, with the checkpoint's trained weights (full or LoRA) over it."""
    from slas.policies import load_policy

    policy = load_policy(source.model, source.sample)
    if source.checkpoint is not None:
        policy.load_trainable(source.checkpoint / "trainable")
    return policy


def image_path(root: Path, prompt_index: int, image_index: int) -> Path:
    """GenEval's layout: ``<root>/images/<prompt 05d>/samples/<image 04d>.png``."""
    return root / IMAGES / f"{prompt_index:05d}" / "samples" / f"{image_index:04d}.png"


def render_images(source: EvalSource, jobs: Sequence[tuple[str, int, Path]], *, batch_size: int,
                  load: Callable[[EvalSource], Any] = load_source_policy, progress: bool = True) -> None:
    """Render every ``(prompt, seed, PNG path)`` job with ``source``'s deterministic sampler, ``batch_size`` per
    call. One policy serves the whole set and is released before returning, so that a judge model can take
    its memory next (every benchmark here renders first and judges the saved 8-bit files after)."""
    import gc

    import torch
    from tqdm.auto import tqdm

    from slas.images import to_pil

    policy = load(source)
    bar = tqdm(total=len(jobs), unit="img", desc=f"render {source.label}", disable=not progress)
    try:
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b : b + batch_size]
            images = policy.generate([prompt for prompt, _, _ in batch], [seed for _, seed, _ in batch],
                                     batch_size=batch_size)
            for (_, _, path), image in zip(batch, images, strict=True):
                to_pil(image).save(path)
            bar.update(len(batch))
    finally:
        bar.close()
        del policy
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def render(plan: GenevalPlan, out: Path, *, load: Callable[[EvalSource], Any] = load_source_policy,
           progress: bool = True) -> list[dict]:
    """Render every image of ``plan`` to PNG under ``out``; one row (record, seed, image path) per image."""
    from slas.shapes.evaluate import expand

    _, seeds = expand(plan.records, plan.images_per_prompt, plan.seed)
    rows = [{"record": rec, "seed": seeds[p * plan.images_per_prompt + k],
             "image": image_path(out, p, k)} for p, rec in enumerate(plan.records) for k in range(plan.images_per_prompt)]
    for p, rec in enumerate(plan.records):
        folder = out / IMAGES / f"{p:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    render_images(plan.source, [(r["record"]["prompt"], r["seed"], r["image"]) for r in rows],
                  batch_size=plan.batch_size, load=load, progress=progress)
    return rows


def detection_row(det: Any) -> dict:
    """A detection as JSON: class, colour, box (x0, y0, x1, y1 pixels) and the detector's score when it has one."""
    row = {"class": det.shape, "color": det.color, "box": [float(v) for v in det.box]}
    score = getattr(det, "score", None)
    if score is not None:
        row["score"] = float(score)
    return row


def judge(plan: GenevalPlan, rows: list[dict], *, detector: Any = None, progress: bool = True) -> list[dict]:
    """Detect objects in the saved images and apply GenEval's rules; one result row per image."""
    from tqdm.auto import tqdm

    from slas.eval.detectors import build_detector
    from slas.images import load_image

    det = detector if detector is not None else build_detector(plan.detector, plan.detector_options)
    results = []
    batch_size = max(1, getattr(det, "batch_size", plan.batch_size))
    bar = tqdm(total=len(rows), unit="img", desc=f"judge ({plan.detector})", disable=not progress)
    try:
        for b in range(0, len(rows), batch_size):
            batch = rows[b : b + batch_size]
            images = [load_image(r["image"]) for r in batch]
            found = det(images, [r["record"] for r in batch])
            for row, objects in zip(batch, found, strict=True):
                rec = row["record"]
                correct, reason = evaluate(rec, objects, top_count=getattr(det, "ranked", False))
                results.append({"tag": rec["tag"], "prompt": rec["prompt"], "image": str(row["image"]),
                                "seed": row["seed"], "correct": bool(correct), "reason": reason,
                                "detections": [detection_row(d) for d in objects]})
            bar.update(len(batch))
    finally:
        bar.close()
    return results


def write_outputs(out: Path, results: Sequence[dict]) -> dict[str, float]:
    """``results.jsonl`` (one row per image) and ``summary.json`` (``overall`` first, then the tags)."""
    scores = summarize([r["tag"] for r in results], [r["correct"] for r in results])
    summary = {"overall": scores.pop("overall"), **scores}
    with (out / RESULTS).open("w", encoding="utf-8") as fh:
        for row in results:
            fh.write(json.dumps(row) + "\n")
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def run_geneval(plan: GenevalPlan, out: str | Path, *, progress: bool = True,
                load: Callable[[EvalSource], Any] = load_source_policy) -> tuple[dict[str, float], list[dict]]:
    """Render, judge and write ``plan`` under ``out``; the summary and the per-image rows."""
    root = Path(out).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    rows = render(plan, root, load=load, progress=progress)
    results = judge(plan, rows, progress=progress)
    return write_outputs(root, results), results


def summary_text(results: Sequence[dict]) -> str:
    """GenEval's ``summary_scores.py`` layout: totals, then per tag (in order of appearance), then overall."""
    import numpy as np

    by_prompt: dict[str, list[bool]] = {}
    by_tag: dict[str, list[bool]] = {}
    for r in results:
        by_prompt.setdefault(f"{r['tag']}\x00{r['prompt']}", []).append(r["correct"])
        by_tag.setdefault(r["tag"], []).append(r["correct"])
    correct = [r["correct"] for r in results]
    lines = ["Summary", "=======", f"Total images: {len(results)}", f"Total prompts: {len(by_prompt)}",
             f"% correct images: {np.mean(correct) if correct else 0.0:.2%}",
             f"% correct prompts: {np.mean([any(v) for v in by_prompt.values()]) if by_prompt else 0.0:.2%}",
             "", "Task breakdown", "=============="]
    for tag, hits in by_tag.items():
        lines.append(f"{tag:<16} = {np.mean(hits):.2%} ({sum(hits)} / {len(hits)})")
    overall = float(np.mean([np.mean(v) for v in by_tag.values()])) if by_tag else 0.0
    lines += ["", f"Overall score (avg. over tasks): {overall:.5f}"]
    return "\n".join(lines)


__all__ = [
    "RESULTS", "SUMMARY", "EvalSource", "GenevalError", "GenevalPlan", "default_metadata", "judge", "load_metadata",
    "load_source_policy", "plan_geneval", "render", "render_images",
    "resolve_checkpoint", "run_geneval", "summary_text", "write_outputs",
]
