"""The GRPO trainer: rollouts -> rewards -> shaped advantages -> objective updates, as a loop of iterations.

It knows only the protocols of ``slas.rl.protocols`` (policy, data source, reward, objective, tracker,
callbacks) and its own config sections (``slas.config.TrainerConfig``), never a concrete model.
"""

from __future__ import annotations

import json
import math
import pickle
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from slas.config import TrainerConfig
from slas.errors import SlasError, one_line
from slas.images import make_grid
from slas.rl import distributed, parallel
from slas.rl.advantages import compute_advantages, zero_std_group_ratio
from slas.rl.callbacks import held_out_overall
from slas.rl.checkpoint import CheckpointDamaged, list_checkpoints, save_checkpoint, verify_checkpoint
from slas.rl.diagnostics import ShapedBatch, shaping_diagnostics
from slas.rl.objectives import GRPOObjective
from slas.rl.power import AutoPower
from slas.rl.protocols import Callback, DataSource, Objective, Policy, RewardFn, SamplingObjective, Tracker
from slas.rl.trajectory import Rollout


def rollout_grid(
    images: Tensor, group_ids: Tensor, *, max_groups: int = 4, max_per_group: int = 8, tile: int = 256, pad: int = 2
) -> Tensor:
    """A [3, H, W] CPU grid in [0, 1] of a rollout: one row per group, so a row shows what one group looked
    like, which is what advantages compare. Tiles are downscaled to at most ``tile`` px and the grid is
    capped, so logging it costs little even at 1024 px with large groups.
    """
    ids = group_ids.cpu()
    rows = [images[(ids == g).nonzero().flatten()[:max_per_group].to(images.device)].detach().float().cpu()
            for g in torch.unique(ids, sorted=True)[:max_groups]]
    cols = max(len(r) for r in rows)
    h, w = rows[0].shape[-2:]
    scale = min(1.0, tile / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    tiles = []
    for row in rows:
        if size != (h, w):
            row = torch.nn.functional.interpolate(row, size=size, mode="bilinear", antialias=True, align_corners=False)
        row = row[:, :3] if row.shape[1] >= 3 else row.expand(-1, 3, -1, -1)
        blank = torch.ones(cols - len(row), 3, *size)
        tiles.append(torch.cat([row.clamp(0, 1), blank]))
    return make_grid(torch.cat(tiles), nrow=cols, padding=pad, pad_value=1.0)


class TrainingDiverged(SlasError, FloatingPointError):
    """The trainable weights turned non-finite: the run stops as failed, never checkpointing them."""

    exit_code = 1


def _named(path: Path, load: Any) -> Any:
    """``load(path)``, any failure re-raised as :class:`CheckpointDamaged` naming ``path``."""
    try:
        return load(path)
    except Exception as exc:
        raise CheckpointDamaged(f"{path}: {one_line(exc, with_type=True, limit=160)}") from exc


def _tensors(path: Path) -> Any:
    """A ``torch.save`` file read as tensors and plain containers only: a pickled object is refused, never run."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointDamaged(f"{path}: holds pickled objects besides tensors; refused to unpickle it "
                                "(it could run code)") from exc
    except Exception as exc:
        raise CheckpointDamaged(f"{path}: {one_line(exc, with_type=True, limit=160)}") from exc


def _stats(values: Tensor) -> tuple[float, float]:
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0


class Trainer:
    """One run of GRPO-style post-training (``config.rl`` picks DanceGRPO or SLAS advantages).

    ``objective`` defaults to :class:`~slas.rl.objectives.GRPOObjective` built from ``config.train``;
    ``strategy`` (how ranks share the work: DDP, FSDP, DeepSpeed) defaults to the one the launcher asked for
    (:func:`slas.rl.parallel.strategy_from_env`); ``checkpoint_metadata`` (e.g. the whole run config) is stored in every checkpoint's
    ``trainer_state.json`` for tools that read checkpoints later.
    """

    def __init__(
        self,
        config: TrainerConfig,
        policy: Policy,
        reward: RewardFn,
        data: DataSource,
        *,
        objective: Objective | None = None,
        tracker: Tracker | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_metadata: Mapping[str, Any] | None = None,
        strategy: parallel.Strategy | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.reward = reward
        self.data = data
        t = config.train
        if objective is None and t.objective != "grpo":
            raise SlasError(f"train.objective={t.objective}: pass the objective to the Trainer "
                            "(slas.run.build_objective builds it); only grpo is the default")
        self.objective = objective or GRPOObjective(
            clip_range=t.clip_range, kl_coef=t.kl_coef, timestep_fraction=t.timestep_fraction,
            timestep_selection=t.timestep_selection,
        )
        self._sampling_objective = isinstance(self.objective, SamplingObjective)  # keeps its own sampling weights
        self.auto_power = AutoPower.from_config(config) if config.rl.power == "auto" else None
        self.tracker = tracker
        self.callbacks = list(callbacks)
        self.checkpoint_metadata = dict(checkpoint_metadata or {})
        self.run_dir = Path(config.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.strategy = strategy if strategy is not None else parallel.strategy_from_env()
        self.strategy.check(config)
        self.optimizer = self.strategy.prepare(policy, lambda params: torch.optim.AdamW(
            params, lr=config.lr, betas=t.betas, eps=t.adam_eps, weight_decay=t.weight_decay))
        if self.auto_power is not None:  # its adam step model replays this optimizer's steps (or refuses it, now)
            self.auto_power.attach(self.optimizer, policy.trainable_parameters())
        self.ema = None
        if t.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(policy.trainable_parameters(), decay=t.ema.decay)
        self.iteration = 0
        self.timers: dict[str, float] = defaultdict(float)
        self.rank, self.world = distributed.rank_and_world()
        self.stopped = False
        self.progress_shown = False  # a progress bar is on the terminal (set by ``train``)
        self.last_batch: ShapedBatch | None = None  # the last iteration's rewards, advantages and groups
        self.resumed_from: Path | None = None
        self._saved_iteration = 0
        self._until: int | None = None  # the iteration train() runs to (the last one also logs a sample grid)
        self._grid: Tensor | None = None  # this iteration's sample grid, logged with its metrics

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timers[name] += time.perf_counter() - start

    def _seed(self) -> int:
        """Rollout seed of this iteration: global group j uses ``_seed() + j`` (see ``Policy.rollout``)."""
        return (self.config.run.seed * 1_000_003 + self.iteration) * 100_003

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, float]:
        """Run one iteration (sample, reward, update) and return its metrics."""
        cfg = self.config
        self.timers.clear()
        start = time.perf_counter()
        k = cfg.sample.prompts_per_iter
        # every rank draws the same global group list and takes its slice; groups are numbered globally
        groups = self.data.next(k * self.world)[self.rank * k : (self.rank + 1) * k]
        sampling = self.objective.sampling(self.policy) if self._sampling_objective else nullcontext()
        with self._timed("rollout"), sampling:  # an objective with its own sampling weights rolls out with them
            rollout = self.policy.rollout(groups, group_size=cfg.sample.group_size, seed=self._seed() + self.rank * k)
        with self._timed("reward"):
            rewards = self.reward(rollout.images, rollout.prompts, group_ids=rollout.group_ids, **rollout.conditions)
        # the global batch: SLAS's batch std is over all ranks
        rewards = {name: distributed.all_gather_cat(v.float().cpu()) for name, v in rewards.items()}
        group_ids = distributed.all_gather_cat(rollout.group_ids + self.rank * k)
        total = rewards["total"]
        rl = cfg.rl
        n_local = len(rollout.prompts)

        def advantages(power: float) -> Tensor:
            return compute_advantages(total, group_ids, std_scope=rl.std_scope, power=power, clip=rl.clip, eps=rl.eps,
                                      shape_before_norm=rl.shape_before_norm)

        metrics: dict[str, float] = {}
        power = rl.power
        if self.auto_power is not None:  # rl.power: auto picks this iteration's power within its bound
            with self._timed("auto_power"):
                # its own seed, clear of the groups' rollout seeds (_seed() + j): no other draw of the run changes
                power, chosen = self.auto_power.choose(self.policy, rollout.trajectory, advantages, self.rank * n_local,
                                                       iteration=self.iteration, seed=self._seed() + 50_000 + self.rank)
            metrics.update(chosen)
        adv_all = advantages(power)
        adv = adv_all[self.rank * n_local : (self.rank + 1) * n_local]
        for name, values in rewards.items():
            metrics[f"reward/{name}/mean"], metrics[f"reward/{name}/std"] = _stats(values)
        metrics["reward/nonfinite"] = float((~torch.isfinite(total)).sum())
        metrics["zero_std_group_ratio"] = zero_std_group_ratio(total, group_ids)
        metrics["adv/mean_abs"] = float(adv_all.abs().mean())
        metrics["adv/max_abs"] = float(adv_all.abs().max())
        metrics["adv/frac_gt1"] = float((adv_all.abs() > 1).float().mean())
        metrics.update(shaping_diagnostics(total, adv_all, group_ids, near_flat_std=rl.near_flat_std))
        self.last_batch = ShapedBatch(total, adv_all, group_ids)  # for callbacks that look at the rule's output
        with self._timed("train"):
            if torch.isfinite(total).any():
                metrics.update(self._update(rollout, adv))
            else:  # no finite reward in the whole batch (e.g. a remote judge down): nothing to learn from, and a
                # step on zero gradients would still move the weights (AdamW's momentum and weight decay)
                metrics.update(optimizer_steps=0.0, skipped_updates=float(self._updates_per_iteration(n_local)))
            if self._sampling_objective:
                self.objective.after_iteration(self.policy, int(metrics["optimizer_steps"]))
        self.iteration += 1
        if self._images_due():
            self._grid = rollout_grid(rollout.images, rollout.group_ids)
        elapsed = time.perf_counter() - start
        metrics["time/iteration"] = elapsed
        metrics["images_per_sec"] = len(rollout.prompts) * self.world / elapsed
        for name, seconds in self.timers.items():
            metrics[f"time/{name}"] = seconds
        return metrics

    def _updates_per_iteration(self, n: int) -> int:
        """Optimizer steps an iteration of ``n`` local samples takes: micro-batches of ``train.batch_size``,
        ``gradient_accumulation_steps`` of them per step."""
        cfg = self.config.train
        return math.ceil(math.ceil(n / cfg.batch_size) / cfg.gradient_accumulation_steps)

    def _update(self, rollout: Rollout, adv: Tensor) -> dict[str, float]:
        """Micro-batches of ``train.batch_size`` samples, ``gradient_accumulation_steps`` per optimizer step;
        every loss term of the objective is back-propagated as it comes."""
        cfg = self.config.train
        n = rollout.trajectory.num_samples
        device = rollout.trajectory.log_probs.device
        gen = torch.Generator().manual_seed(self._seed() + 7 + self.rank)
        adv_dev = adv.to(device)
        plan = self.objective.plan(self.policy, rollout, adv_dev, gen)
        order = torch.randperm(n, generator=gen)
        micro = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        accum = cfg.gradient_accumulation_steps
        updates = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        maxima: dict[str, float] = {}
        grad_norms = []
        skipped = 0
        strategy = self.strategy
        with strategy.training(self.policy):
            params = self.policy.trainable_parameters()
            for u, batches in enumerate(updates):
                samples = sum(len(m) for m in batches)
                for b, idx in enumerate(batches):
                    idx = idx.to(device)
                    terms = self.objective.losses(self.policy, rollout, adv_dev, idx, plan, update=u)
                    # only the step's last backward synchronises gradients (DDP's no_sync, DeepSpeed's boundary)
                    for j in range(plan.terms):
                        strategy.before_forward(b == len(batches) - 1 and j == plan.terms - 1)
                        loss, stats = next(terms, (None, None))
                        if loss is None:
                            raise SlasError(f"{type(self.objective).__name__}.losses yielded {j} terms; its plan "
                                            f"said {plan.terms}")
                        # each sample's loss is averaged over its terms and the optimizer step's samples
                        strategy.backward(loss * len(idx) / (samples * plan.terms))
                        for key, value in stats.items():
                            if key in self.objective.max_stats:
                                maxima[key] = max(maxima.get(key, value), value)
                            else:
                                sums[key] += value
                                counts[key] += 1
                    if next(terms, None) is not None:
                        raise SlasError(f"{type(self.objective).__name__}.losses yielded more than plan.terms="
                                        f"{plan.terms} terms")
                strategy.reduce_gradients(params)  # every rank then holds the same gradients and decides alike
                norm = strategy.clip_grad_norm(params, cfg.max_grad_norm)
                if norm is not None and not math.isfinite(norm):
                    strategy.zero_grad(self.optimizer)  # a non-finite loss or gradient: the update is skipped, counted
                    skipped += 1
                    continue
                strategy.step(self.optimizer)
                if norm is None:  # DeepSpeed's engine clips (and measures) inside its step
                    norm = strategy.grad_norm_after_step()
                grad_norms.append(norm)
                strategy.zero_grad(self.optimizer)
                if self.ema is not None:
                    self.ema.step(params)
        params = self.policy.trainable_parameters()
        out = {key: v / counts[key] for key, v in sums.items()}
        out.update(maxima)
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        out["optimizer_steps"] = float(len(updates) - skipped)
        out["skipped_updates"] = float(skipped)
        if not strategy.all_finite(params):
            raise TrainingDiverged(f"training diverged: trainable weights are non-finite in iteration {self.iteration + 1} "
                                   "(lower train.lr or set train.max_grad_norm); no checkpoint of them was written")
        return distributed.mean_over_ranks(out)  # with several ranks: the mean of each rank's figure

    def _images_due(self) -> bool:
        """Rank 0 makes a sample grid every ``run.log_images_every`` iterations (default: at checkpoints) and
        at the last one, when it has a tracker."""
        if self.rank != 0 or self.tracker is None:
            return False
        run = self.config.run
        every = run.checkpoint_every if run.log_images_every is None else run.log_images_every
        if every == 0:
            return False
        return self.iteration % every == 0 or self.iteration == self._until

    # ------------------------------------------------------------------ the loop
    def _stop_requested(self) -> bool:
        """A callback's ``should_stop`` on any rank stops every rank at the same iteration boundary."""
        flag = float(any(cb.should_stop(self) for cb in self.callbacks))
        if self.world > 1:
            flag = distributed.mean_over_ranks({"stop": flag})["stop"]
        return flag > 0

    def train(self, iterations: int | None = None) -> list[dict[str, float]]:
        """Train until ``iterations`` (default ``run.iterations``) are done; checkpoint every N and at the end.

        Each iteration's metrics (with what the callbacks' ``on_step_end`` add) go to the tracker at
        ``step = iteration``; so does a grid of the rollout's images (``samples/rollout``) every
        ``run.log_images_every`` iterations and at the last one.

        When a callback's ``should_stop`` turns true the current iteration finishes, a checkpoint is
        written and ``stopped`` is set, so a cancelled run resumes exactly where it stopped.
        """
        cfg = self.config.run
        until = iterations if iterations is not None else cfg.iterations
        self._until = until
        history = []
        # a bar only on a terminal (disable=None): in a log file it would be a stream of carriage returns
        quiet = True if not cfg.progress or self.rank > 0 else None
        bar = tqdm(total=until, initial=self.iteration, desc=cfg.name, disable=quiet, unit="it")
        self.progress_shown = not bar.disable  # IterationLog stays quiet while a bar shows the same
        evals: dict[str, str] = {}
        try:
            for cb in self.callbacks:
                cb.on_train_begin(self)
            while self.iteration < until:
                if self._stop_requested():
                    self.stopped = True
                    if self.iteration != self._saved_iteration:
                        self.save_checkpoint()
                    break
                metrics = self.step()
                for cb in self.callbacks:
                    metrics.update(cb.on_step_end(self, metrics) or {})
                self._log(metrics)
                history.append(metrics)
                bar.update(1)
                evals.update({name: f"{v:.3f}" for name, v in held_out_overall(metrics).items()})
                bar.set_postfix(reward=f"{metrics['reward/total/mean']:.4f}", **evals,
                                s_it=f"{metrics['time/iteration']:.1f}")
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == until:
                    self.save_checkpoint()
            for cb in self.callbacks:
                cb.on_train_end(self)
        finally:
            bar.close()
            self.progress_shown = False
            self._until = None
        return history

    def _log(self, metrics: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=self.iteration)
            if self._grid is not None:
                grid, self._grid = self._grid, None
                self.tracker.log_image(grid, "samples/rollout", step=self.iteration)
        if self.rank == 0:
            for cb in self.callbacks:
                cb.on_log(self, metrics)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Rank 0 writes; the other ranks wait for it. With sharded weights every rank first takes part in
        gathering the full weights and optimizer state for rank 0."""
        path = self.ckpt_dir / f"iter_{self.iteration:06d}"
        weights = self.strategy.trainable_state(self.policy)
        optimizer = self.strategy.optimizer_state(self.optimizer, self.policy)
        if self.rank == 0:
            path = self._write_checkpoint(weights, optimizer)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        distributed.barrier()
        self._saved_iteration = self.iteration
        return path

    def _write_checkpoint(self, weights: Mapping[str, Tensor] | None, optimizer: Any) -> Path:
        def write(tmp: Path) -> None:
            if weights is None:
                self.policy.save_trainable(tmp / "trainable")
            else:
                self.policy.save_trainable(tmp / "trainable", state_dict=weights)
            torch.save(optimizer, tmp / "optimizer.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / "ema.pt")
            if self._sampling_objective:
                torch.save(self.objective.state_dict(), tmp / "objective.pt")
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            state = {"iteration": self.iteration, "data": self.data.state_dict(), **self.checkpoint_metadata}
            if self.auto_power is not None:
                state["auto_power"] = self.auto_power.state_dict()
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))

        return save_checkpoint(self.ckpt_dir, self.iteration, write)

    def load_checkpoint(self, path: str | Path | None = None) -> Path:
        """Restore weights, optimizer, EMA, RNG, data position and iteration (default: the newest complete).

        Every checkpoint is verified against its manifest first, and every file is read with
        ``weights_only=True`` (tensors and plain containers, never a pickled object), so a checkpoint from
        someone else cannot run code here. Without ``path``, a damaged newest checkpoint is skipped with a
        warning naming the file, and the one before it is loaded.
        """
        candidates = [Path(path)] if path is not None else list_checkpoints(self.ckpt_dir)[::-1]
        if not candidates:
            raise FileNotFoundError(f"no complete checkpoint under {self.ckpt_dir}")
        for i, ckpt in enumerate(candidates):
            try:
                verify_checkpoint(ckpt)
                self._load(ckpt)
                return ckpt
            except Exception as exc:  # any file that fails to load makes the checkpoint unusable
                reason = one_line(exc) if isinstance(exc, CheckpointDamaged) else f"{ckpt}: {one_line(exc, with_type=True)}"
                if i + 1 == len(candidates):
                    raise CheckpointDamaged(f"cannot resume: {reason}") from exc
                warnings.warn(f"checkpoint {ckpt.name} is damaged ({reason}); resuming from {candidates[i + 1].name}",
                              RuntimeWarning, stacklevel=2)

    def _load(self, path: Path) -> None:
        _named(path / "trainable", lambda p: self.strategy.load_trainable(self.policy, p))
        self.strategy.load_optimizer_state(self.optimizer, self.policy, _tensors(path / "optimizer.pt"))
        if self.ema is not None and (path / "ema.pt").is_file():
            self.ema.load_state_dict(_tensors(path / "ema.pt"))
        if self._sampling_objective and (path / "objective.pt").is_file():
            self.objective.load_state_dict(_tensors(path / "objective.pt"))
        rng = _tensors(path / "rng.pt")
        state = _named(path / "trainer_state.json", lambda p: json.loads(p.read_text()))
        self.data.load_state_dict(state["data"] if "data" in state else state["prompts"])  # "prompts": before 0.2
        if self.auto_power is not None:  # without saved state (a run that switched to auto): estimated afresh
            self.auto_power.load_state_dict(state.get("auto_power", {}))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.iteration = self._saved_iteration = int(state["iteration"])
        self.resumed_from = path
