"""The ``slas`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from slas.config import ConfigError, load_config
from slas.preflight import PreflightError

app = typer.Typer(help="SLAS: reward-hacking-resistant RL post-training for diffusion models.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (speed and overhead; never timed tests).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set rl.preset=slas")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest complete checkpoint of this run")] = False,
) -> None:
    """Post-train a text-to-image model with GRPO-style RL (DanceGRPO or SLAS advantages)."""
    from slas.run import build_trainer

    try:
        cfg = load_config(config, set_ or [])
        trainer = build_trainer(cfg, resume=resume)
    except (ConfigError, PreflightError, FileNotFoundError) as exc:
        _fail(str(exc))
    trainer.train()
    typer.echo(f"done: {trainer.iteration} iterations; metrics and checkpoints in {cfg.run_dir}")


@app.command("config")
def show_config(config: Annotated[Path, typer.Argument(help="YAML run config")], set_: SetOpt = None) -> None:
    """Validate a config (with overrides) and print it fully resolved, presets applied."""
    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


@bench_app.command("overhead")
def bench_overhead(
    iterations: Annotated[int, typer.Option(help="measured iterations (after one warm-up)")] = 3,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 0,
) -> None:
    """Wall time of a tiny-SD training iteration over its pure model compute (goal: <= 1.15)."""
    from slas.bench.overhead import run_overhead_bench

    report = run_overhead_bench(iterations=iterations, threads=threads)
    typer.echo(report.format())
