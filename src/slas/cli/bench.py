"""``slas bench``: the overhead benchmark and the reward-hacking comparison (never timed tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SlasTyper
from slas.paths import runs_root

app = SlasTyper(help="Benchmarks (speed and overhead; never timed tests).")


@app.command("overhead")
def overhead(
    iterations: Annotated[int, typer.Option("--iterations", min=1, metavar="N", help="measured iterations (after one warm-up)")] = 3,
    threads: Annotated[int, typer.Option("--threads", min=0, metavar="N", help="torch CPU threads (0: torch's default)")] = 0,
) -> None:
    """Wall time of a tiny-SD training iteration over its pure model compute (goal: <= 1.15)."""
    from slas.bench.overhead import run_overhead_bench

    report = run_overhead_bench(iterations=iterations, threads=threads)
    typer.echo(report.format())


@app.command("throughput")
def throughput(
    model: Annotated[str, typer.Option("--model", help="sd (SD1.4 UNet) or flux (FLUX.1-dev transformer)")] = "sd",
    size: Annotated[str, typer.Option("--size", help="tiny (offline tiny pipeline) or full (full-size, random weights)")] = "tiny",
    device: Annotated[str, typer.Option("--device", help="torch device")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16 (the policy autocasts to it)")] = "float32",
    finetune: Annotated[str, typer.Option("--finetune", help="full or lora")] = "full",
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1, metavar="R")] = 128,
    resolution: Annotated[int | None, typer.Option("--resolution", min=8, metavar="PX", help="default: 32 tiny, 512 full")] = None,
    steps: Annotated[int, typer.Option("--steps", min=2, metavar="N", help="denoising steps")] = 10,
    groups: Annotated[int, typer.Option("--groups", min=1, metavar="N", help="groups per iteration")] = 2,
    group_size: Annotated[int, typer.Option("--group-size", min=1, metavar="G", help="images per group")] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="B", help="training micro-batch")] = 4,
    timestep_fraction: Annotated[float, typer.Option("--timestep-fraction", min=0.0, max=1.0, help="share of steps trained")] = 0.5,
    iterations: Annotated[int, typer.Option("--iterations", min=1, metavar="N", help="measured iterations (after a warm-up)")] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="also write the markdown section to this file")] = None,
    append: Annotated[bool, typer.Option("--append", help="append to --out instead of replacing it")] = False,
) -> None:
    """Rollout images/s, training samples/s and peak memory: today's batched rollout (one pipeline call per
    group, rewards in memory) beside DanceGRPO's loop (one image per call, rewards through PNG files)."""
    from slas.cli.common import fail

    choices = {"--model": (model, ("sd", "flux")), "--size": (size, ("tiny", "full")),
               "--dtype": (dtype, ("float32", "bfloat16", "float16")), "--finetune": (finetune, ("full", "lora"))}
    for flag, (value, allowed) in choices.items():
        if value not in allowed:
            fail(f"{flag} {value}: choose one of {', '.join(allowed)}")
    from slas.bench.throughput import BenchSettings, run_throughput_bench, write_report

    settings = BenchSettings(model=model, size=size, device=device, dtype=dtype, finetune=finetune, lora_rank=lora_rank,
                             resolution=resolution, num_steps=steps, groups=groups, group_size=group_size,
                             batch_size=batch_size, timestep_fraction=timestep_fraction, iterations=iterations)
    report = run_throughput_bench(settings)
    typer.echo(report.format())
    if out is not None:
        write_report(report, out, append=append)


@app.command("hacking")
def hacking(
    num_seeds: Annotated[int, typer.Option("--num-seeds", min=1, metavar="N", help="how many seeds per variant, seeds 0..N-1 "
                                                                      "(>= 3 for the committed table)")] = 3,
    out: Annotated[Path | None, typer.Option("--out", help="folder for the runs and results.json (default: "
                                                           "runs/bench_hacking, or under $SLAS_HOME/runs)")] = None,
    publish: Annotated[bool, typer.Option("--publish", help="also write the table and plot to benchmarks/results/ "
                                                          "(the committed ones)")] = False,
    device: Annotated[str, typer.Option("--device", help="torch device of the policy and rewards")] = "cpu",
    jobs: Annotated[int, typer.Option("--jobs", min=1, metavar="N", help="runs in parallel (processes)")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="a seconds-long smoke version (tiny plan)")] = False,
    long: Annotated[bool, typer.Option("--long", help="3x the iterations, evaluated along the way (over-optimisation)")] = False,
    variant: Annotated[list[str] | None, typer.Option("--variant", metavar="NAME", help="only this variant (repeatable)")] = None,
) -> None:
    """DanceGRPO, prompt-mean only, batch std p=1, SLAS p in {1.5, 2, 3} (both readings) and SLAS with
    power auto, over seeds, paired by seed against DanceGRPO.

    Writes OUT/hacking.md, OUT/hacking.png (hacking_long.* with --long) and OUT/results.json; finished
    (variant, seed) runs are kept in OUT/results.jsonl, so an interrupted bench resumes. --publish also
    writes the table and plot to benchmarks/results/.
    """
    from slas.bench.hacking import run_hacking

    run_hacking(num_seeds, out=out if out is not None else runs_root() / "bench_hacking", publish=publish,
                device=device, jobs=jobs, quick=quick, long=long, variants=variant)
