"""What the small worlds' pretraining scripts share (``python -m slas.shapes.pretrain``,
``python -m slas.handworld.pretrain``): a command line made from the config dataclass, random index batches,
the warm-up + cosine learning-rate schedule and a timestamped log line."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def config_args(defaults: Any, stages: Sequence[str], prog: str, description: str,
                argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``--stages a,b`` and one ``--field-name`` option per field of the ``defaults`` dataclass (typed as
    its default; ``out`` becomes a Path), into the keyword arguments of that dataclass."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--stages", default=",".join(stages), help="comma-separated subset of " + ",".join(stages))
    for name, value in asdict(defaults).items():
        if name != "stages":
            kind = str if isinstance(value, Path) else type(value)
            ap.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = vars(ap.parse_args(argv))
    args["stages"] = tuple(s for s in args["stages"].split(",") if s)
    args["out"] = Path(args["out"])
    return args


def index_batches(n: int, batch: int, steps: int, seed: int, device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """``steps`` random index batches into a dataset of ``n`` items (drawn on ``device``, seeded)."""
    gen = torch.Generator(device).manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=gen, device=device)


def warmup_cosine(opt: torch.optim.Optimizer, total: int, floor: float, max_warmup: int | None = None):
    """Linear warm-up over 5% of the steps (at most ``max_warmup``), then cosine decay to ``floor`` x the peak
    rate (transformers' schedule)."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    warmup = max(1, total // 20 if max_warmup is None else min(max_warmup, total // 20))
    return get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total,
                                                       min_lr_rate=floor)


def vae_step(vae: torch.nn.Module, x: Tensor, opt: torch.optim.Optimizer, sched: Any) -> Tensor:
    """One autoencoder step: L1 + L2 reconstruction of a posterior sample plus a tiny KL, gradient clipped at 1;
    returns the loss."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss


def log_line(prefix: str, msg: str) -> None:
    print(f"[{prefix} {time.strftime('%H:%M:%S')}] {msg}", flush=True)
