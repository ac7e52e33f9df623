"""The ``slas`` command line: one module per command group, one app, one error path.

``train`` (train, config), ``sample``, ``demo``, ``reward``, ``jobs``, ``eval`` and ``bench`` each live in
their own module and are added here; :mod:`slas.cli.common` holds what they share (``--set``, :func:`fail`, the
app and command classes).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from slas.cli import bench, data, demo, jobs, reward, sample, samples, train, ui
from slas.cli import eval as eval_cli  # `eval` would shadow the builtin
from slas.cli.common import DEBUG_KEY, SetOpt, SlasTyper, fail, one_line_warnings
from slas.paths import WHERE_THINGS_GO

__all__ = ["SetOpt", "app", "fail", "main"]

HELP = f"""SLAS: reward-hacking-resistant RL post-training for diffusion models.

First step: slas demo --quick. The demo is the only command that runs offline: it post-trains the shipped \
tiny shapes-world model with DanceGRPO and with SLAS on a CPU. Everything else needs model weights in the \
Hugging Face cache; slas config CONFIG --check lists what is missing and how to fetch it.

{WHERE_THINGS_GO}
"""

app = SlasTyper(help=HELP)
app.add_typer(demo.app)
app.add_typer(train.app)
app.add_typer(sample.app)
app.add_typer(samples.app, name="samples")
app.add_typer(ui.app)
app.add_typer(reward.app, name="reward")
app.add_typer(jobs.app, name="jobs")
app.add_typer(eval_cli.app, name="eval")
app.add_typer(bench.app, name="bench")
app.add_typer(data.app, name="data")


def _slas_version() -> str:
    try:
        return version("slas")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"slas {_slas_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    show_version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="print the version and exit")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="show the full traceback of an unexpected error (otherwise it goes to "
                                           "$SLAS_HOME/logs/last-error.txt)")
    ] = False,
) -> None:
    ctx.meta[DEBUG_KEY] = debug
    one_line_warnings(ctx)


def main() -> None:
    """``python -m slas``: the same command as the ``slas`` script."""
    app(prog_name="slas")
