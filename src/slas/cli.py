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


@app.command()
def sample(
    checkpoints: Annotated[
        str, typer.Option("--checkpoints", help="comma-separated checkpoint dirs (runs/NAME/checkpoints/iter_N), run dirs (newest checkpoint) or `base`")
    ],
    prompts: Annotated[Path, typer.Option("--prompts", help="prompt file (.txt, .jsonl or .csv)")],
    seeds: Annotated[str, typer.Option("--seeds", help="seeds: 0,1,2 or ranges such as 0-7")] = "0",
    config: Annotated[
        Path | None, typer.Option("--config", help="run config for every checkpoint (default: each checkpoint's own run config)")
    ] = None,
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="name of the sample set (default: the checkpoint labels)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per pipeline call")] = 8,
    reward: Annotated[
        str | None, typer.Option("--reward", help="also score each image: YAML (run config or reward section) or name[:weight],...")
    ] = None,
    field: Annotated[str | None, typer.Option("--field", help="the prompt field of a .jsonl/.csv prompt file")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="image folder (default: $SLAS_HOME/samples/<set id>)")] = None,
) -> None:
    """Render a comparison set: every checkpoint x prompt x seed, paired by seed, into the job store.

    Each checkpoint samples with the pipeline's deterministic sampler from the same per-seed noise, so
    images differ only by the weights. Prints the sample set id (the review UI's input).
    """
    from slas.platform.db import StoreError
    from slas.platform.sampling import SamplingError, plan_sample_set, render_sample_set

    try:
        plan = plan_sample_set(checkpoints, prompts, seeds, config=config, overrides=set_ or [], prompt_field=field,
                               batch_size=batch_size, reward=reward, name=name)
    except (ConfigError, PreflightError, SamplingError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])
    from slas.platform.db import open_store

    try:
        with open_store() as store:
            set_id = render_sample_set(plan, store, out=out)
            root = store.get_sample_set(set_id).meta.get("out_dir")
    except StoreError as exc:
        _fail(str(exc))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # e.g. weights that do not fit the config
        text = str(exc).strip().splitlines()
        _fail(f"sampling failed: {type(exc).__name__}: {text[0] if text else ''}")
    typer.echo(f"sample set {set_id}: {plan.num_images} images ({len(plan.checkpoints)} checkpoints x "
               f"{len(plan.prompts)} prompts x {len(plan.seeds)} seeds) in {root}")


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


@app.command()
def demo(
    quick: Annotated[bool, typer.Option(help="the 3-minute version: fewer iterations, prompts and eval images")] = False,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="run seed (same for both methods)")] = 0,
) -> None:
    """DanceGRPO vs SLAS on the shipped shapes-world model: proxy reward vs the ground-truth judge.

    Writes report.md, report.json, curves.png and sample grids to OUT; both runs are store jobs.
    """
    from slas.shapes.demo import run_demo

    try:
        run_demo(out, quick=quick, seed=seed)
    except (ConfigError, PreflightError, FileNotFoundError) as exc:
        _fail(str(exc))


@bench_app.command("hacking")
def bench_hacking(
    seeds: Annotated[int, typer.Option(help="seeds per variant (>= 3 for the committed table)")] = 3,
    out: Annotated[Path, typer.Option(help="folder for the runs and results.json")] = Path("runs/bench_hacking"),
    results: Annotated[Path, typer.Option(help="markdown table to write")] = Path("benchmarks/results/hacking.md"),
    device: Annotated[str, typer.Option(help="torch device of the policy and rewards")] = "cpu",
    jobs: Annotated[int, typer.Option(help="runs in parallel (processes)")] = 1,
    quick: Annotated[bool, typer.Option(help="a seconds-long smoke version (tiny plan)")] = False,
    variant: Annotated[list[str] | None, typer.Option(help="only these variants (repeatable)")] = None,
) -> None:
    """DanceGRPO, prompt-mean only, batch std p=1 and SLAS p in {1.5, 2, 3} (both readings) over seeds."""
    from slas.bench.hacking import run_hacking

    try:
        run_hacking(seeds, out=out, results_md=results, device=device, jobs=jobs, quick=quick, variants=variant)
    except (ValueError, FileNotFoundError, PreflightError) as exc:
        _fail(str(exc))
