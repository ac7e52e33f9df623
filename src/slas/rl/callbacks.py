"""Callbacks every run can use (see ``slas.rl.protocols.Callback``)."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from tqdm.auto import tqdm

from slas.rl.protocols import Callback

if TYPE_CHECKING:
    from slas.rl.trainer import Trainer


def held_out_overall(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{name: value}`` of an iteration's held-out evaluations: the ``eval/<name>/overall`` metrics that
    evaluation callbacks add (``eval/geneval/overall``, the demo's ``eval/judge/overall``)."""
    return {k.split("/")[1]: v for k, v in metrics.items()
            if k.startswith("eval/") and k.endswith("/overall") and k.count("/") == 2}


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


class RewardJudgeCorrelation(Callback):
    """Does the training reward still track the held-out judge? Logged at every held-out evaluation.

    An evaluation callback earlier in the list adds ``eval/<name>/overall`` to an iteration's metrics. At each
    such iteration this pairs the evaluation with the mean training reward since the previous one and logs
    ``diag/reward_judge_corr/<name>``: the Pearson correlation over the run so far (from the third
    evaluation on; the iteration-0 evaluation, before any training reward, is not paired; a resumed run
    starts counting again). Hacking shows as the correlation falling: the reward keeps rising while the
    judge stalls or falls.
    """

    def __init__(self) -> None:
        self.rewards: list[float] = []
        self.pairs: dict[str, list[tuple[float, float]]] = {}

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> dict[str, float] | None:
        self.rewards.append(metrics.get("reward/total/mean", math.nan))
        evals = held_out_overall(metrics)
        if not evals:
            return None
        reward = statistics.fmean(r for r in self.rewards if math.isfinite(r)) if any(map(math.isfinite, self.rewards)) else math.nan
        self.rewards = []
        out = {}
        for name, value in evals.items():
            pairs = self.pairs.setdefault(name, [])
            pairs.append((reward, value))
            if len(pairs) >= 3:
                out[f"diag/reward_judge_corr/{name}"] = _pearson(pairs)
        return out


def _pearson(pairs: list[tuple[float, float]]) -> float:
    """Pearson correlation of finite pairs (NaN when fewer than 3 or a constant side)."""
    xy = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    if len(xy) < 3:
        return math.nan
    try:
        return statistics.correlation([x for x, _ in xy], [y for _, y in xy])
    except statistics.StatisticsError:
        return math.nan
