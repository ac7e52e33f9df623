"""``slas demo``: DanceGRPO vs SLAS on the shipped shapes-world model, the one command that runs offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slas.cli.common import SlasTyper
from slas.paths import runs_root

app = SlasTyper()


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="the short version: fewer iterations, prompts and eval images")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default: runs/demo, or $SLAS_HOME/runs/demo "
                                                           "when SLAS_HOME is set)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="run seed (same for both methods)")] = 0,
) -> None:
    """DanceGRPO vs SLAS on the shipped shapes-world model: proxy reward vs the ground-truth judge.

    Runs offline on a CPU with the tiny model shipped in the package: the first thing to try. Writes
    report.md, report.json, curves.png and sample grids to OUT; both runs are store jobs.
    """
    from slas.shapes.demo import run_demo

    run_demo(out if out is not None else runs_root() / "demo", quick=quick, seed=seed)
