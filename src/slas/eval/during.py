"""A held-out evaluation during training (the run config's ``eval:`` section), as Flow-GRPO evaluates GenEval
while it trains.

The training reward is what the policy optimises, so it is the number most likely to be gamed; a held-out
judge on prompts the run never trains on is the number to select checkpoints by. Every ``eval.every``
iterations and at the last one, :class:`TrainingEval` renders the evaluation prompts with the live policy's
deterministic sampler, judges the saved images with GenEval's rules (the same code as ``slas eval geneval``,
so the score equals what that command gives on the checkpoint written at the same iteration), returns
``eval/geneval/<tag>`` as the iteration's extra metrics and records the evaluation in the job store. Its
outputs go to ``<run dir>/evals/iter_N/`` (``results.jsonl``, ``summary.json``, ``images/``), which
``slas eval compare`` reads.

:func:`check_eval` is the section's preflight: an unknown detector, absent detector weights or a bad prompt
file are one line each before any model loads.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slas.errors import SlasError, one_line
from slas.rl.protocols import Callback

if TYPE_CHECKING:
    from slas.config import EvalConfig, SLASConfig
    from slas.eval.runner import GenevalPlan
    from slas.rl.trainer import Trainer

EVALS_DIR = "evals"  # under the run dir: one folder per evaluated iteration
# the CLI flags the runner's errors name (``--detector-model DIR``), as the run config's keys (``eval.detector_model=DIR``)
_FLAG = re.compile(r"--(detector-model|clip-model|detector|metadata)\b(?: (?!is\b)(\S+))?")


def _as_config_key(message: str) -> str:
    """A runner error in the words of a run config: ``--metadata: X`` is ``eval.metadata: X``, ``pass
    --detector-model DIR`` is ``pass eval.detector_model=DIR``."""
    def key(m: re.Match) -> str:
        name = "eval." + m.group(1).replace("-", "_")
        return f"{name}={m.group(2)}" if m.group(2) else name

    said = _FLAG.sub(key, message)
    return said if said.startswith("eval.") else f"eval: {said}"


def round_robin(records: Sequence[dict], limit: int | None) -> list[dict]:
    """``limit`` records taken one tag at a time in file order (GenEval's file is sorted by tag, so its
    first N prompts would all be ``single_object``); all of them, in file order, without a limit."""
    if limit is None or limit >= len(records):
        return list(records)
    queues: dict[str, list[dict]] = {}
    for rec in records:
        queues.setdefault(rec["tag"], []).append(rec)
    picked: list[dict] = []
    while len(picked) < limit:
        for queue in queues.values():
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    order = {id(rec): i for i, rec in enumerate(records)}
    return sorted(picked, key=lambda rec: order[id(rec)])


def _options(section: EvalConfig) -> dict[str, Any]:
    return {"detector_model": section.detector_model, "clip_model": section.clip_model}


def eval_records(section: EvalConfig) -> tuple[list[dict], str]:
    """The section's prompts (checked, subset taken) and where they come from; runner errors as they are."""
    from slas.eval.detectors import check_classes, check_detector
    from slas.eval.runner import default_metadata, load_metadata

    check_detector(section.detector, _options(section))
    meta = section.metadata if section.metadata is not None else default_metadata(section.detector)
    records = load_metadata(meta)
    check_classes(section.detector, _options(section), records)
    where = str(Path(meta).resolve()) if meta is not None else "shapes world test split"
    return round_robin(records, section.prompts_limit), where


def check_eval(config: SLASConfig) -> None:
    """The ``eval:`` section's preflight (nothing when it is off): one line naming the key that is wrong."""
    from slas.preflight import PreflightError

    if config.eval is None:
        return
    try:
        eval_records(config.eval)
    except SlasError as exc:
        raise PreflightError(_as_config_key(one_line(exc))) from None


def training_plan(config: SLASConfig) -> GenevalPlan:
    """The evaluation of ``config``'s ``eval:`` section as a GenEval plan rendered with the run's own model
    and sampler settings (the live policy stands in for the checkpoint)."""
    from slas.eval.runner import EvalSource, GenevalPlan

    section = config.eval
    assert section is not None
    records, where = eval_records(section)
    source = EvalSource(config.run.name, config.model, config.sample)
    return GenevalPlan(source, records, where, section.detector, section.images_per_prompt, section.batch_size,
                       section.seed, _options(section))


class TrainingEval(Callback):
    """Evaluates the live policy every ``every`` iterations and at iteration ``until`` (rank 0 only).

    ``record(**row)`` stores the evaluation (the run passes the job store's ``add_eval`` through its durable
    recorder; ``None`` keeps it in the run dir and the metrics only). A failing evaluation is a one-line
    warning, never the run's end: the iteration's update is done but its checkpoint is not written yet.
    """

    def __init__(self, config: SLASConfig, record: Callable[..., Any] | None = None) -> None:
        section = config.eval
        if section is None:
            raise ValueError("TrainingEval needs a config with an eval: section")
        self.config = config
        self.plan: GenevalPlan | None = None  # built at the start of training, after the run's preflight
        self.every = section.every or config.run.checkpoint_every
        self.until = config.run.iterations
        self.record = record
        self.evals: list[dict[str, Any]] = []  # {"iteration", "scores"} of each evaluation, in order

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.rank == 0 and self.plan is None:
            self.plan = training_plan(self.config)

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0 or iteration == self.until

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> dict[str, float] | None:
        if trainer.rank != 0 or not self.due(trainer.iteration):
            return None
        try:
            return self.evaluate(trainer)
        except Exception as exc:  # the evaluation is a view of the run; the weights must still be checkpointed
            warnings.warn(f"evaluation at iteration {trainer.iteration} failed and was skipped: "
                          f"{one_line(exc, with_type=True)}", RuntimeWarning, stacklevel=2)
            return None

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Render, judge and record the live policy now; the metrics of this iteration."""
        from slas.eval.record import eval_metrics, geneval_settings
        from slas.eval.runner import run_geneval

        if self.plan is None:
            self.plan = training_plan(self.config)
        out = (trainer.run_dir / EVALS_DIR / f"iter_{trainer.iteration:06d}").resolve()
        summary, results = run_geneval(self.plan, out, progress=False, load=lambda _source: trainer.policy)
        self.evals.append({"iteration": trainer.iteration, "scores": summary})
        if self.record is not None:
            ckpt = (trainer.ckpt_dir / f"iter_{trainer.iteration:06d}").resolve()
            self.record(checkpoint=str(ckpt), iteration=trainer.iteration, benchmark="geneval", scores=summary,
                        n_images=len(results), settings=geneval_settings(self.plan),
                        results_path=str(out / "results.jsonl"), images_dir=str(out / "images"), replace=True)
        return eval_metrics("geneval", summary)


__all__ = ["EVALS_DIR", "TrainingEval", "check_eval", "eval_records", "round_robin", "training_plan"]
