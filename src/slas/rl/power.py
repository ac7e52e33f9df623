"""``rl.power: auto``: the SLAS exponent p chosen each iteration inside a trust-region bound.

What the paper says and what is ours
------------------------------------
The SLAS paper (Sun et al., "Power Reinforcement Post-Training of Text-to-Image Models with
Super-Linear Advantage Shaping", arXiv 2605.10937) bounds the exponent for stability in its Appendix E
through two quantities: the norm of the policy gradient and the largest eigenvalue of the Fisher
matrix, the latter estimated by power iteration on Fisher-vector products (10-20 steps, run
periodically). That much is the paper's (as issue 11 summarises it; the appendix text itself was not
available here). The exact inequality, the budget, the step size, the estimators and the rule below are
this module's own, derived as follows.

The bound (derivation)
----------------------
Let the iteration train n = N * k pairs u = (sample i, denoising step t) and let
j_u = grad_theta log pi(x_{t+1} | x_t) at the rollout's weights theta_0.

1. At the first update the PPO ratio is 1 and the clip is inactive, so the trainer's loss gradient is
   -g with g(A) = (1/n) sum_u A_{i(u)} j_u: *linear in the advantages*. With p the exponent,
   A = A(p) = compute_advantages(..., power=p) and g(p) = g(A(p)).
2. The iteration's U optimizer steps (``ceil(N / (batch_size * accumulation))``) move the weights by
   Delta(p). ``step_model: sgd`` (the paper's analysis): a plain gradient step of size eta, to first
   order Delta = eta * U * g(p). ``step_model: adam`` (the default with the trainer's AdamW): the
   optimizer's own steps, below.
3. The trainer's own ``approx_kl``, 1/2 mean_u (log pi_theta - log pi_theta_0)^2, is 0 with gradient 0 at
   theta_0 and has Hessian F = (1/n) sum_u j_u j_u^T there: the empirical Fisher of the trained pairs
   (on-policy, so it is also an unbiased estimate of the transitions' true Fisher). Hence

       approx_kl(theta_0 + Delta) ~= 1/2 Delta^T F Delta  (sgd: <= 1/2 (eta U)^2 lambda_max(F) ||g(p)||^2).

4. sgd: keeping this under a budget delta bounds the gradient norm,

       ||g(p)|| <= G_max = sqrt(2 delta / lambda_max) / (eta U)   (default eta: the run's learning rate).

   The default budget is delta = clip_range^2 / 2: the PPO clip keeps |rho - 1| <= eps, i.e.
   |Delta log pi| <~ eps; approx_kl = eps^2 / 2 is where the RMS of Delta log pi reaches eps, the edge of
   the clip's trust region (a loose edge: measured on the shapes world, 2-4% of fresh transitions already
   passed eps at ~1/10 of it, the tails being heavier than Gaussian).

The rule: over a grid of candidates in [p_min, p_max], take the largest p whose predicted KL is within
delta (sgd: ||g(p)|| <= G_max); when none is, take the one with the smallest predicted KL (the least
violation).

The Adam step model
-------------------
AdamW's step per coordinate is ~eta * m_hat / (sqrt(v_hat) + eps), nearly independent of ||g|| and far
larger than eta * g, so ``step_model: adam`` replays the optimizer's own U steps from its state on the
estimate g_hat(p) and predicts 1/2 Delta^T F_S Delta, cross-fitted (step from one half of the pairs,
Fisher of the other). The replay, its derivation, its measurements and its limits are in
:mod:`slas.rl.adam_replay`.

How the two quantities are estimated (and why this way)
-------------------------------------------------------
Both come from one set of per-pair gradients: m pairs (``pairs``, per rank) drawn the way
``GRPOObjective`` draws its trained steps, each differentiated by its own first-order backward pass
(``torch.autograd.grad``; nothing touches ``.grad``), stacked into J_S [m, P], and reduced at once to
their Gram matrix H = J_S J_S^T [m, m]. First-order only on purpose: the double-backward (Pearlmutter)
Fisher-vector product needs second derivatives of every op, and the shapes model's CPU attention kernel
has none (``_scaled_dot_product_flash_attention_for_cpu_backward``, measured). The price is memory: m x P
float32 while the Gram matrix is formed, and with the adam model while the candidates are replayed
(shapes world, 32 pairs x 2.3 M parameters: 0.3 GB, ~3.5 s of a ~12 s iteration); a full fine-tune of a
large model needs few pairs or LoRA.

- lambda_max: power iteration (Rayleigh quotient, ``iters`` steps at most, stopping at relative change
  ``tol``) on the Fisher-vector product of the pairs' empirical Fisher F_S = J_S^T J_S / m, in its dual
  form: for v = J_S^T u, F_S v = J_S^T (H u) / m, so v <- F_S v is u <- H u / m, same nonzero spectrum,
  O(m^2) per step. E[F_S] = F, but lambda_max(F_S) is biased upwards for small m (lambda_max is convex),
  which only makes the bound stricter; the Rayleigh quotient approaches lambda_max from below.
- ||g(p)||^2: unbiased for the whole iteration's n pairs from the m sampled ones. With a_u = A_{i(u)}(p):
  ||g||^2 = d/n + (n - 1)/n * o, d the mean of a_u^2 H_uu and o the mean of a_u a_v H_uv over u != v (a
  simple random sample estimates both means without bias), floored at 0. Every candidate p costs O(m^2)
  once H is known (adam: two O(m P) replays), so the grid needs no further backward pass. It is noisy: on the shapes world the
  estimate's standard deviation was ~0.4-0.8 of its mean with 32 pairs and ~1.2 with 16 (hence the
  default 32); the noise is shared by all candidates of one iteration (same pairs), so it moves the level
  of the predicted KL more than the order of the candidates.

Why not from the advantage vector's norm alone (||g|| <= sqrt(lambda_max * mean A^2), no gradients per
iteration): with batch-std normalisation mean A(p)^2 = (N-1)/N + mean(s)^2/std(s)^2 is ~1 for every p, so
that bound cannot see p at all. The exponent changes *which* samples carry the weight, and only the
gradients see what that does to g. Measured on the shapes world (the demo's batch of 64 at its initial
weights, 8 batches, 96 pairs each): with SLAS's default shape-first order ||g(p)|| / ||g(1)|| is 0.98,
0.97, 0.94, 0.91 at p = 1.5, 2, 2.5, 3 (sd up to 0.10): it *falls* slightly, so the largest admissible p
is p_max whenever any p is admissible. Norm-first (``shape_before_norm=False``, mean |z|^{2p} grows with
p) gives 1.27, 1.51, 1.67, 1.78: there the bound binds on p, as it does for ``std_scope: none`` with
|delta| > 1.

Limits, stated: gradient clipping (``max_grad_norm``) is not replayed (under Adam it changes the new
gradient's weight against the moments' history; sgd: it only shortens steps); updates after the first
see rho != 1 (second order); a ``kl_coef`` term is left out. The logged ``approx_kl`` is the mean of the
KL *before* each of the iteration's updates: 0 with one update, a fraction (~0.22 for linear growth, 0.09-
0.5 measured at U = 4) of the end-of-iteration KL predicted here. The adam model needs a torch Adam/AdamW
over the policy's own parameters. With several ranks each rank samples its own pairs; their lambda_max
(an upper bound of the pooled Fisher's, by convexity), gradient-norm sums, the adam model's half-sample
gradients and KLs are averaged over ranks, so every rank picks the same p.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slas.config import AutoPowerSettings, TrainerConfig
from slas.rl import distributed
from slas.rl.adam_replay import AutoPowerError, check_adam, cross_fitted_adam_kl
from slas.rl.objectives import trained_steps
from slas.rl.protocols import Policy
from slas.rl.trajectory import Trajectory


# ---------------------------------------------------------------------------------------------- math
@dataclass(frozen=True)
class PowerIteration:
    """The top eigenvalue estimate (Rayleigh quotient), its unit vector, the steps taken and whether the
    relative change fell under the tolerance before the step limit."""

    value: float
    vector: Tensor
    iterations: int
    converged: bool


def power_iteration(matvec: Callable[[Tensor], Tensor], v0: Tensor, *, iters: int = 20, tol: float = 1e-3) -> PowerIteration:
    """Largest eigenvalue of a symmetric positive semi-definite operator given only ``matvec``.

    Each step v <- Av / ||Av||; the estimate is the Rayleigh quotient v^T A v, which for a PSD operator
    rises towards lambda_max (error ~ (lambda_2 / lambda_1)^(2k) after k steps). Stops after ``iters``
    steps or when the estimate changes by at most ``tol`` relative to itself. A zero operator gives 0.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    norm = v0.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("power iteration needs a finite, non-zero start vector")
    v = v0 / norm
    av = matvec(v)
    value = float(v @ av)
    for step in range(1, iters + 1):
        n = av.norm()
        if n == 0:
            return PowerIteration(0.0, v, step, True)
        v = av / n
        av = matvec(v)
        new = float(v @ av)
        if abs(new - value) <= tol * abs(new):
            return PowerIteration(new, v, step, True)
        value = new
    return PowerIteration(value, v, iters, False)


def fisher_vector_product(jacobian: Tensor, v: Tensor) -> Tensor:
    """F v for the empirical Fisher F = (1/m) sum_u j_u j_u^T of the rows j_u of ``jacobian`` [m, P]:
    (1/m) J^T (J v), never forming the P x P matrix (the primal form of :func:`fisher_top_eigenvalue`'s
    iteration, for callers that hold J)."""
    return jacobian.T @ (jacobian @ v) / jacobian.shape[0]


def fisher_top_eigenvalue(gram: Tensor, *, iters: int, tol: float, generator: torch.Generator) -> PowerIteration:
    """lambda_max of the empirical Fisher F = J^T J / m of m per-pair gradients, from their Gram matrix
    ``gram`` = J J^T [m, m].

    Power iteration on the Fisher-vector product, in its dual form: F lives in the row space of J, and for
    v = J^T u, F v = J^T (J J^T u) / m, so iterating v <- F v is iterating u <- (gram / m) u (same nonzero
    eigenvalues, O(m^2) per step instead of O(m P)). The start vector is drawn from ``generator``.
    """
    m = gram.shape[0]
    v0 = torch.randn(m, generator=generator, dtype=torch.float64).to(device=gram.device, dtype=gram.dtype)
    return power_iteration(lambda u: gram @ u / m, v0, iters=iters, tol=tol)


def norm_sums(gram: Tensor, weights: Tensor) -> tuple[float, float]:
    """(sum_u a_u^2 H_uu, sum_{u != v} a_u a_v H_uv) for the Gram matrix ``gram`` [m, m] and ``weights`` a [m]."""
    a = weights.to(device=gram.device, dtype=gram.dtype)
    terms = a[:, None] * gram * a[None, :]
    diag = terms.diagonal().sum()
    return float(diag), float(terms.sum() - diag)


def unbiased_norm_sq(diag_sum: float, off_sum: float, sample: int, population: int) -> float:
    """Unbiased ||(1/n) sum_u a_u j_u||^2 over a population of n pairs from the :func:`norm_sums` of a
    simple random sample of m of them.

    ||sum_u a_u j_u||^2 = D + O (diagonal and off-diagonal terms over the population); the sample means
    d = diag_sum / m and o = off_sum / (m (m - 1)) estimate D / n and O / (n (n - 1)) without bias, so
    the result is d / n + (n - 1) / n * o, floored at 0 (it is a squared norm). With m = n it is exact.
    """
    if not 1 <= sample <= population:
        raise ValueError(f"need 1 <= sample ({sample}) <= population ({population})")
    d = diag_sum / sample
    o = off_sum / (sample * (sample - 1)) if sample > 1 else 0.0
    return max(0.0, d / population + (population - 1) / population * o)


def gradient_norm_sq(gram: Tensor, weights: Tensor, population: int) -> float:
    """:func:`unbiased_norm_sq` of the sample with Gram matrix ``gram`` [m, m] = (j_u . j_v) and weights a [m]."""
    return unbiased_norm_sq(*norm_sums(gram, weights), gram.shape[0], population)


def predicted_kl(step: float, lambda_max: float, grad_norm: float) -> float:
    """The bound 1/2 step^2 lambda_max ||g||^2 on the approx KL of the step ``step * g``."""
    return 0.5 * step**2 * lambda_max * grad_norm**2


def grad_norm_bound(step: float, lambda_max: float, budget: float) -> float:
    """The largest ||g|| whose :func:`predicted_kl` stays within ``budget`` (inf when lambda_max is 0)."""
    if lambda_max <= 0:
        return math.inf
    return math.sqrt(2 * budget / lambda_max) / step


def choose_power(candidates: Sequence[float], kl: Sequence[float], budget: float) -> tuple[int, int | None]:
    """(index of the chosen candidate, index of the largest admissible one or None).

    Admissible: predicted KL within ``budget``. The choice is the largest admissible candidate, or, when
    none is, the one with the smallest predicted KL (the largest of those on a tie).
    """
    if len(candidates) != len(kl) or not candidates:
        raise ValueError("candidates and kl must be non-empty and of the same length")
    admissible = [i for i, k in enumerate(kl) if k <= budget]
    if admissible:
        best = max(admissible, key=lambda i: candidates[i])
        return best, best
    least = min(kl)
    return max((i for i, k in enumerate(kl) if k == least), key=lambda i: candidates[i]), None


def power_grid(p_min: float, p_max: float, n: int) -> list[float]:
    """``n`` evenly spaced candidates from p_min to p_max (one, when they are equal)."""
    if p_max == p_min:
        return [float(p_min)]
    return [float(x) for x in torch.linspace(p_min, p_max, n, dtype=torch.float64)]


# ------------------------------------------------------------------------------------- autograd part
def flat_gradient(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """One float32 vector of ``grads`` (a parameter without a gradient counts as zeros)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params, strict=True)])


def per_pair_gradients(log_prob: Callable[[int, int], Tensor], pairs: Sequence[tuple[int, int]],
                       params: Sequence[torch.nn.Parameter]) -> Tensor:
    """[m, P] gradients of ``log_prob(sample, step)`` (a scalar with grad) w.r.t. ``params``, one row per pair.

    One forward and one first-order backward per pair, through ``torch.autograd.grad``, so the parameters'
    ``.grad`` (the trainer's accumulator) is never touched.
    """
    params = list(params)
    rows = []
    for sample, step in pairs:
        grads = torch.autograd.grad(log_prob(sample, step), params, allow_unused=True)
        rows.append(flat_gradient(grads, params))
    return torch.stack(rows)


def draw_pairs(num_samples: int, num_steps: int, fraction: float, selection: str, count: int,
               generator: torch.Generator) -> tuple[list[tuple[int, int]], int]:
    """(pairs, population): up to ``count`` distinct (sample, step) pairs drawn uniformly from the
    ``population`` = num_samples * k steps that ``GRPOObjective`` would train
    (:func:`slas.rl.objectives.trained_steps`, same fraction and selection rule)."""
    steps = trained_steps(num_steps, fraction, num_samples, selection, generator)
    k = steps.shape[1]
    flat = torch.randperm(steps.numel(), generator=generator)[:count].tolist()
    return [(f // k, int(steps[f // k, f % k])) for f in flat], steps.numel()


# ------------------------------------------------------------------------------------ the trainer's hook
class AutoPower:
    """Chooses p each iteration for ``rl.power: auto`` (see the module docstring for the bound and rule).

    The trainer calls :meth:`attach` with its optimizer once (which settles the step model and refuses one
    the ``adam`` model cannot replay, before any training), then :meth:`choose` after the rewards and before
    the advantages; it returns the power to use and the ``rl/*`` metrics. lambda_max is re-estimated every
    ``settings.every`` iterations (and whenever none is known) and held in between; :meth:`state_dict`
    carries it through checkpoints so that a resumed run picks the same p as one left alone.
    """

    def __init__(self, settings: AutoPowerSettings, *, step: float, kl_budget: float, timestep_fraction: float,
                 timestep_selection: str, updates: int = 1) -> None:
        if step <= 0 or kl_budget <= 0 or updates < 1:
            raise ValueError(f"step ({step}) and kl_budget ({kl_budget}) must be > 0, updates ({updates}) >= 1")
        self.settings = settings
        self.step = step
        self.updates = updates
        self.kl_budget = kl_budget
        self.timestep_fraction = timestep_fraction
        self.timestep_selection = timestep_selection
        self.candidates = power_grid(settings.p_min, settings.p_max, settings.candidates)
        self.lambda_max: float | None = None
        self.estimated_at: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_model = "sgd" if settings.step_model == "sgd" else None  # adam: settled by attach()

    @classmethod
    def from_config(cls, config: TrainerConfig) -> AutoPower:
        """Updates = the optimizer steps of one iteration; sgd step = ``auto_power.step_size`` (default: the run's
        learning rate) times them; budget = ``auto_power.kl_budget`` (default: clip_range^2 / 2)."""
        s, t = config.rl.auto_power, config.train
        local = config.sample.prompts_per_iter * config.sample.group_size
        updates = math.ceil(math.ceil(local / t.batch_size) / t.gradient_accumulation_steps)
        eta = s.step_size if s.step_size is not None else config.lr
        budget = s.kl_budget if s.kl_budget is not None else 0.5 * t.clip_range**2
        return cls(s, step=eta * updates, kl_budget=budget, timestep_fraction=t.timestep_fraction,
                   timestep_selection=t.timestep_selection, updates=updates)

    def attach(self, optimizer: object, params: Sequence[torch.nn.Parameter]) -> None:
        """Settle the step model for the trainer's ``optimizer`` over ``params``: ``adam`` replays its steps
        (refused in one line, :class:`AutoPowerError`, when it cannot); unset, ``adam`` when it can, else ``sgd``."""
        if self.settings.step_model == "sgd":
            return
        try:
            check_adam(optimizer, params)
        except AutoPowerError:
            if self.settings.step_model == "adam":
                raise
            self.step_model = "sgd"
            return
        self.optimizer = optimizer  # type: ignore[assignment]
        self.step_model = "adam"

    def _due(self, iteration: int) -> bool:
        return self.lambda_max is None or iteration % self.settings.every == 0

    def choose(self, policy: Policy, trajectory: Trajectory, advantages: Callable[[float], Tensor], offset: int,
               *, iteration: int, seed: int) -> tuple[float, dict[str, float]]:
        """The power for this iteration and its metrics.

        ``advantages(p)`` gives the global batch's advantages [N_global] at power p; this rank's samples are
        ``offset .. offset + trajectory.num_samples``. ``seed`` seeds the pair draw and the power
        iteration's start vector (no global RNG is used, so the run's other draws are unchanged).
        """
        if self.step_model is None:
            raise AutoPowerError("rl.power=auto: the optimizer was never attached (AutoPower.attach settles the "
                                 "adam step model; only step_model=sgd needs none)")
        gen = torch.Generator().manual_seed(seed)
        pairs, population = draw_pairs(trajectory.num_samples, policy.num_steps, self.timestep_fraction,
                                       self.timestep_selection, self.settings.pairs, gen)
        device = trajectory.log_probs.device

        def log_prob(sample: int, step: int) -> Tensor:
            return policy.step_log_prob(trajectory, torch.tensor([sample], device=device),
                                        torch.tensor([step], device=device)).sum()

        params = policy.trainable_parameters()
        jac = per_pair_gradients(log_prob, pairs, params)
        gram = (jac @ jac.T).double()  # [m, m]: all the sgd model needs
        out: dict[str, float] = {}
        if self._due(iteration):
            found = fisher_top_eigenvalue(gram, iters=self.settings.iters, tol=self.settings.tol, generator=gen)
            self.lambda_max = distributed.mean_over_ranks({"lambda": found.value})["lambda"]
            self.estimated_at = iteration
            out["rl/fisher_iterations"] = float(found.iterations)
        rows = torch.tensor([s for s, _ in pairs], dtype=torch.long) + offset
        weights = [advantages(p).detach().double().cpu()[rows] for p in self.candidates]
        sums: dict[str, float] = {}
        for c, a in enumerate(weights):
            sums[f"d{c}"], sums[f"o{c}"] = norm_sums(gram, a)
        sums = distributed.mean_over_ranks(sums)  # every rank: the same sums, so the same choice
        _, world = distributed.rank_and_world()
        norms = [math.sqrt(unbiased_norm_sq(sums[f"d{c}"], sums[f"o{c}"], len(pairs), population * world))
                 for c in range(len(self.candidates))]
        if self.step_model == "adam":
            found_kls = [cross_fitted_adam_kl(jac, a, params, self.optimizer, self.updates) for a in weights]
            kls, step_norms = [k for k, _ in found_kls], [n for _, n in found_kls]
        else:
            kls = [predicted_kl(self.step, self.lambda_max, g) for g in norms]
        del jac  # m x P floats, the estimate's whole memory cost
        chosen, admissible = choose_power(self.candidates, kls, self.kl_budget)
        out.update({
            "rl/power": self.candidates[chosen],
            "rl/power_bound": self.candidates[admissible] if admissible is not None else math.nan,
            "rl/fisher_lambda_max": self.lambda_max,
            "rl/grad_norm": norms[chosen],
            "rl/kl_predicted": kls[chosen],
            "rl/kl_predicted_p_min": kls[0],
            "rl/kl_predicted_p_max": kls[-1],
            "rl/step_model_adam": float(self.step_model == "adam"),
        })
        if self.step_model == "adam":
            out["rl/step_norm"] = step_norms[chosen]
        else:
            out["rl/grad_norm_bound"] = grad_norm_bound(self.step, self.lambda_max, self.kl_budget)
        return self.candidates[chosen], out

    def state_dict(self) -> dict[str, Any]:
        return {"lambda_max": self.lambda_max, "estimated_at": self.estimated_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambda_max = None if state.get("lambda_max") is None else float(state["lambda_max"])
        self.estimated_at = None if state.get("estimated_at") is None else int(state["estimated_at"])
