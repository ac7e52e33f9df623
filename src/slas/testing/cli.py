"""Invoking the ``slas`` typer app in tests: wide uncoloured output, stderr kept apart where click allows."""

from __future__ import annotations

import re

from click.testing import Result
from typer.testing import CliRunner

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Wide, uncoloured help where the environment allows it (rich wraps to COLUMNS); typer may still force
# colour from variables read at import (GITHUB_ACTIONS), so outputs are also stripped of ANSI codes.
ENV = {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "FORCE_COLOR": None}


def cli_runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless asked not to; click >= 8.2 always separates
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run_cli(*args: object) -> Result:
    """``slas ARGS...`` in-process (each argument stringified)."""
    from slas.cli import app

    return cli_runner().invoke(app, [str(a) for a in args], env=ENV)


def error_text(result: Result) -> str:
    """What the command wrote to stderr (or its mixed output on old click), without ANSI codes."""
    try:
        text = result.stderr
    except ValueError:
        text = result.output
    return ANSI.sub("", text).strip()
