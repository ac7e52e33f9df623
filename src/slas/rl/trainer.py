"""The GRPO trainer: rollouts -> rewards -> shaped advantages -> PPO-clip updates on recorded steps.

It knows only the policy protocol (``slas.rl.trajectory.Policy``), a reward callable and a tracker.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from torch import Tensor
from tqdm.auto import tqdm

from slas.config import SLASConfig
from slas.platform.tracking import Tracker
from slas.rl import distributed
from slas.rl.advantages import compute_advantages, zero_std_group_ratio
from slas.rl.checkpoint import latest_checkpoint, save_checkpoint
from slas.rl.loss import gaussian_kl, ppo_clip_loss
from slas.rl.trajectory import Policy, Rollout
from slas.t2i.prompts import PromptSampler

RewardFn = Callable[..., dict[str, Tensor]]


def trained_steps(num_steps: int, fraction: float, num_samples: int, selection: str, generator: torch.Generator) -> Tensor:
    """[num_samples, k] step indices to train per sample.

    The last denoising step is never trained (DanceGRPO); k = int((num_steps - 1) * fraction), at least 1.
    ``random`` draws a fresh permutation per sample (DanceGRPO); ``first`` takes the k noisiest steps.
    """
    candidates = num_steps - 1
    k = max(1, int(candidates * fraction))
    if selection == "first":
        return torch.arange(k).expand(num_samples, k).clone()
    return torch.stack([torch.randperm(candidates, generator=generator)[:k] for _ in range(num_samples)])


def rollout_grid(
    images: Tensor, group_ids: Tensor, *, max_groups: int = 4, max_per_group: int = 8, tile: int = 256, pad: int = 2
) -> Tensor:
    """A [3, H, W] CPU grid in [0, 1] of a rollout: one row per group (prompt), so a row shows what one
    prompt's group looked like, which is what advantages compare. Tiles are downscaled to at most ``tile`` px
    and the grid is capped, so logging it costs little even at 1024 px with large groups.
    """
    rows = []
    for g in torch.unique(group_ids.cpu(), sorted=True)[:max_groups]:
        idx = (group_ids.cpu() == g).nonzero().flatten()[:max_per_group]
        rows.append(images[idx.to(images.device)].detach().float())
    cols = max(len(r) for r in rows)
    h, w = rows[0].shape[-2:]
    scale = min(1.0, tile / max(h, w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    grid = torch.ones(3, len(rows) * (th + pad) + pad, cols * (tw + pad) + pad)
    for r, row in enumerate(rows):
        if (th, tw) != (h, w):
            row = torch.nn.functional.interpolate(row, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        row = row.clamp(0, 1).cpu()
        for c, img in enumerate(row):
            y, x = pad + r * (th + pad), pad + c * (tw + pad)
            grid[:, y : y + th, x : x + tw] = img[:3] if img.shape[0] >= 3 else img.expand(3, -1, -1)
    return grid


def _stats(values: Tensor) -> tuple[float, float]:
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0


class Trainer:
    """One run of GRPO-style post-training (``config.rl`` picks DanceGRPO or SLAS advantages)."""

    def __init__(
        self,
        config: SLASConfig,
        policy: Policy,
        reward: RewardFn,
        prompts: PromptSampler,
        tracker: Tracker | None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.reward = reward
        self.prompts = prompts
        self.tracker = tracker
        self.run_dir = config.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        t = config.train
        params = policy.trainable_parameters()
        lr = config.model.lora.lr if config.model.finetune == "lora" and config.model.lora.lr else t.lr
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=t.betas, eps=t.adam_eps, weight_decay=t.weight_decay)
        self.ema = EMAModel(params, decay=t.ema.decay) if t.ema.enabled else None
        self.iteration = 0
        self.timers: dict[str, float] = defaultdict(float)
        self.rank, self.world = distributed.rank_and_world()
        # hooks for the job runner (slas.run.run_training): a graceful stop (SIGTERM) is honoured between
        # iterations, and each published checkpoint is reported (rank 0 only)
        self.should_stop: Callable[[], bool] | None = None
        self.on_checkpoint: Callable[[Path, int], None] | None = None
        # after each iteration, before its metrics are logged: extra metrics for the same step (evaluations)
        self.after_step: Callable[[Trainer, dict[str, float]], dict[str, float] | None] | None = None
        self.stopped = False
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
        # every rank draws the same global prompt list and takes its slice; groups are numbered globally
        prompts = self.prompts.next(k * self.world)[self.rank * k : (self.rank + 1) * k]
        with self._timed("rollout"):
            rollout = self.policy.rollout(prompts, group_size=cfg.sample.group_size, seed=self._seed() + self.rank * k)
        with self._timed("reward"):
            rewards = self.reward(rollout.images, rollout.prompts, group_ids=rollout.group_ids)
        # the global batch: SLAS's batch std is over all ranks
        rewards = {name: distributed.all_gather_cat(v.float().cpu()) for name, v in rewards.items()}
        group_ids = distributed.all_gather_cat(rollout.group_ids + self.rank * k)
        total = rewards["total"]
        rl = cfg.rl
        adv_all = compute_advantages(
            total, group_ids, std_scope=rl.std_scope, power=rl.power, clip=rl.clip, eps=rl.eps,
            shape_before_norm=rl.shape_before_norm,
        )
        n_local = len(rollout.prompts)
        adv = adv_all[self.rank * n_local : (self.rank + 1) * n_local]
        metrics: dict[str, float] = {}
        for name, values in rewards.items():
            metrics[f"reward/{name}/mean"], metrics[f"reward/{name}/std"] = _stats(values)
        metrics["reward/nonfinite"] = float((~torch.isfinite(total)).sum())
        metrics["zero_std_group_ratio"] = zero_std_group_ratio(total, group_ids)
        metrics["adv/mean_abs"] = float(adv_all.abs().mean())
        metrics["adv/max_abs"] = float(adv_all.abs().max())
        metrics["adv/frac_gt1"] = float((adv_all.abs() > 1).float().mean())
        with self._timed("train"):
            metrics.update(self._update(rollout, adv))
        self.iteration += 1
        if self._images_due():
            self._grid = rollout_grid(rollout.images, rollout.group_ids)
        elapsed = time.perf_counter() - start
        metrics["time/iteration"] = elapsed
        metrics["images_per_sec"] = len(rollout.prompts) * self.world / elapsed
        for name, seconds in self.timers.items():
            metrics[f"time/{name}"] = seconds
        return metrics

    def _update(self, rollout: Rollout, adv: Tensor) -> dict[str, float]:
        cfg = self.config.train
        traj = rollout.trajectory
        n = traj.num_samples
        gen = torch.Generator().manual_seed(self._seed() + 7 + self.rank)
        steps = trained_steps(self.policy.num_steps, cfg.timestep_fraction, n, cfg.timestep_selection, gen)
        k = steps.shape[1]
        order = torch.randperm(n, generator=gen)
        micro = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        groups = [micro[i : i + cfg.gradient_accumulation_steps] for i in range(0, len(micro), cfg.gradient_accumulation_steps)]
        adv_dev = adv.to(traj.log_probs.device)
        steps = steps.to(traj.log_probs.device)
        sums: dict[str, float] = defaultdict(float)
        count = 0
        ratio_dev_before = 0.0
        grad_norms = []
        params = self.policy.trainable_parameters()
        for g, group in enumerate(groups):
            group_size = sum(len(m) for m in group)
            for idx in group:
                idx = idx.to(traj.log_probs.device)
                for j in range(k):
                    s = steps[idx, j]
                    if cfg.kl_coef > 0:
                        mean, std, logp = self.policy.step_distribution(traj, idx, s)
                        with torch.no_grad():
                            ref_mean = self.policy.step_distribution(traj, idx, s, reference=True)[0]
                        kl = gaussian_kl(mean, ref_mean, std).mean()
                    else:
                        logp = self.policy.step_log_prob(traj, idx, s)
                        kl = None
                    loss, st = ppo_clip_loss(logp, traj.log_probs[idx, s], adv_dev[idx], cfg.clip_range)
                    if kl is not None:
                        loss = loss + cfg.kl_coef * kl
                        sums["kl_ref"] += float(kl.detach())
                    # each sample's loss is averaged over its trained steps and the optimizer step's samples
                    (loss * len(idx) / (group_size * k)).backward()
                    sums["loss"] += float(loss.detach())
                    for key in ("ratio", "clip_frac", "approx_kl"):
                        sums[key] += float(st[key])
                    if g == 0:
                        ratio_dev_before = max(ratio_dev_before, float(st["ratio_dev"]))
                    count += 1
            distributed.average_gradients(params)
            if cfg.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            else:
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            grad_norms.append(float(norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.step(params)
        out = {key: v / count for key, v in sums.items()}
        out["ratio_dev_before_update"] = ratio_dev_before
        out["grad_norm"] = sum(grad_norms) / len(grad_norms)
        out["optimizer_steps"] = float(len(groups))
        return distributed.mean_over_ranks(out)  # with several ranks: the mean of each rank's figure

    def _images_due(self) -> bool:
        """Rank 0 makes a sample grid every ``run.log_images_every`` iterations (default: at checkpoints) and
        at the last one, when its tracker can log images."""
        if self.rank != 0 or not callable(getattr(self.tracker, "log_image", None)):
            return False
        run = self.config.run
        every = run.checkpoint_every if run.log_images_every is None else run.log_images_every
        if every == 0:
            return False
        return self.iteration % every == 0 or self.iteration == self._until

    # ------------------------------------------------------------------ the loop
    def _stop_requested(self) -> bool:
        """``should_stop()`` on any rank stops every rank at the same iteration boundary."""
        if self.should_stop is None:
            return False
        flag = float(bool(self.should_stop()))
        if self.world > 1:
            flag = distributed.mean_over_ranks({"stop": flag})["stop"]
        return flag > 0

    def train(self, iterations: int | None = None) -> list[dict[str, float]]:
        """Train until ``iterations`` (default ``run.iterations``) are done; checkpoint every N and at the end.

        Each iteration's metrics go to the tracker at ``step = iteration``; so does a grid of the rollout's
        images (``samples/rollout``) every ``run.log_images_every`` iterations and at the last one.

        When ``should_stop()`` turns true the current iteration finishes, a checkpoint is written and
        ``stopped`` is set, so a cancelled run resumes exactly where it stopped.
        """
        cfg = self.config.run
        until = iterations if iterations is not None else cfg.iterations
        self._until = until
        history = []
        bar = tqdm(total=until, initial=self.iteration, desc=cfg.name, disable=not cfg.progress or self.rank > 0, unit="it")
        try:
            while self.iteration < until:
                if self._stop_requested():
                    self.stopped = True
                    if self.iteration != self._saved_iteration:
                        self.save_checkpoint()
                    break
                metrics = self.step()
                if self.after_step is not None:
                    metrics.update(self.after_step(self, metrics) or {})
                if self.tracker is not None:
                    self.tracker.log_metrics(metrics, step=self.iteration)
                if self._grid is not None:
                    grid, self._grid = self._grid, None
                    self.tracker.log_image(grid, "samples/rollout", step=self.iteration)
                history.append(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/total/mean']:.4f}", s_it=f"{metrics['time/iteration']:.1f}")
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == until:
                    self.save_checkpoint()
        finally:
            bar.close()
            self._until = None
        return history

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Rank 0 writes; the other ranks wait for it (every rank holds the same weights)."""
        path = self.ckpt_dir / f"iter_{self.iteration:06d}"
        if self.rank == 0:
            path = self._write_checkpoint()
            if self.on_checkpoint is not None:
                self.on_checkpoint(path, self.iteration)
        distributed.barrier()
        self._saved_iteration = self.iteration
        return path

    def _write_checkpoint(self) -> Path:
        def write(tmp: Path) -> None:
            self.policy.save_trainable(tmp / "trainable")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / "ema.pt")
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            state = {"iteration": self.iteration, "prompts": self.prompts.state_dict(), "config": self.config.model_dump(mode="json")}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))

        return save_checkpoint(self.ckpt_dir, self.iteration, write)

    def load_checkpoint(self, path: str | Path | None = None) -> Path:
        """Restore weights, optimizer, EMA, RNG, data position and iteration (default: the newest complete)."""
        path = Path(path) if path is not None else latest_checkpoint(self.ckpt_dir)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint under {self.ckpt_dir}")
        self.policy.load_trainable(path / "trainable")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        if self.ema is not None and (path / "ema.pt").is_file():
            self.ema.load_state_dict(torch.load(path / "ema.pt", weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        state = json.loads((path / "trainer_state.json").read_text())
        self.iteration = self._saved_iteration = int(state["iteration"])
        self.prompts.load_state_dict(state["prompts"])
        self.resumed_from = path
        return path
