"""Callbacks every run can use (see ``slas.rl.protocols.Callback``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from tqdm.auto import tqdm

from slas.rl.protocols import Callback

if TYPE_CHECKING:
    from slas.rl.trainer import Trainer


class IterationLog(Callback):
    """One plain line per iteration (iteration, mean total reward, seconds) on ``stream`` (default stderr).

    Whenever no progress bar shows (a job's log file, ``run.progress: false``), so a log reads line by line
    (a progress bar writing to a file is a stream of carriage returns); on a terminal the bar says the same.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        if trainer.progress_shown:
            return
        until = trainer.config.run.iterations
        line = (f"[{trainer.config.run.name}] iteration {trainer.iteration}/{until}: "
                f"reward {metrics.get('reward/total/mean', float('nan')):.4f}, "
                f"{metrics.get('time/iteration', float('nan')):.1f} s")
        tqdm.write(line, file=self.stream or sys.stderr)  # above a progress bar, if one is shown
