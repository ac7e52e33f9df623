"""Assemble a training run from a config (preflight, policy, reward, data, tracker, trainer) and run it
as a job: recorded in the job store, stopped gracefully by SIGTERM, its checkpoints registered.

This is where the concrete models (``slas.policies``) meet the platform (store, MLflow); the trainer it
builds knows neither.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy.exc import SQLAlchemyError

from slas.config import SLASConfig, TrainConfig, flatten
from slas.credentials import redact_url
from slas.editing.data import EditingSource
from slas.editing.nft import DiffusionNFTObjective
from slas.errors import SlasError, one_line
from slas.platform.durable import DurableRecorder
from slas.platform.rundir import hold_run_dir, release_run_dir
from slas.platform.tracking import MLflowTracker, TeeTracker, TrackingError, make_tracker, read_metrics
from slas.policies import load_policy
from slas.preflight import preflight
from slas.rewards import build
from slas.rl import distributed, parallel
from slas.rl.callbacks import IterationLog, RewardJudgeCorrelation
from slas.rl.checkpoint import latest_checkpoint, list_checkpoints, remove_orphans
from slas.rl.protocols import Callback, Objective
from slas.rl.trainer import Trainer
from slas.t2i.prompts import PromptSource

if TYPE_CHECKING:
    from slas.platform.db import Store

SCORE_METRIC = "reward/total/mean"  # what decides which registered model version is "best" without an eval:
# what a run leaves in its run dir; a fresh (not resumed) run in a used dir moves them aside first
_RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "params.json", "images", "artifacts",
                MLflowTracker.STATE_NAME, MLflowTracker.BUFFER_NAME, "mlflow_buffer")


class NothingToResume(SlasError, FileNotFoundError):
    """``--resume`` on a run dir without a complete checkpoint."""


def check_resumable(config: SLASConfig) -> None:
    """Raise :class:`NothingToResume` (one line) unless the run dir has a complete checkpoint."""
    ckpts = config.run_dir / "checkpoints"
    if latest_checkpoint(ckpts) is None:
        raise NothingToResume(f"no complete checkpoint under {ckpts}: nothing to resume (train without --resume to start)")


def build_objective(train: TrainConfig) -> Objective | None:
    """The objective ``train.objective`` names: ``None`` for grpo (the trainer builds ``GRPOObjective`` from the
    same section), :class:`~slas.editing.nft.DiffusionNFTObjective` from ``train.nft`` for nft. Either takes
    the advantages of any ``rl`` preset."""
    if train.objective == "grpo":
        return None
    nft = train.nft
    return DiffusionNFTObjective(beta=nft.beta, kl_coef=nft.kl_coef, adv_clip_max=nft.adv_clip_max,
                                 timesteps=nft.timesteps, timesteps_per_sample=nft.timesteps_per_sample,
                                 x0_weighting=nft.x0_weighting, old_decay_flat=nft.old_decay_flat,
                                 old_decay_rate=nft.old_decay_rate, old_decay_max=nft.old_decay_max,
                                 batch_size=train.batch_size)


def needs_reference(train: TrainConfig) -> bool:
    """Whether the objective's KL needs the frozen reference model kept beside the trained one."""
    return (train.nft.kl_coef if train.objective == "nft" else train.kl_coef) > 0


def build_trainer(
    config: SLASConfig, *, resume: bool = False, mlflow_run_id: str | None = None, callbacks: Sequence[Callback] = (),
    checked: bool = False,
) -> Trainer:
    """Check everything the run needs (unless the caller just did: ``checked``), then load models (the heavy
    part) and wire the trainer.

    Rank 0 tracks the run in ``metrics.jsonl`` and MLflow (:func:`slas.platform.tracking.make_tracker`;
    ``SLAS_MLFLOW=0`` turns MLflow off). A resume continues the same MLflow run: ``mlflow_run_id`` (the
    job store's) or the one remembered in the run dir. A fresh run in a used run dir starts over: the
    earlier run's outputs move to ``<run dir>/previous/<time>/`` so neither its checkpoints nor its
    logged steps are mistaken for this run's.
    """
    rank, _ = distributed.init_from_env()
    strategy = parallel.strategy_from_env()
    strategy.check(config.trainer_config())
    if config.eval is not None and not strategy.one_rank_forward:
        raise parallel.StrategyError(f"{strategy.name}: the eval section runs the model on rank 0 alone, which "
                                     "sharded weights do not allow; drop it or launch with configs/accelerate/ddp.yaml")
    if not checked:
        preflight(config)
        if resume:
            check_resumable(config)
    data = _data_source(config)
    reward = build(config.reward)
    policy = load_policy(config.model, config.sample, keep_reference=needs_reference(config.train))
    tracker = None
    if rank == 0:  # one writer per run
        run_dir = config.run_dir
        hold_run_dir(run_dir)  # RunDirBusy when another process writes there; this one may hold it already
        remove_orphans(run_dir / "checkpoints")  # what a crash mid-checkpoint left
        if not resume:
            _move_previous_run(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        tracker = _run_tracker(config, mlflow_run_id if resume else None)
    trainer = Trainer(config.trainer_config(), policy, reward, data, objective=build_objective(config.train),
                      tracker=tracker, callbacks=callbacks, checkpoint_metadata={"config": config.model_dump(mode="json")},
                      strategy=strategy)
    if resume:
        try:
            trainer.load_checkpoint()
        except BaseException:
            _close_tracker(tracker, "FAILED")  # the caller never gets this trainer to close
            raise
    return trainer


def _data_source(config: SLASConfig) -> Any:
    """The run's groups: editing pairs (``data.pairs``, keyed by (person, product)) or prompts."""
    data = config.data
    if data.pairs is not None:
        return EditingSource.from_path(data.pairs, split=data.split, min_size=data.min_image_size,
                                       shuffle=data.shuffle, seed=config.run.seed)
    return PromptSource.from_file(data.prompts, data.field, shuffle=data.shuffle, seed=config.run.seed)


def _run_tracker(config: SLASConfig, run_id: str | None) -> Any:
    params = flatten(config)
    try:
        return make_tracker(config.run_dir, params=params, run_name=config.run.name, run_id=run_id)
    except TrackingError as exc:  # the job's run is not in this tracking store (MLFLOW_TRACKING_URI changed)
        warnings.warn(f"{exc}; continuing in a new MLflow run", RuntimeWarning, stacklevel=3)
        return make_tracker(config.run_dir, params=params, run_name=config.run.name)


def _move_previous_run(run_dir: Path) -> Path | None:
    """Move an earlier run's outputs out of the way of a fresh run in the same dir (nothing is deleted)."""
    found = [run_dir / name for name in _RUN_OUTPUTS if (run_dir / name).exists()]
    if not found:
        return None
    dest = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    while dest.exists():
        dest = dest.with_name(dest.name + "_")
    dest.mkdir(parents=True)
    for path in found:
        shutil.move(str(path), str(dest / path.name))
    print(f"{run_dir} held an earlier run: moved its outputs to {dest} (train with --resume to continue a run)",
          file=sys.stderr, flush=True)
    return dest


def selection_metric(config: SLASConfig) -> str:
    """The metric that scores a registered version: the held-out evaluation's ``eval/<benchmark>/overall``
    when the run has an ``eval:`` section (the training reward is what the policy was pushed to raise, gamed
    or not), else the training reward ``reward/total/mean``."""
    return f"eval/{config.eval.benchmark}/overall" if config.eval is not None else SCORE_METRIC


def register_final_checkpoint(trainer: Trainer, *, score_metric: str = SCORE_METRIC) -> int | None:
    """Upload the run's final checkpoint (MLflow artifacts ``checkpoints/<name>``) and register it as a new
    version of the model named after the run.

    Its score is ``score_metric`` at the checkpoint's iteration in the run's metrics: by default the mean
    reward of that iteration's rollouts; with an evaluation, its held-out ``overall`` (the evaluation runs at
    the last iteration, so the final checkpoint always has one). The ``best`` alias moves to the new version
    when that score beats the one of the version ``best`` points at (or none has it; see
    :func:`slas.platform.tracking.registry.beats_best` for scores of different metrics); a version without a
    score never takes it. ``models:/NAME@latest`` is always the newest version. Returns the version, or
    ``None`` without MLflow (or while its store is away: registered on replay).
    """
    ckpt = latest_checkpoint(trainer.ckpt_dir)
    if not isinstance(trainer.tracker, TeeTracker) or ckpt is None:
        return None
    iteration = int(ckpt.name.removeprefix("iter_"))
    score = next((r.get(score_metric) for r in read_metrics(trainer.run_dir / "metrics.jsonl")
                  if r.get("step") == iteration), None)
    score = float(score) if isinstance(score, int | float) and math.isfinite(score) else None
    tags = {"slas.iteration": str(iteration), "slas.score_metric": score_metric}
    return trainer.tracker.register_model(trainer.config.run.name, ckpt, tags=tags, score=score)


# ---------------------------------------------------------------------------------------------- jobs

EXIT_CANCELLED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


@dataclass
class TrainingOutcome:
    """How a run ended (``completed`` or ``cancelled``; failures raise) and the job that recorded it."""

    status: str
    trainer: Trainer
    job_id: int | None


class _Terminated(BaseException):
    """A second SIGTERM: stop now, without waiting for the iteration to end."""


@contextmanager
def _sigterm_sets(flag: threading.Event) -> Iterator[None]:
    """The first SIGTERM asks for a graceful stop (checkpoint at the next iteration boundary); a second one
    stops at once. Signal handlers can only be set from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag.is_set():
            raise _Terminated()
        flag.set()
        print("SIGTERM: stopping after this iteration; a checkpoint will be written", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(exc: BaseException) -> str:
    return one_line(exc, with_type=True)


def _job_for_direct_run(store: Store, config: SLASConfig, resume: bool) -> int:
    """``slas train`` without ``--job-id``: a new job row, or with ``--resume`` the job that wrote this run dir."""
    from slas.platform.jobs import JobError, JobManager

    run_dir = config.run_dir.resolve()
    cfg_json = config.model_dump(mode="json")
    if resume:
        previous = store.find_jobs_by_run_dir(run_dir)
        if previous:
            job = JobManager(store).refresh(previous[0])
            if job.is_active:
                raise JobError(f"job {job.id} is still {job.status} in {run_dir} (pid {job.pid} on {job.host})")
            return store.requeue_job(job.id, config=cfg_json).id
    job = store.create_job(name=config.run.name, config=cfg_json, run_dir=run_dir, backend="local", workdir=Path.cwd())
    return job.id


def run_training(
    config: SLASConfig, *, resume: bool = False, job_id: int | None = None, store: Store | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainingOutcome:
    """Train ``config`` as a job of the store (``store``, default :func:`slas.platform.db.open_store`).

    With ``job_id`` the job was queued by ``slas jobs submit``/``resume``; without, ``slas train`` was run
    directly and gets a job row of its own (with ``resume``: the job that last wrote this run dir). The
    run records a new attempt, its checkpoints and its end: completed, cancelled (SIGTERM: the iteration
    finishes, a checkpoint is written) or failed with the error (which is re-raised). ``callbacks`` join
    the trainer's own (after the job's stop/checkpoint recorder and the one-line-per-iteration log).
    """
    from slas.platform.db import open_store

    rank, _ = distributed.init_from_env()
    stop = threading.Event()
    with _sigterm_sets(stop):
        if rank != 0:  # one writer per run
            return _train_recorded(config, resume, stop, None, None, None, callbacks)
        checked = job_id is None  # a queued job was checked when submitted; its build checks again
        if checked:
            preflight(config)  # a run that cannot start gets no job row
        if resume:
            check_resumable(config)  # before any job row, model or MLflow run
        hold_run_dir(config.run_dir)  # a run dir another job writes is refused before any job row too
        own_store = store is None
        try:
            if own_store:
                store = open_store()
            if job_id is None:
                job_id = _job_for_direct_run(store, config, resume)
            hold_run_dir(config.run_dir, job_id=job_id)  # now the note can name the job
            attempt = store.begin_attempt(job_id, pid=os.getpid())
            recorder = DurableRecorder(store, config.run_dir)
            try:
                return _train_recorded(config, resume, stop, store, job_id, attempt, callbacks, recorder, checked=checked)
            finally:
                recorder.close()  # what a locked store kept waiting lands now, or stays queued on disk
        finally:
            if own_store and store is not None:
                store.close()
            release_run_dir(config.run_dir)


def _close_tracker(tracker: Any, status: str) -> None:
    """Close with the run's end (MLflow's FINISHED/FAILED/KILLED)."""
    if tracker is None:
        return
    try:
        tracker.close(status=status)
    except Exception as exc:  # never hide the run's own outcome (or its error) behind a tracker's
        warnings.warn(f"tracker: close failed: {_one_line(exc)}", RuntimeWarning, stacklevel=2)


def where_it_goes(trainer: Trainer, store: Any, job_id: int | None) -> str:
    """One line saying where a run's outputs, its job record and its MLflow run are."""
    from slas.platform.tracking import default_tracking_uri

    parts = [f"[{trainer.config.run.name}] outputs: {trainer.run_dir.resolve()}"]
    if store is not None:
        parts.append(f"job {job_id} in {redact_url(store.url)}")
    run_id = getattr(trainer.tracker, "run_id", None)
    if run_id:
        parts.append(f"MLflow run {run_id} in {redact_url(default_tracking_uri())}")
    return "; ".join(parts)


class _JobCallback(Callback):
    """Connects a trainer to its job: SIGTERM's flag stops it, every published checkpoint is recorded."""

    def __init__(self, stop: threading.Event, record_checkpoint: Any) -> None:
        self.stop = stop
        self.record_checkpoint = record_checkpoint

    def should_stop(self, trainer: Trainer) -> bool:
        return self.stop.is_set()

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.record_checkpoint(trainer.iteration, path.resolve())


def _evaluation(config: SLASConfig, record: Any) -> list[Callback]:
    """The held-out evaluation of the run's ``eval:`` section, recording each one with ``record(**row)``;
    none without the section."""
    if config.eval is None:
        return []
    from slas.eval.during import TrainingEval

    return [TrainingEval(config, record)]


def _train_recorded(config: SLASConfig, resume: bool, stop: threading.Event, store: Any, job_id: int | None,
                    attempt: Any, callbacks: Sequence[Callback] = (), recorder: Any = None, *,
                    checked: bool = False) -> TrainingOutcome:
    def record(what: str, fn: str, *args: Any, **kwargs: Any) -> None:
        if recorder is None:
            return
        try:
            recorder.record(what, fn, *args, **kwargs)  # queued in the run dir while the store is locked
        except SQLAlchemyError as exc:  # the store is bookkeeping: never lose a training run to it
            warnings.warn(f"job store: could not record {what}: {_one_line(exc)}", RuntimeWarning, stacklevel=2)

    recorded_run_id: list[str] = []

    def record_run_id() -> None:  # an MLflow tracker's run, kept for resumes (again if it changed)
        run_id = getattr(trainer and trainer.tracker, "run_id", None)
        if isinstance(run_id, str) and run_id not in recorded_run_id:
            record("the MLflow run id", "set_mlflow_run_id", job_id, run_id)
            recorded_run_id.append(run_id)

    mlflow_run_id = None
    if store is not None and resume:
        try:
            mlflow_run_id = store.get_job(job_id).mlflow_run_id
        except SQLAlchemyError as exc:
            warnings.warn(f"job store: could not read the MLflow run id: {_one_line(exc)}", RuntimeWarning, stacklevel=2)
    trainer = None
    try:
        job = _JobCallback(stop, lambda it, path: record("a checkpoint", "add_checkpoint", job_id, it, path))
        evaluation = _evaluation(config, lambda **row: record("an evaluation", "add_eval", job_id=job_id, **row))
        trainer = build_trainer(config, resume=resume, mlflow_run_id=mlflow_run_id,
                                callbacks=[job, IterationLog(), *evaluation, *callbacks, RewardJudgeCorrelation()],
                                checked=checked)
        if store is not None:
            if trainer.resumed_from is not None:
                record("the resume point", "set_attempt_resumed_from", attempt.id, trainer.resumed_from.resolve())
                # a process killed between publishing a checkpoint and recording it left it unrecorded
                found = [(int(p.name.removeprefix("iter_")), p.resolve()) for p in list_checkpoints(trainer.ckpt_dir)]
                record("earlier checkpoints", "sync_checkpoints", job_id, found)
            record_run_id()
        if trainer.rank == 0:
            print(where_it_goes(trainer, store, job_id), file=sys.stderr, flush=True)
        start = trainer.iteration
        trainer.train()
        if not trainer.stopped and trainer.iteration > start and trainer.rank == 0 and config.run.register_model:
            try:
                register_final_checkpoint(trainer, score_metric=selection_metric(config))
            except Exception as exc:  # the weights are safe on disk; tracking never fails a finished run
                warnings.warn(f"tracker: could not register the final checkpoint: {_one_line(exc)}",
                              RuntimeWarning, stacklevel=2)
    except (KeyboardInterrupt, _Terminated) as exc:
        ctrl_c = isinstance(exc, KeyboardInterrupt)
        reason = "interrupted (Ctrl-C)" if ctrl_c else "terminated (second SIGTERM)"
        record("the end state", "finish_job", job_id, "cancelled", error=reason, exit_code=130 if ctrl_c else EXIT_CANCELLED)
        _close_tracker(trainer and trainer.tracker, "KILLED")
        record_run_id()
        raise
    except BaseException as exc:
        record("the end state", "finish_job", job_id, "failed", error=_one_line(exc), exit_code=1)
        _close_tracker(trainer and trainer.tracker, "FAILED")
        record_run_id()
        raise
    _close_tracker(trainer.tracker, "KILLED" if trainer.stopped else "FINISHED")
    record_run_id()  # a store that was away at the start may have given the run its id since
    status = "cancelled" if trainer.stopped else "completed"
    code = EXIT_CANCELLED if trainer.stopped else 0
    error = f"cancelled at iteration {trainer.iteration} (checkpoint written)" if trainer.stopped else None
    record("the end state", "finish_job", job_id, status, error=error, exit_code=code)
    return TrainingOutcome(status, trainer, job_id)
