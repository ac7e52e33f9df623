"""``slas train`` and ``slas config``: run a config, or check and print it without training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from slas.cli.common import SetOpt, SlasTyper
from slas.config import SLASConfig, load_config

if TYPE_CHECKING:
    from slas.run import TrainingOutcome

app = SlasTyper()

ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML run config (see configs/)")]


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest complete checkpoint of this run")] = False,
    job_id: Annotated[int | None, typer.Option("--job-id", help="run as this queued job (set by `slas jobs`)")] = None,
) -> None:
    """Post-train a text-to-image model with GRPO-style RL (DanceGRPO or SLAS advantages).

    The run is recorded in the job store (`slas jobs list`); SIGTERM stops it after the current iteration
    with a checkpoint, and the job ends as cancelled. At the end it says where the run dir, the job and the
    MLflow run are.
    """
    from slas.run import EXIT_CANCELLED, run_training

    cfg = load_config(config, set_ or [])
    outcome = run_training(cfg, resume=resume, job_id=job_id)
    trainer = outcome.trainer
    job = f"job {outcome.job_id}: " if outcome.job_id is not None else ""
    if outcome.status == "cancelled":
        typer.echo(f"{job}cancelled at iteration {trainer.iteration}; checkpoint in {trainer.ckpt_dir}", err=True)
        typer.echo("\n".join(where_it_went(cfg, outcome)), err=True)
        raise typer.Exit(EXIT_CANCELLED)
    typer.echo(f"{job}done: {trainer.iteration} iterations; metrics and checkpoints in {cfg.run_dir}")
    typer.echo("\n".join(where_it_went(cfg, outcome)))


def where_it_went(cfg: SLASConfig, outcome: TrainingOutcome) -> list[str]:
    """The run dir, the job in its store and the MLflow run, so a run's outputs can be found afterwards."""
    from slas.credentials import redact_url
    from slas.platform.db import default_url
    from slas.platform.tracking import default_tracking_uri, mlflow_enabled

    job = f"job {outcome.job_id} in " if outcome.job_id is not None else ""
    run_id = getattr(outcome.trainer.tracker, "run_id", None)
    if run_id:
        mlflow = f"run {run_id} in {redact_url(default_tracking_uri())}"
    elif mlflow_enabled():
        mlflow = f"no run yet ({redact_url(default_tracking_uri())} was unreachable; the run dir buffers the metrics)"
    else:
        mlflow = "off (SLAS_MLFLOW=0); metrics in the run dir's metrics.jsonl"
    return [f"  run dir:   {cfg.run_dir.resolve()}", f"  job store: {job}{redact_url(default_url())}",
            f"  MLflow:    {mlflow}"]


@app.command("config")
def show_config(
    config: ConfigArg,
    set_: SetOpt = None,
    check: Annotated[bool, typer.Option("--check", help="check that every model, prompt file and reward is here "
                                                        "(no download, no training) instead of printing")] = False,
) -> None:
    """Validate a config (with overrides) and print it fully resolved, presets applied.

    With --check, run the preflight a training run starts with and list every problem at once.
    """
    cfg = load_config(config, set_ or [])
    if check:
        from slas.preflight import preflight

        preflight(cfg)
        typer.echo("preflight: ok")
        return
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    typer.echo(f"# run dir: {cfg.run_dir}")
