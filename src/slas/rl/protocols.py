"""The protocols the RL engine is written against; concrete models, rewards, data and trackers plug in.

The trainer (``slas.rl.trainer``) knows only these: a :class:`Policy` to sample and score, a
:class:`DataSource` of groups, a :class:`RewardFn`, an :class:`Objective` turning a rollout and its
advantages into loss terms, a :class:`Tracker` for metrics, and :class:`Callback` objects for everything
the job around it wants to hear about. Text-to-image and editing differ only in the objects passed in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from slas.rl.trajectory import Rollout, Trajectory

if TYPE_CHECKING:
    from slas.rl.trainer import Trainer


@dataclass(frozen=True)
class Group:
    """One rollout group: G samples of the same prompt and conditions, compared with each other.

    ``key`` identifies the item of the data source the group came from (a prompt's line, a (person,
    product) pair); it never has to be the prompt text, which many groups may share (editing uses one
    fixed instruction). ``conditions`` are what the policy and the reward need besides the prompt
    (e.g. ``reference_images``), one value per group.
    """

    key: str
    prompt: str
    conditions: Mapping[str, Any] = field(default_factory=dict)


GroupLike = Group | str
"""What ``Policy.rollout`` and ``Policy.generate`` take: groups, or bare prompts (keyed by position)."""


def as_groups(items: Sequence[GroupLike]) -> list[Group]:
    """Groups from groups or bare prompt strings (a string's key is its position in ``items``)."""
    return [g if isinstance(g, Group) else Group(key=str(i), prompt=str(g)) for i, g in enumerate(items)]


@runtime_checkable
class Policy(Protocol):
    """A stochastic sampler with exact log-probs, trainable in place (``slas.t2i``, ``slas.editing``)."""

    num_steps: int

    def rollout(self, groups: Sequence[GroupLike], *, group_size: int, seed: int) -> Rollout:
        """Sample ``group_size`` images per group with log-probs (no grad); group j draws its noise from
        ``seed + j`` alone."""

    def step_log_prob(self, trajectory: Trajectory, indices: Tensor, step: int | Tensor) -> Tensor:
        """Log-prob of the recorded transition ``step`` (int, or one per index) under the current weights."""

    def step_distribution(
        self, trajectory: Trajectory, indices: Tensor, step: int | Tensor, *, reference: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, std, log_prob) of that transition; ``reference=True`` uses the frozen initial weights."""

    def generate(self, groups: Sequence[GroupLike], seeds: Sequence[int], *, batch_size: int = 8) -> Tensor:
        """Deterministic samples [N, 3, H, W] in [0, 1] (CPU float), one per (group, seed): the
        pipeline's own ODE/DDIM sampler with the initial noise of each seed alone, so images of two
        checkpoints differ only by the weights (evaluation, comparison sets)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def save_trainable(self, directory: Path) -> None: ...

    def load_trainable(self, directory: Path) -> None: ...


@runtime_checkable
class ShardablePolicy(Protocol):
    """A policy whose trainable weights live in one torch module, so a data-parallel strategy
    (``slas.rl.parallel``: DDP, FSDP, DeepSpeed) can wrap or shard it without knowing the model.

    The strategy wraps ``trainable_module()`` (DDP, a DeepSpeed engine) or shards it in place (FSDP2) and
    calls ``use_trainable_module(wrapper)`` around the optimizer steps, so training forwards go through the
    wrapper; ``None`` goes back to the module itself (rollouts, references) and collects the trainable
    parameters again (sharding replaces them). With sharded weights the strategy gathers the module's full
    state dict and passes it to ``save_trainable``; ``read_trainable`` returns the state dict a checkpoint
    holds (full fine-tunes), which the strategy scatters into the shards.
    """

    def trainable_module(self) -> torch.nn.Module: ...

    def use_trainable_module(self, module: torch.nn.Module | None) -> None: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def save_trainable(self, directory: Path, state_dict: Mapping[str, Tensor] | None = None) -> None: ...

    def load_trainable(self, directory: Path) -> None: ...

    def read_trainable(self, directory: Path) -> dict[str, Tensor]: ...


@runtime_checkable
class DataSource(Protocol):
    """Where groups come from: draws are deterministic given the seed, and the position is checkpointable."""

    def next(self, k: int) -> list[Group]:
        """The next ``k`` groups (every rank draws the same global list and takes its slice)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class RewardFn(Protocol):
    """``reward(images, prompts, **conditions)``: named components, one value per image, and ``"total"``
    (what the advantages are computed from). Conditions include ``group_ids`` and the groups' own ones."""

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]: ...


@runtime_checkable
class Tracker(Protocol):
    """Where metrics go (``metrics.jsonl``, MLflow, ...); a step is never logged twice."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_image(self, image: Any, key: str, step: int) -> Any: ...

    def close(self, status: str = "FINISHED") -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED`` (MLflow's run states)."""


@dataclass
class ObjectivePlan:
    """An objective's per-iteration plan: ``terms`` loss terms per ``losses`` call (each is back-propagated
    with weight ``len(indices) / (optimizer-step samples * terms)``) and whatever else it decided."""

    terms: int
    data: Any = None


@runtime_checkable
class Objective(Protocol):
    """The policy-gradient objective: from a rollout and its advantages to loss terms.

    ``plan`` runs once per iteration (e.g. which denoising steps to train); ``losses`` yields the
    ``plan.terms`` loss terms of the samples ``indices``, each the mean over those samples. The trainer
    back-propagates each term as it comes (so only one term's graph is alive), weighted so that an
    optimizer step minimises the mean over its samples and terms, accumulates micro-batches and steps
    the optimizer. ``max_stats`` names the statistics reduced by max over the iteration; every other
    one is averaged over the terms that report it.
    """

    max_stats: frozenset[str]

    def plan(self, policy: Policy, rollout: Rollout, advantages: Tensor, generator: torch.Generator) -> ObjectivePlan: ...

    def losses(
        self, policy: Policy, rollout: Rollout, advantages: Tensor, indices: Tensor, plan: ObjectivePlan, *,
        update: int,
    ) -> Iterator[tuple[Tensor, dict[str, float]]]:
        """``(loss, stats)`` terms for ``indices``; ``update`` counts the optimizer steps of this iteration
        (0: the weights are still those that sampled the rollout)."""


@runtime_checkable
class SamplingObjective(Protocol):
    """An objective that keeps its own sampling ("old") weights, as DiffusionNFT's old policy does: the trainer
    draws each rollout inside ``sampling(policy)``, calls ``after_iteration`` once an iteration's optimizer
    steps are done, and checkpoints ``state_dict()`` (tensors and plain values) beside the weights."""

    def sampling(self, policy: Policy) -> AbstractContextManager[None]:
        """The policy holds the sampling weights inside this context and its own ones again after it."""

    def after_iteration(self, policy: Policy, optimizer_steps: int) -> None:
        """The iteration took ``optimizer_steps`` steps; move the sampling weights towards the trained ones."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Callback:
    """TRL-style hooks into :class:`slas.rl.trainer.Trainer`; subclass and override what you need.

    Every method is a no-op by default. Callbacks run in the order given, on every rank unless said.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first iteration of ``train()`` (after any resume)."""

    def should_stop(self, trainer: Trainer) -> bool:
        """Asked before each iteration; True on any rank stops every rank there, with a checkpoint."""
        return False

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> Mapping[str, float] | None:
        """After an iteration, before its metrics are logged: extra metrics for the same step (evaluations)."""
        return None

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        """After an iteration's metrics went to the tracker (rank 0)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint was published (rank 0)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last iteration of ``train()`` (also when it was stopped), before it returns."""
