"""The ``slas`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from slas.config import ConfigError, load_config
from slas.platform.jobs_cli import jobs_app
from slas.preflight import PreflightError

app = typer.Typer(help="SLAS: reward-hacking-resistant RL post-training for diffusion models.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (speed and overhead; never timed tests).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
reward_app = typer.Typer(help="Reward models: score images before training with them.", no_args_is_help=True)
app.add_typer(reward_app, name="reward")
app.add_typer(jobs_app, name="jobs")

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set rl.preset=slas")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest complete checkpoint of this run")] = False,
    job_id: Annotated[int | None, typer.Option("--job-id", help="run as this queued job (set by `slas jobs`)")] = None,
) -> None:
    """Post-train a text-to-image model with GRPO-style RL (DanceGRPO or SLAS advantages).

    The run is recorded in the job store (`slas jobs list`); SIGTERM stops it after the current iteration
    with a checkpoint, and the job ends as cancelled.
    """
    from slas.platform.db import StoreError
    from slas.platform.jobs import JobError
    from slas.run import EXIT_CANCELLED, run_training

    try:
        cfg = load_config(config, set_ or [])
        outcome = run_training(cfg, resume=resume, job_id=job_id)
    except (ConfigError, PreflightError, FileNotFoundError, StoreError, JobError) as exc:
        _fail(str(exc))
    trainer = outcome.trainer
    job = f"job {outcome.job_id}: " if outcome.job_id is not None else ""
    if outcome.status == "cancelled":
        typer.echo(f"{job}cancelled at iteration {trainer.iteration}; checkpoint in {trainer.ckpt_dir}", err=True)
        raise typer.Exit(EXIT_CANCELLED)
    typer.echo(f"{job}done: {trainer.iteration} iterations; metrics and checkpoints in {cfg.run_dir}")


@app.command("config")
def show_config(config: Annotated[Path, typer.Argument(help="YAML run config")], set_: SetOpt = None) -> None:
    """Validate a config (with overrides) and print it fully resolved, presets applied."""
    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


@reward_app.command("score")
def reward_score(
    reward: Annotated[str, typer.Option("--reward", help="YAML (run config or reward section) or name[:weight],...")],
    images: Annotated[Path, typer.Option("--images", help="folder of images (scored in name order)")],
    prompts: Annotated[Path, typer.Option("--prompts", help="prompt file: one prompt, or one per image")],
    condition: Annotated[
        list[str] | None, typer.Option("--condition", help="NAME=FOLDER: per-image condition images, e.g. reference_images=refs/")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="write one JSON line per image here")] = None,
    batch_size: Annotated[int, typer.Option(help="images per reward call")] = 16,
) -> None:
    """Score a folder of images with a reward spec and print per-image scores and their summary."""
    import json

    from slas.preflight import preflight_reward
    from slas.rewards import build
    from slas.rewards.score import align_prompts, list_images, parse_reward_spec, score_folder, summarize

    try:
        spec = parse_reward_spec(reward)
        conds = {}
        for item in condition or []:
            name, sep, folder = item.partition("=")
            if not sep:
                raise ValueError(f"--condition {item!r}: expected NAME=FOLDER")
            conds[name] = folder
        texts = align_prompts(prompts, len(list_images(images)))
        preflight_reward(spec)
        records = score_folder(build(spec), images, texts, conds, batch_size=batch_size)
    except (ConfigError, PreflightError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    keys = [k for k in records[0] if k not in ("image", "prompt")]
    typer.echo("\t".join(["image", *keys, "prompt"]))
    for r in records:
        typer.echo("\t".join([r["image"], *(f"{r[k]:.4f}" for k in keys), r["prompt"][:60]]))
    for key, (mean, std) in summarize(records).items():
        typer.echo(f"{key}: mean {mean:.4f} std {std:.4f} over {len(records)} images")
    if output is not None:
        output.write_text("".join(json.dumps(r) + "\n" for r in records))


@bench_app.command("overhead")
def bench_overhead(
    iterations: Annotated[int, typer.Option(help="measured iterations (after one warm-up)")] = 3,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 0,
) -> None:
    """Wall time of a tiny-SD training iteration over its pure model compute (goal: <= 1.15)."""
    from slas.bench.overhead import run_overhead_bench

    report = run_overhead_bench(iterations=iterations, threads=threads)
    typer.echo(report.format())
