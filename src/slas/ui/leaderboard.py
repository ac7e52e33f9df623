"""What a set's pair ratings say: win rates and Bradley–Terry scores per checkpoint with bootstrap intervals,
how often each reward component agrees with the people, and how often people agree with each other.

Outcomes: ``a``/``b`` is a win for the image of that side; ``tie`` and ``both_bad`` count half a win each
way (as Chatbot Arena counts its "tie" and "tie (bothbad)"), since neither says one checkpoint is better.

Bradley–Terry: P(i beats j) = s_i / (s_i + s_j), fitted by Hunter's (2004) minorise-maximise iteration
s_i <- W_i / sum_j n_ij / (s_i + s_j), with half-wins for ties and a weak prior of one virtual tie between
every two checkpoints (so a checkpoint that never lost or never won keeps a finite score). Scores are
reported as ``log s`` centred to mean 0: P(i beats j) = sigmoid(score_i - score_j). Intervals are
percentile bootstraps over ratings (resampled with replacement, seeded), each resample refitted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from slas.platform.schema import Rating, Sample

HALF = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # the left image's share of the win


@dataclass(frozen=True)
class Outcome:
    """One pair rating: left and right checkpoint indices and the left image's share of the win."""

    left: int
    right: int
    left_share: float


@dataclass(frozen=True)
class Standing:
    """One checkpoint's row of the leaderboard."""

    checkpoint: str
    comparisons: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float
    win_rate_ci: tuple[float, float]
    bt: float
    bt_ci: tuple[float, float]


def outcomes(ratings: Sequence[Rating], samples: Mapping[int, Sample], labels: Sequence[str]) -> list[Outcome]:
    """Pair ratings as outcomes between checkpoint indices of ``labels`` (others are left out)."""
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for r in ratings:
        if r.other_sample_id is None or r.choice not in HALF:
            continue
        a, b = samples.get(r.sample_id), samples.get(r.other_sample_id)
        if a is None or b is None or a.checkpoint_label not in index or b.checkpoint_label not in index:
            continue
        out.append(Outcome(index[a.checkpoint_label], index[b.checkpoint_label], HALF[r.choice]))
    return out


def fit_bradley_terry(wins: np.ndarray, *, prior: float = 1.0, tol: float = 1e-10, max_iter: int = 10_000) -> np.ndarray:
    """Centred log-strengths from ``wins[i, j]`` (i's wins over j, ties as halves) by Hunter's MM iteration.

    ``prior`` virtual games split evenly between every two checkpoints keep every score finite.
    """
    k = wins.shape[0]
    if k == 0:
        return np.zeros(0)
    w = wins.astype(float) + (prior / 2.0) * (1.0 - np.eye(k))
    games = w + w.T
    total_wins = w.sum(axis=1)
    s = np.ones(k)
    for _ in range(max_iter):
        denom = (games / (s[:, None] + s[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), s)
        new /= math.exp(np.log(new).mean())  # geometric mean 1: the scale BT leaves free
        if np.max(np.abs(np.log(new) - np.log(s))) < tol:
            s = new
            break
        s = new
    logs = np.log(s)
    return logs - logs.mean()


def _tables(outs: Sequence[Outcome], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Win matrix (ties as halves) and games per checkpoint."""
    wins = np.zeros((k, k))
    games = np.zeros(k)
    for o in outs:
        wins[o.left, o.right] += o.left_share
        wins[o.right, o.left] += 1.0 - o.left_share
        games[o.left] += 1
        games[o.right] += 1
    return wins, games


def _win_rates(wins: np.ndarray, games: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, wins.sum(axis=1) / np.maximum(games, 1), np.nan)


def standings(ratings: Sequence[Rating], samples: Mapping[int, Sample], labels: Sequence[str], *,
              n_boot: int = 500, seed: int = 0, level: float = 0.95) -> list[Standing]:
    """The leaderboard of ``labels``, best Bradley–Terry score first, with ``level`` bootstrap intervals."""
    k = len(labels)
    outs = outcomes(ratings, samples, labels)
    wins, games = _tables(outs, k)
    bt = fit_bradley_terry(wins)
    rates = _win_rates(wins, games)
    rng = np.random.default_rng(seed)
    boot_bt = np.full((n_boot, k), np.nan)
    boot_rate = np.full((n_boot, k), np.nan)
    if outs:
        for b in range(n_boot):
            pick = rng.integers(0, len(outs), len(outs))
            bw, bg = _tables([outs[i] for i in pick], k)
            boot_bt[b] = fit_bradley_terry(bw)
            boot_rate[b] = _win_rates(bw, bg)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return (math.nan, math.nan)
        return (float(np.percentile(finite, lo)), float(np.percentile(finite, hi)))

    rows = []
    for i, label in enumerate(labels):
        mine = [o for o in outs if i in (o.left, o.right)]
        share = [o.left_share if o.left == i else 1.0 - o.left_share for o in mine]
        ties_or_bad = [o for o in mine if o.left_share == 0.5]
        n_bad = sum(1 for r in _ratings_of(ratings, samples, label) if r.choice == "both_bad")
        rows.append(Standing(
            checkpoint=label, comparisons=len(mine), wins=sum(1 for x in share if x == 1.0),
            losses=sum(1 for x in share if x == 0.0), ties=len(ties_or_bad) - n_bad, both_bad=n_bad,
            win_rate=float(rates[i]), win_rate_ci=interval(boot_rate[:, i]), bt=float(bt[i]),
            bt_ci=interval(boot_bt[:, i]),
        ))
    return sorted(rows, key=lambda r: -r.bt)


def _ratings_of(ratings: Sequence[Rating], samples: Mapping[int, Sample], label: str) -> list[Rating]:
    """Pair ratings in which ``label`` took part."""
    out = []
    for r in ratings:
        if r.other_sample_id is None:
            continue
        a, b = samples.get(r.sample_id), samples.get(r.other_sample_id)
        if a is not None and b is not None and label in (a.checkpoint_label, b.checkpoint_label):
            out.append(r)
    return out


def reward_agreement(ratings: Sequence[Rating], samples: Mapping[int, Sample]) -> dict[str, tuple[float, int]]:
    """Per reward component: the share of decisive pair ratings (``a``/``b``) where the component scores the
    person's pick higher, and over how many pairs (a pair it scores equal, or did not score, is left out)."""
    hits: dict[str, list[bool]] = {}
    for r in ratings:
        if r.other_sample_id is None or r.choice not in ("a", "b"):
            continue
        a, b = samples.get(r.sample_id), samples.get(r.other_sample_id)
        if a is None or b is None:
            continue
        for name in set(a.rewards or {}) & set(b.rewards or {}):
            ra, rb = (a.rewards or {}).get(name), (b.rewards or {}).get(name)
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in (ra, rb)) or ra == rb:
                continue
            hits.setdefault(name, []).append((ra > rb) == (r.choice == "a"))
    return {name: (sum(h) / len(h), len(h)) for name, h in sorted(hits.items())}


def _canonical(r: Rating) -> tuple[tuple[int, int], str]:
    """The pair as (lower id, higher id) and the choice seen from the lower id's side."""
    assert r.other_sample_id is not None
    if r.sample_id < r.other_sample_id:
        return (r.sample_id, r.other_sample_id), str(r.choice)
    flipped = {"a": "b", "b": "a"}.get(str(r.choice), str(r.choice))
    return (r.other_sample_id, r.sample_id), flipped


def rater_agreement(ratings: Sequence[Rating]) -> dict[str, float | int]:
    """Agreement where a pair was rated by two or more people (each person's latest rating of it counts):
    ``pairs`` rated more than once, ``comparisons`` (every two raters of a pair), ``agreement`` (share with
    the same choice, or NaN without comparisons)."""
    latest: dict[tuple[int, int], dict[str, str]] = {}
    for r in sorted(ratings, key=lambda r: r.id):
        if r.other_sample_id is None or r.choice is None:
            continue
        pid, choice = _canonical(r)
        latest.setdefault(pid, {})[r.rater] = choice
    pairs = comparisons = agree = 0
    for by_rater in latest.values():
        choices = list(by_rater.values())
        if len(choices) < 2:
            continue
        pairs += 1
        for i in range(len(choices)):
            for j in range(i + 1, len(choices)):
                comparisons += 1
                agree += choices[i] == choices[j]
    return {"pairs": pairs, "comparisons": comparisons,
            "agreement": agree / comparisons if comparisons else math.nan}


__all__ = [
    "Outcome", "Standing", "fit_bradley_terry", "outcomes", "rater_agreement", "reward_agreement", "standings",
]
