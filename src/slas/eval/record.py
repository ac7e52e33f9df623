"""Where an evaluation is kept: a row in the job store's ``evals`` table, and metrics on the checkpoint's MLflow run.

Every benchmark command (``slas eval geneval``, ``slas eval unigenbench``) and the evaluation during
training end here, so an evaluation is found the same way whoever ran it: ``slas eval compare`` reads the
row's results, model selection reads its ``overall``, and the MLflow run of the job that trained the
checkpoint shows ``eval/<benchmark>/<tag>`` at the checkpoint's iteration beside the training curves.

The store row is the record: when the store cannot be written the command fails (its results are on disk
already). MLflow is a view: when it cannot be reached the command warns in one line and succeeds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slas.credentials import redact_text
from slas.errors import one_line

if TYPE_CHECKING:
    from slas.eval.runner import GenevalPlan
    from slas.platform.db import Store
    from slas.platform.schema import Evaluation

MLFLOW_TIMEOUT = 10  # seconds an MLflow call may take before the evaluation gives up on logging it


@dataclass(frozen=True)
class CheckpointOwner:
    """The job a checkpoint belongs to (if any), its iteration, and that job's MLflow run."""

    checkpoint: str
    job_id: int | None = None
    iteration: int | None = None
    mlflow_run_id: str | None = None


def eval_metrics(benchmark: str, scores: Mapping[str, float]) -> dict[str, float]:
    """``eval/<benchmark>/<tag>`` for every score (``overall`` included): the names MLflow and
    ``metrics.jsonl`` show, and the ones model selection reads."""
    return {f"eval/{benchmark}/{tag}": float(value) for tag, value in scores.items()}


def iteration_of(checkpoint: Path) -> int | None:
    """A trainer checkpoint's iteration from its name (``iter_000040`` -> 40); ``None`` for anything else."""
    digits = checkpoint.name.removeprefix("iter_")
    return int(digits) if checkpoint.name.startswith("iter_") and digits.isdigit() else None


def checkpoint_owner(store: Store, checkpoint: str | Path | None, label: str) -> CheckpointOwner:
    """Who trained ``checkpoint`` according to the store: the job that recorded that checkpoint, else the
    newest job writing its run dir (``runs/NAME`` for ``runs/NAME/checkpoints/iter_N``). A model dir
    (``checkpoint`` None) or a checkpoint no job knows is recorded without a job, under ``label``."""
    if checkpoint is None:
        return CheckpointOwner(label)
    ckpt = Path(checkpoint).expanduser().resolve()
    job_id = store.job_of_checkpoint(ckpt)
    if job_id is None and ckpt.parent.name == "checkpoints":
        jobs = store.find_jobs_by_run_dir(ckpt.parent.parent)
        job_id = jobs[0].id if jobs else None
    run_id = store.get_job(job_id).mlflow_run_id if job_id is not None else None
    return CheckpointOwner(str(ckpt), job_id, iteration_of(ckpt), run_id)


def geneval_settings(plan: GenevalPlan) -> dict[str, Any]:
    """What makes two GenEval evaluations comparable: the prompt set, images per prompt, seed, detector and
    the sampler settings the images were rendered with."""
    sample = plan.source.sample
    options = {k: str(v) for k, v in plan.detector_options.items() if v is not None}
    return {"metadata": plan.metadata_file, "prompts": len(plan.records), "images_per_prompt": plan.images_per_prompt,
            "seed": plan.seed, "detector": plan.detector, **({"detector_options": options} if options else {}),
            "sampler": {"resolution": sample.resolution, "num_steps": sample.num_steps,
                        "guidance_scale": sample.guidance_scale}}


def unigenbench_settings(plan: Any) -> dict[str, Any]:
    """What makes two UniGenBench++ evaluations comparable: the prompt set and how many of it, images per
    prompt, seed, the judge and its protocol, and the sampler settings (``plan``: a ``UnigenPlan``)."""
    sample = plan.source.sample
    return {"prompt_set": plan.prompt_set, "prompts_file": plan.prompts_file, "prompts": len(plan.items),
            "images_per_prompt": plan.images_per_prompt, "seed": plan.seed,
            "judge_model": plan.judge_label or plan.judge_model, "protocol": plan.protocol,
            "sampler": {"resolution": sample.resolution, "num_steps": sample.num_steps,
                        "guidance_scale": sample.guidance_scale}}


def log_on_run(run_id: str, metrics: Mapping[str, float], step: int) -> bool:
    """Log ``metrics`` at ``step`` on the MLflow run ``run_id`` (finished runs take metrics too); False, with
    a one-line warning, when MLflow is off or cannot be reached: the evaluation stands without it."""
    from slas.platform.tracking import default_tracking_uri, mlflow_enabled

    if not mlflow_enabled():
        return False
    try:
        _send(run_id, metrics, step, default_tracking_uri())
    except Exception as exc:  # any failure of the view leaves the evaluation (and its store row) standing
        warnings.warn(f"MLflow: the evaluation's metrics were not logged on run {run_id} "
                      f"({redact_text(one_line(exc))}); they are in the job store", RuntimeWarning, stacklevel=2)
        return False
    return True


def _send(run_id: str, metrics: Mapping[str, float], step: int, uri: str) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from slas.platform.tracking.mlflow_run import clean_key
    from slas.platform.tracking.outage import http_limits

    now = int(time.time() * 1000)
    with http_limits(MLFLOW_TIMEOUT, 0):
        client = MlflowClient(tracking_uri=uri)
        client.log_batch(run_id, metrics=[Metric(clean_key(k), float(v), now, int(step)) for k, v in metrics.items()])


def record_eval(
    store: Store,
    owner: CheckpointOwner,
    *,
    benchmark: str,
    scores: Mapping[str, float | None],
    n_images: int,
    settings: Mapping[str, Any],
    out: str | Path,
) -> Evaluation:
    """The evaluation's store row (the record: errors propagate), then its ``eval/<benchmark>/<tag>``
    metrics on the owner job's MLflow run at the checkpoint's iteration (a view: a warning when it fails).
    A score of ``None`` (a dimension no prompt tested) is left out."""
    root = Path(out).expanduser().resolve()
    scores = {tag: value for tag, value in scores.items() if value is not None}  # a dimension nothing tested
    row = store.add_eval(checkpoint=owner.checkpoint, benchmark=benchmark, scores=scores, n_images=n_images,
                         settings=settings, job_id=owner.job_id, iteration=owner.iteration,
                         results_path=root / "results.jsonl", images_dir=root / "images")
    if owner.mlflow_run_id:
        log_on_run(owner.mlflow_run_id, eval_metrics(benchmark, scores), owner.iteration or 0)
    return row


def record_run(
    store: Store,
    *,
    checkpoint: str | Path | None,
    label: str,
    benchmark: str,
    scores: Mapping[str, float | None],
    n_images: int,
    settings: Mapping[str, Any],
    out: str | Path,
) -> tuple[Evaluation, CheckpointOwner]:
    """What a benchmark command calls after it wrote its outputs: find the checkpoint's job
    (:func:`checkpoint_owner`) and record the evaluation there (:func:`record_eval`)."""
    owner = checkpoint_owner(store, checkpoint, label)
    row = record_eval(store, owner, benchmark=benchmark, scores=scores, n_images=n_images, settings=settings, out=out)
    return row, owner


def recorded_line(row: Evaluation, owner: CheckpointOwner) -> str:
    """The line a command prints once its evaluation is recorded."""
    where = f"job {owner.job_id}" if owner.job_id is not None else "no job (the checkpoint is not a known job's)"
    run = f", metrics on MLflow run {owner.mlflow_run_id}" if owner.mlflow_run_id else ""
    return f"recorded as evaluation {row.id} in the job store ({where}{run}); compare with: slas eval compare {row.id} ..."


def results_of(spec: str, store_opener: Any = None) -> tuple[Path, str]:
    """What ``slas eval compare`` reads for ``spec``: an eval output dir (or its results file) as given, or
    an evaluation id of the job store (its recorded results); with a label for the table."""
    path = Path(spec).expanduser()
    if path.exists() or not spec.strip().isdigit():
        return path, spec
    if store_opener is None:
        from slas.platform.db import open_store as store_opener
    with store_opener() as store:
        row = store.get_eval(int(spec))
    if not row.results_path:
        from slas.eval.compare import CompareError

        raise CompareError(f"evaluation {spec} recorded no results file")
    return Path(row.results_path), f"eval {spec} ({_short(row.checkpoint, row.iteration)})"


def _short(checkpoint: str, iteration: int | None) -> str:
    """``NAME/iter_N`` for a trainer checkpoint, the folder name for anything else."""
    path = Path(checkpoint)
    if iteration is not None and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


__all__ = [
    "CheckpointOwner", "checkpoint_owner", "eval_metrics", "geneval_settings", "iteration_of", "log_on_run",
    "record_eval", "record_run", "recorded_line", "results_of", "unigenbench_settings",
]
