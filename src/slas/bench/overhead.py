"""``slas bench overhead``: how much of a training iteration is not model compute.

Runs the real trainer on the tiny offline SD pipeline and divides the wall time of an iteration by
the sum of its pure model compute: UNet forwards while sampling, UNet forward + backward while
training, VAE decodes and the reward. Everything else (text encoding, sampler math, log-probs,
advantages, optimizer, Python) is overhead. Goal: ratio <= 1.15.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slas.bench import machine
from slas.config import config_from_dict
from slas.rewards.registry import register, unregister
from slas.run import build_trainer
from slas.testing.tiny import save_tiny_pipeline

BENCH_REWARD = "bench_saturation"


@dataclass
class OverheadReport:
    iterations: int
    wall: float
    parts: dict[str, float] = field(default_factory=dict)
    machine: str = ""

    @property
    def compute(self) -> float:
        return sum(self.parts.values())

    @property
    def ratio(self) -> float:
        return self.wall / self.compute

    def format(self) -> str:
        per = 1000 / self.iterations
        lines = [
            f"slas bench overhead: tiny SD, {self.iterations} measured iterations, {self.machine}",
            f"{'part':<28}{'ms / iteration':>16}{'share of wall':>15}",
        ]
        for name, seconds in self.parts.items():
            lines.append(f"{name:<28}{seconds * per:>16.1f}{seconds / self.wall:>15.1%}")
        lines.append(f"{'model compute (sum)':<28}{self.compute * per:>16.1f}{self.compute / self.wall:>15.1%}")
        lines.append(f"{'overhead':<28}{(self.wall - self.compute) * per:>16.1f}{1 - self.compute / self.wall:>15.1%}")
        lines.append(f"{'wall':<28}{self.wall * per:>16.1f}")
        lines.append(f"ratio wall / model compute = {self.ratio:.3f} (goal <= 1.15)")
        return "\n".join(lines)


class _Clock:
    """Accumulates wall time of instrumented calls; nested calls count once (the outermost)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._depth = 0

    @contextlib.contextmanager
    def time(self, name: str):
        self._depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.totals[name] += time.perf_counter() - start

    def wrap(self, fn, name_of):
        def timed(*args, **kwargs):
            with self.time(name_of()):
                return fn(*args, **kwargs)

        return timed


def _bench_config(model_dir: Path, prompts: Path, out: Path) -> dict:
    return {
        "run": {"name": "bench_overhead", "output_dir": str(out), "seed": 0, "iterations": 1000,
                "checkpoint_every": 1000, "progress": False},
        "model": {"family": "sd", "path": str(model_dir)},
        "data": {"prompts": str(prompts)},
        "sample": {"resolution": 32, "num_steps": 20, "eta": 1.0, "guidance_scale": 5.0, "group_size": 8,
                   "prompts_per_iter": 2, "groups_per_call": 2},
        "rl": {"preset": "slas", "power": 2.0},
        "train": {"lr": 1e-5, "batch_size": 8, "gradient_accumulation_steps": 2, "timestep_fraction": 1.0,
                  "timestep_selection": "first"},
        "reward": {"components": [{"name": BENCH_REWARD, "weight": 1.0}]},
    }


def run_overhead_bench(iterations: int = 3, threads: int = 0) -> OverheadReport:
    """One warm-up iteration, then ``iterations`` measured ones."""
    if threads:
        torch.set_num_threads(threads)
    clock = _Clock()

    @register(BENCH_REWARD)
    def _factory():
        def reward(images, prompts, **_):
            with clock.time("reward"):
                return {"saturation": (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2))}

        return reward

    original_backward = torch.Tensor.backward
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model_dir = save_tiny_pipeline("sd", tmp / "tiny_sd")
            prompts = tmp / "prompts.txt"
            prompts.write_text("\n".join(f"a photo of {i} red squares" for i in range(1, 9)))
            trainer = build_trainer(config_from_dict(_bench_config(model_dir, prompts, tmp / "runs")))
            pipe = trainer.policy.pipe
            unet = pipe.unet
            unet.forward = clock.wrap(unet.forward, lambda: "unet forward (train)" if torch.is_grad_enabled() else "unet forward (sample)")
            pipe.vae.decode = clock.wrap(pipe.vae.decode, lambda: "vae decode")

            def timed_backward(self, *args, **kwargs):
                with clock.time("backward (train)"):
                    return original_backward(self, *args, **kwargs)

            torch.Tensor.backward = timed_backward
            trainer.step()  # warm-up
            clock.totals.clear()
            start = time.perf_counter()
            for _ in range(iterations):
                trainer.step()
            wall = time.perf_counter() - start
            trainer.tracker.close()  # the bench's MLflow run ends FINISHED, not left RUNNING
    finally:
        torch.Tensor.backward = original_backward
        unregister(BENCH_REWARD)
    order = ["unet forward (sample)", "unet forward (train)", "backward (train)", "vae decode", "reward"]
    parts = {k: clock.totals.get(k, 0.0) for k in order}
    return OverheadReport(iterations=iterations, wall=wall, parts=parts, machine=machine())
