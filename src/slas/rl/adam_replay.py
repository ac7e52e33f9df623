"""The Adam step model of ``rl.power: auto`` (:mod:`slas.rl.power`): the weight change that the iteration's
torch Adam/AdamW steps would make, replayed from the optimizer's own state, and the approx KL it predicts.

Why replay the optimizer
------------------------
:mod:`slas.rl.power` predicts, for each candidate exponent p, the approx KL 1/2 Delta^T F Delta of the
iteration's weight change Delta(p) (F: the empirical Fisher of the trained pairs) and keeps it within a
budget. Its ``step_model: sgd`` takes Delta = eta * U * g(p), a plain gradient step. AdamW's step per
coordinate is ~eta * m_hat / (sqrt(v_hat) + eps): at the first step eta * g / (|g| + eps), about
eta * sign(g), later set by the moments' history, so nearly independent of ||g|| and far larger than
eta * g (shapes world: the sgd prediction was ~1e-14 where the real change made ~1e-7). So the
``step_model: adam`` prediction replays the optimizer (:func:`adam_step`): from its real state (exp_avg,
exp_avg_sq, step count, betas, eps, weight decay, lr, per parameter group; none before the first step) it
takes U steps, each fed the same gradient -g_hat(p) (assumed: the U steps' gradients all equal the
iteration's estimate; the real ones are U different mini-batches), and predicts 1/2 Delta^T F_S Delta =
1/(2 m) ||J_S Delta||^2 (:func:`step_kl`; no P x P matrix), J_S [m, P] being the m sampled pairs'
gradients and F_S = J_S^T J_S / m their empirical Fisher.

Two things follow from Adam's normalisation: p changes the step's *direction* mix (which samples carry the
weight) far more than its size, and the KL seen through F_S is what registers that; and Delta must not be
measured on the pairs that formed it: sign(J_S^T a) is correlated with each of those rows at ~1/sqrt(m),
so the in-sample figure is far above the change fresh transitions see (measured: 20-45x at m = 32, halving
at m = 64). It is therefore cross-fitted (:func:`cross_fitted_adam_kl`): the pairs split in halves, each
half's g_hat = J_h^T a_h / m_h drives the replay and the change is measured on the other half's Fisher,
the two averaged.

Measured on the shapes world (``configs/shapes_slas.yaml``, ``rl.power: auto``, 6 iterations, 2-core
CPU, 2026-11-29) against the KL that the real step made on 16 fresh samples x 7 steps: with one optimizer
step per iteration 0.33-1.9x of it (predicted 2e-7 .. 6e-8), ||Delta|| within 12%; with four
(``gradient_accumulation_steps=1``) 0.3-3.8x (the same-gradient replay overstates ||Delta|| up to 2x); low
in the first iterations (a half-sample gradient has less signal than the step's mini-batch), high by the
sixth. The default budget (5e-5 at clip_range 0.01) never bound: p = p_max throughout, the real change
100-1000x inside it. From p_min to p_max the predicted KL moved -45% .. +43%, the sign changing between
iterations; a budget between them (8e-8) made the rule pick 3, 1, 3, 3, 1, 3.

Limits, stated: gradient clipping (``max_grad_norm``) is not replayed (it changes the new gradient's weight
against the moments' history); the optimizer must be a torch Adam/AdamW over the policy's own parameters,
not maximising (:func:`check_adam` refuses others in one line). With several ranks the half-sample
gradients and the KLs are averaged over ranks, so every rank predicts the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from slas.errors import SlasError
from slas.rl import distributed


class AutoPowerError(SlasError, ValueError):
    """``rl.power: auto`` cannot model this run's optimizer step as asked."""


def adam_step(grad: Tensor, params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
              updates: int = 1) -> Tensor:
    """The flat weight change [P] that ``updates`` steps of ``optimizer`` (torch Adam or AdamW) would make,
    each fed the loss gradient ``grad`` [P] (flat, in the order of ``params``), from its state now.

    Torch's own update, replayed on copies: the moments exp_avg / exp_avg_sq (zero before the first step),
    the step count and bias corrections, eps, AMSGrad's running maximum, and weight decay (decoupled for
    AdamW, added to the gradient for Adam), with each parameter's group hyperparameters. Nothing of the
    optimizer or the weights changes. The change is accumulated directly (not as new minus old weights),
    so it keeps its precision when it is far smaller than the weights.
    """
    check_adam(optimizer, params)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out, offset = [], 0
    for p in params:
        group, state = group_of[id(p)], optimizer.state.get(p, {})
        g = grad[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        lr, (b1, b2), eps, wd = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
        decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
        step = float(state["step"]) if "step" in state else 0.0
        m = state["exp_avg"].detach().clone() if "exp_avg" in state else torch.zeros_like(p)
        v = state["exp_avg_sq"].detach().clone() if "exp_avg_sq" in state else torch.zeros_like(p)
        amsgrad = group["amsgrad"]
        v_max = state.get("max_exp_avg_sq", torch.zeros_like(p)).detach().clone() if amsgrad else v
        theta0 = p.detach()
        delta = torch.zeros_like(p)
        for _ in range(updates):
            step += 1
            gt = g
            if wd and decoupled:
                delta -= lr * wd * (theta0 + delta)
            elif wd:
                gt = g + wd * (theta0 + delta)
            m.lerp_(gt, 1 - b1)
            v.mul_(b2).addcmul_(gt, gt, value=1 - b2)
            if amsgrad:
                v_max = torch.maximum(v_max, v)
            denom = ((v_max if amsgrad else v).sqrt() / math.sqrt(1 - b2**step)).add_(eps)
            delta.addcdiv_(m, denom, value=-lr / (1 - b1**step))
        out.append(delta.reshape(-1).float())
    return torch.cat(out)


def check_adam(optimizer: object, params: Sequence[torch.nn.Parameter]) -> None:
    """Refuse, in one line, an optimizer whose step :func:`adam_step` cannot replay: not a torch Adam/AdamW
    over exactly these parameters (e.g. DeepSpeed's or FSDP's wrappers), or one that maximises."""
    fix = "set rl.auto_power.step_model=sgd"
    if not isinstance(optimizer, torch.optim.Adam):
        raise AutoPowerError(f"rl.auto_power.step_model=adam needs a torch Adam/AdamW optimizer, got "
                             f"{type(optimizer).__name__}; {fix}")
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if any(id(p) not in held for p in params):
        raise AutoPowerError("rl.auto_power.step_model=adam: the optimizer does not hold the policy's trainable "
                             f"parameters themselves (a sharded or wrapped optimizer); {fix}")
    if any(g.get("maximize") for g in optimizer.param_groups):
        raise AutoPowerError(f"rl.auto_power.step_model=adam: a maximizing optimizer is not modelled; {fix}")


def step_kl(jacobian: Tensor, delta: Tensor) -> float:
    """1/2 delta^T F delta for the empirical Fisher F = J^T J / m of the rows of ``jacobian`` [m, P]:
    1/(2m) ||J delta||^2, the approx KL that the weight change ``delta`` [P] makes on those pairs to second
    order (never forming the P x P matrix)."""
    return 0.5 * float((jacobian @ delta.to(jacobian.dtype)).double().square().mean())


def cross_fitted_adam_kl(jacobian: Tensor, weights: Tensor, params: Sequence[torch.nn.Parameter],
                         optimizer: torch.optim.Optimizer, updates: int = 1) -> tuple[float, float]:
    """(predicted approx KL, mean ||weight change||) of the iteration's Adam steps for per-pair gradients
    ``jacobian`` [m, P] (m >= 2) weighted by the advantages ``weights`` [m].

    Cross-fitted: the pairs split in two halves; each half's gradient g_h = J_h^T a_h / m_h (averaged over
    ranks, as the trainer's is) drives :func:`adam_step` (fed -g_h: the loss is -A * ratio), and the change
    it predicts is measured by :func:`step_kl` on the *other* half's pairs; the two are averaged (and the
    result over ranks, so every rank gets the same). Measured on the pairs that formed it, the change would
    look tens of times too large (see the module docstring).
    """
    h = jacobian.shape[0] // 2
    if h < 1:
        raise ValueError("cross-fitting needs at least 2 pairs")
    a = weights.to(device=jacobian.device, dtype=jacobian.dtype)
    kl, norm = {}, 0.0
    for k, (own, other) in enumerate([(slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))]):
        g = jacobian[own].T @ a[own] / jacobian[own].shape[0]
        g = distributed.all_gather_cat(g[None]).mean(0)
        delta = adam_step(-g, params, optimizer, updates)
        kl[f"kl{k}"] = step_kl(jacobian[other], delta)
        norm += float(delta.norm()) / 2
    kl = distributed.mean_over_ranks(kl)
    return (kl["kl0"] + kl["kl1"]) / 2, norm
