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
