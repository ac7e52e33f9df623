"""`slas --help`, `--version` and `python -m slas`: what a newcomer sees first."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

import typer
from typer.core import TyperGroup

from slas.cli import app
from slas.paths import WHERE_THINGS_GO
from slas.testing.cli import ANSI, run_cli


def _flat(text: str) -> str:
    """Help text with the panel borders and line wrapping taken out."""
    return " ".join(ANSI.sub("", text).replace("│", " ").split())


def _command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every group and command under ``group`` as argument tuples."""
    paths = [prefix]
    for name, cmd in group.commands.items():
        paths += _command_paths(cmd, (*prefix, name)) if isinstance(cmd, TyperGroup) else [(*prefix, name)]
    return paths


def test_help_names_the_first_step_and_where_things_go():
    r = run_cli("--help")
    assert r.exit_code == 0
    text = _flat(r.stdout)
    assert "First step: slas demo --quick" in text and "the only command that runs offline" in text
    assert "slas config CONFIG --check" in text
    assert _flat(WHERE_THINGS_GO) in text


def test_no_help_shows_a_placeholder_for_a_flag():
    """Typer's rich help labels every option with its type; a flag takes no value, so it gets none."""
    paths = _command_paths(typer.main.get_command(app))
    assert ("bench", "hacking") in paths and ("jobs", "cancel") in paths and ("reward", "score") in paths
    for path in paths:
        r = run_cli(*path, "--help")
        assert r.exit_code == 0, path
        text = ANSI.sub("", r.stdout)
        assert "<bool>" not in text, (path, text)
    demo = _flat(run_cli("demo", "--help").stdout)
    assert re.search(r"--quick the short version", demo), demo  # the flag, then its help: nothing between
    assert "--set KEY=VALUE" in _flat(run_cli("train", "--help").stdout)


def test_version():
    r = run_cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"slas {version('slas')}"


def test_python_dash_m_slas_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "slas", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"slas {version('slas')}"


def test_bench_hacking_counts_seeds_with_num_seeds_and_sample_names_them_with_seeds():
    bench = _flat(run_cli("bench", "hacking", "--help").stdout)
    assert "--num-seeds N" in bench and "seeds 0..N-1" in bench and "--seeds" not in bench
    sample = _flat(run_cli("sample", "--help").stdout)
    assert "--seeds" in sample and "0-7" in sample and "3 alone is the seed 3" in sample
    r = run_cli("bench", "hacking", "--seeds", "3")
    assert r.exit_code == 2  # a count is not spelled like sample's seed list
