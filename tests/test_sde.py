"""Sampler math: DDIM(eta) and flow-matching SDE steps with Gaussian log-probs, checked against diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from slas.t2i.sde import (
    ddim_step_mean_std,
    ddim_step_with_logprob,
    flow_sde_mean_std,
    flow_sde_step_with_logprob,
    gaussian_log_prob,
)

B, SHAPE = 3, (4, 8, 8)


def _sd14_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(10)
    return sched


@pytest.fixture(scope="module")
def sched() -> DDIMScheduler:
    return _sd14_scheduler()


def _tensors(seed: int = 0, b: int = B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *SHAPE, generator=g), torch.randn(b, *SHAPE, generator=g)


def _normal_log_prob(x, mean, std):
    """Reference density: torch.distributions.Normal, averaged over the non-batch dimensions."""
    lp = torch.distributions.Normal(mean, torch.as_tensor(std).expand_as(mean)).log_prob(x)
    return lp.mean(dim=tuple(range(1, lp.ndim)))


# --------------------------------------------------------------------------- DDIM


def test_sd14_schedule_timesteps(sched):
    # steps_offset 1, 10 steps: 901, 801, ..., 1 (the last step goes to alphas_cumprod[0])
    assert sched.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]


@pytest.mark.parametrize("t", [901, 501, 101, 1])
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_ddim_recomputed_logprob_matches_sampling(sched, t, eta):
    sample, eps = _tensors(t)
    gen = torch.Generator().manual_seed(1)
    prev, lp = ddim_step_with_logprob(sched, eps, t, sample, eta=eta, generator=gen)
    assert prev.shape == sample.shape and prev.dtype == torch.float32
    assert lp.shape == (B,) and lp.dtype == torch.float32
    assert torch.isfinite(lp).all()
    prev2, lp2 = ddim_step_with_logprob(sched, eps, t, sample, eta=eta, prev_sample=prev)
    assert prev2 is prev or torch.equal(prev2, prev)
    assert torch.allclose(lp2, lp, atol=1e-5, rtol=0)
    # a different model output scores the same latent lower (it is off the mean)
    _, lp_other = ddim_step_with_logprob(sched, eps + 0.5, t, sample, eta=eta, prev_sample=prev)
    assert (lp_other < lp).all()


@pytest.mark.parametrize("t", [901, 701, 301, 101, 1])
def test_ddim_small_eta_tends_to_deterministic_ddim(sched, t):
    sample, eps = _tensors(t + 1)
    prev, _ = ddim_step_with_logprob(
        sched, eps, t, sample, eta=1e-6, generator=torch.Generator().manual_seed(0)
    )
    ref = sched.step(eps, t, sample, eta=0.0).prev_sample
    assert torch.allclose(prev, ref, atol=1e-4, rtol=0)
    # while eta = 1 is visibly stochastic
    prev1, _ = ddim_step_with_logprob(
        sched, eps, t, sample, eta=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert (prev1 - ref).abs().max() > 1e-2


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_mean_equals_diffusers_step_with_zero_noise(prediction_type, eta):
    sched = _sd14_scheduler(prediction_type)
    for i, t in enumerate(sched.timesteps.tolist()):
        sample, out = _tensors(100 + i)
        mean, std = ddim_step_mean_std(sched, out, t, sample, eta=eta)
        ref = sched.step(out, t, sample, eta=eta, variance_noise=torch.zeros_like(sample)).prev_sample
        assert torch.allclose(mean, ref, atol=1e-5, rtol=1e-5), (prediction_type, t)
        # std^2 = eta^2 * sigma_t^2 of DDIM (diffusers' _get_variance)
        prev_t = t - 1000 // 10
        var = sched._get_variance(torch.tensor(t), torch.tensor(prev_t))
        assert torch.allclose(torch.as_tensor(std).reshape(()), eta * var.sqrt(), rtol=1e-5)


def test_ddim_v_prediction_small_eta_and_logprob():
    sched = _sd14_scheduler("v_prediction")
    for t in (901, 401, 1):
        sample, v = _tensors(t + 7)
        prev, lp = ddim_step_with_logprob(
            sched, v, t, sample, eta=1e-6, generator=torch.Generator().manual_seed(0)
        )
        ref = sched.step(v, t, sample, eta=0.0).prev_sample
        assert torch.allclose(prev, ref, atol=1e-4, rtol=0)
        prev, lp = ddim_step_with_logprob(
            sched, v, t, sample, eta=1.0, generator=torch.Generator().manual_seed(0)
        )
        _, lp2 = ddim_step_with_logprob(sched, v, t, sample, eta=1.0, prev_sample=prev)
        assert torch.allclose(lp, lp2, atol=1e-5, rtol=0)
        # epsilon-reading of the same output gives a different mean: prediction_type is honoured
        mean_v, _ = ddim_step_mean_std(sched, v, t, sample)
        mean_e, _ = ddim_step_mean_std(_sd14_scheduler(), v, t, sample)
        assert not torch.allclose(mean_v, mean_e, atol=1e-3)


def test_ddim_per_sample_timesteps_match_scalar_calls(sched):
    ts = torch.tensor([901, 501, 101, 1])
    sample, eps = _tensors(5, b=4)
    prev, lp = ddim_step_with_logprob(sched, eps, ts, sample, generator=torch.Generator().manual_seed(0))
    mean, std = ddim_step_mean_std(sched, eps, ts, sample)
    assert std.shape == (4, 1, 1, 1)
    for i, t in enumerate(ts.tolist()):
        m_i, s_i = ddim_step_mean_std(sched, eps[i : i + 1], t, sample[i : i + 1])
        assert torch.allclose(mean[i : i + 1], m_i, atol=1e-6)
        assert torch.allclose(std[i].reshape(()), torch.as_tensor(s_i).reshape(()), rtol=1e-6)
        _, lp_i = ddim_step_with_logprob(
            sched, eps[i : i + 1], t, sample[i : i + 1], prev_sample=prev[i : i + 1]
        )
        assert torch.allclose(lp[i : i + 1], lp_i, atol=1e-5)
    # the per-sample stds really differ (early steps are noisier than the last)
    assert std[0].item() > std[3].item()


def test_ddim_density_matches_torch_normal(sched):
    sample, eps = _tensors(11)
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(12))
    for t in (901, 301, 1):
        mean, std = ddim_step_mean_std(sched, eps, t, sample, eta=0.8)
        _, lp = ddim_step_with_logprob(sched, eps, t, sample, eta=0.8, prev_sample=mean + 0.1 * x)
        ref = _normal_log_prob(mean + 0.1 * x, mean, std)
        assert torch.allclose(lp, ref, atol=1e-5, rtol=1e-5)


def test_ddim_needs_set_timesteps_and_positive_eta():
    sample, eps = _tensors(0)
    fresh = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    with pytest.raises(ValueError):
        ddim_step_mean_std(fresh, eps, 901, sample)
    sched = _sd14_scheduler()
    for eta in (0.0, -1.0):
        with pytest.raises(ValueError):
            ddim_step_with_logprob(sched, eps, 901, sample, eta=eta)


def test_ddim_empirical_mean_and_std(sched):
    # one latent repeated N times: every row has the same mean and std, so batch statistics estimate them
    n = 4000
    sample, eps = _tensors(21, b=1)
    t = 501
    mean, std = ddim_step_mean_std(sched, eps, t, sample, eta=1.0)
    prev, _ = ddim_step_with_logprob(
        sched, eps.expand(n, *SHAPE), t, sample.expand(n, *SHAPE), generator=torch.Generator().manual_seed(3)
    )
    s = float(std)
    assert (prev.mean(0) - mean[0]).abs().max() < 5 * s / math.sqrt(n)
    emp_std = prev.std(0)
    assert (emp_std / s - 1).abs().max() < 0.1
    assert abs(emp_std.mean().item() / s - 1) < 0.01


# --------------------------------------------------------------------------- flow matching


@pytest.mark.parametrize("kind", ["dance", "flow"])
@pytest.mark.parametrize(("sigma", "sigma_next"), [(1.0, 0.9), (0.7, 0.6), (0.1, 0.0)])
def test_flow_recomputed_logprob_matches_sampling(kind, sigma, sigma_next):
    sample, v = _tensors(31)
    prev, lp = flow_sde_step_with_logprob(
        v, sigma, sigma_next, sample, eta=0.7, kind=kind, generator=torch.Generator().manual_seed(0)
    )
    assert prev.shape == sample.shape and lp.shape == (B,) and lp.dtype == torch.float32
    assert torch.isfinite(lp).all()
    _, lp2 = flow_sde_step_with_logprob(v, sigma, sigma_next, sample, eta=0.7, kind=kind, prev_sample=prev)
    assert torch.allclose(lp, lp2, atol=1e-5, rtol=0)
    _, lp_other = flow_sde_step_with_logprob(
        v + 0.5, sigma, sigma_next, sample, eta=0.7, kind=kind, prev_sample=prev
    )
    assert (lp_other < lp).all()


@pytest.mark.parametrize("kind", ["dance", "flow"])
def test_flow_small_eta_tends_to_euler_and_matches_diffusers(kind):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(8)
    sigmas = sched.sigmas.tolist()
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0.0
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(41))
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(50 + i))
        euler = x + (sigmas[i + 1] - sigmas[i]) * v
        ref = sched.step(v, t, x).prev_sample
        assert torch.allclose(ref, euler, atol=1e-5)
        mean, _ = flow_sde_mean_std(v, sigmas[i], sigmas[i + 1], x, eta=1e-6, kind=kind)
        assert torch.allclose(mean, ref, atol=1e-5), (kind, i)
        prev, _ = flow_sde_step_with_logprob(
            v, sigmas[i], sigmas[i + 1], x, eta=1e-6, kind=kind, generator=torch.Generator().manual_seed(i)
        )
        assert torch.allclose(prev, ref, atol=1e-4), (kind, i)
        x = ref


def test_flow_dance_mean_hand_computed():
    # x = 1, v = 2, sigma = 0.5, sigma_next = 0.25, eta = 1:
    #   x0 = x - s v = 0; score = -(x - (1-s) x0)/s^2 = -4; dsigma = -0.25
    #   mean = x + dsigma v - 0.5 eta^2 score dsigma = 1 - 0.5 - 0.5 = 0.0; std = sqrt(0.25) = 0.5
    mean, std = flow_sde_mean_std(torch.full((1, 2), 2.0), 0.5, 0.25, torch.ones(1, 2), eta=1.0, kind="dance")
    assert torch.allclose(mean, torch.zeros(1, 2), atol=1e-6)
    assert float(std) == pytest.approx(0.5)


def test_flow_flow_mean_hand_computed():
    # Flow-GRPO sde, x = 1, v = 2, s = 0.5, s_next = 0.25, eta = 1: std_t^2 = s/(1-s) = 1, dt = -0.25
    #   mean = x (1 + std_t^2/(2s) dt) + v (1 + std_t^2 (1-s)/(2s)) dt = 1*(1 - 0.25) + 2*(1.5)(-0.25) = 0.0
    #   std = std_t sqrt(0.25) = 0.5
    mean, std = flow_sde_mean_std(torch.full((1, 2), 2.0), 0.5, 0.25, torch.ones(1, 2), eta=1.0, kind="flow")
    assert torch.allclose(mean, torch.zeros(1, 2), atol=1e-6)
    assert float(std) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["dance", "flow"])
def test_flow_density_matches_torch_normal(kind):
    sample, v = _tensors(61)
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(62))
    for sigma, sigma_next in ((1.0, 0.95), (0.6, 0.4), (0.05, 0.0)):
        mean, std = flow_sde_mean_std(v, sigma, sigma_next, sample, eta=0.9, kind=kind)
        target = mean + 0.3 * x
        _, lp = flow_sde_step_with_logprob(
            v, sigma, sigma_next, sample, eta=0.9, kind=kind, prev_sample=target
        )
        assert torch.allclose(lp, _normal_log_prob(target, mean, std), atol=1e-5, rtol=1e-5)
        assert torch.allclose(gaussian_log_prob(target, mean, std), lp, atol=1e-6)


@pytest.mark.parametrize(("sigma", "sigma_next", "eta"), [(0.8, 0.6, 1.0), (0.5, 0.45, 0.3), (0.1, 0.0, 0.7)])
def test_flow_stds(sigma, sigma_next, eta):
    sample, v = _tensors(71)
    _, std_d = flow_sde_mean_std(v, sigma, sigma_next, sample, eta=eta, kind="dance")
    assert float(std_d) == pytest.approx(eta * math.sqrt(sigma - sigma_next), rel=1e-5)
    _, std_f = flow_sde_mean_std(v, sigma, sigma_next, sample, eta=eta, kind="flow")
    expected = eta * math.sqrt(sigma / (1 - sigma)) * math.sqrt(sigma - sigma_next)
    assert float(std_f) == pytest.approx(expected, rel=1e-5)


def test_flow_std_at_sigma_one_uses_sigma_next():
    # Flow-GRPO: std_t = eta sqrt(sigma / (1 - sigma_max)), sigma_max = sigmas[1], at sigma == 1.
    # sigma = 1, sigma_next = 0.9, eta = 0.7: std_t = 0.7 sqrt(1/0.1) = 2.2135944,
    # transition std = std_t sqrt(0.1) = 0.7 exactly
    sample, v = _tensors(81)
    mean, std = flow_sde_mean_std(v, 1.0, 0.9, sample, eta=0.7, kind="flow")
    assert float(std) == pytest.approx(0.7, rel=1e-5)
    assert torch.isfinite(mean).all()
    # mean with std_t^2 = 0.49/0.1 = 4.9, dt = -0.1, s = 1:
    #   x (1 + 4.9/2 * -0.1) + v (1 + 0) * -0.1 = 0.755 x - 0.1 v
    assert torch.allclose(mean, 0.755 * sample - 0.1 * v, atol=1e-5)
    # another sigma_next: 1 -> 0.75, eta 0.5: std = 0.5 (again eta, since sqrt(1/(1-sn)) sqrt(1-sn) = 1)
    _, std = flow_sde_mean_std(v, 1.0, 0.75, sample, eta=0.5, kind="flow")
    assert float(std) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("kind", ["dance", "flow"])
def test_flow_per_sample_sigmas_broadcast(kind):
    sig = torch.tensor([1.0, 0.6, 0.3, 0.05])
    sig_next = torch.tensor([0.9, 0.5, 0.2, 0.0])
    sample, v = _tensors(91, b=4)
    prev, lp = flow_sde_step_with_logprob(
        v, sig, sig_next, sample, eta=0.8, kind=kind, generator=torch.Generator().manual_seed(0)
    )
    mean, std = flow_sde_mean_std(v, sig, sig_next, sample, eta=0.8, kind=kind)
    assert std.shape == (4, 1, 1, 1)
    for i in range(4):
        s, sn = sig[i].item(), sig_next[i].item()
        m_i, s_i = flow_sde_mean_std(v[i : i + 1], s, sn, sample[i : i + 1], eta=0.8, kind=kind)
        assert torch.allclose(mean[i : i + 1], m_i, atol=1e-6)
        assert std[i].item() == pytest.approx(float(s_i), rel=1e-6)
        _, lp_i = flow_sde_step_with_logprob(
            v[i : i + 1], s, sn, sample[i : i + 1], eta=0.8, kind=kind, prev_sample=prev[i : i + 1]
        )
        assert torch.allclose(lp[i : i + 1], lp_i, atol=1e-5)


@pytest.mark.parametrize("kind", ["dance", "flow"])
def test_flow_seeded_generator_reproducible(kind):
    sample, v = _tensors(101)

    def draw(seed):
        return flow_sde_step_with_logprob(
            v, 0.7, 0.6, sample, eta=1.0, kind=kind, generator=torch.Generator().manual_seed(seed)
        )

    (a, lpa), (b, lpb), (c, _) = draw(5), draw(5), draw(6)
    assert torch.equal(a, b) and torch.equal(lpa, lpb)
    assert not torch.allclose(a, c)
    # DDIM too
    sched = _sd14_scheduler()
    d1, _ = ddim_step_with_logprob(sched, v, 501, sample, generator=torch.Generator().manual_seed(5))
    d2, _ = ddim_step_with_logprob(sched, v, 501, sample, generator=torch.Generator().manual_seed(5))
    assert torch.equal(d1, d2)


def test_flow_bad_args_raise():
    sample, v = _tensors(0)
    for eta in (0.0, -0.5):
        for kind in ("dance", "flow"):
            with pytest.raises(ValueError):
                flow_sde_step_with_logprob(v, 0.5, 0.4, sample, eta=eta, kind=kind)
    with pytest.raises(ValueError):
        flow_sde_step_with_logprob(v, 0.5, 0.4, sample, eta=1.0, kind="ode")


@pytest.mark.parametrize("kind", ["dance", "flow"])
def test_flow_empirical_mean_and_std(kind):
    n = 4000
    sample, v = _tensors(111, b=1)
    sigma, sigma_next, eta = 0.6, 0.45, 0.8
    mean, std = flow_sde_mean_std(v, sigma, sigma_next, sample, eta=eta, kind=kind)
    prev, _ = flow_sde_step_with_logprob(
        v.expand(n, *SHAPE),
        sigma,
        sigma_next,
        sample.expand(n, *SHAPE),
        eta=eta,
        kind=kind,
        generator=torch.Generator().manual_seed(7),
    )
    s = float(std)
    assert (prev.mean(0) - mean[0]).abs().max() < 5 * s / math.sqrt(n)
    emp_std = prev.std(0)
    assert (emp_std / s - 1).abs().max() < 0.1
    assert abs(emp_std.mean().item() / s - 1) < 0.01


def test_gaussian_log_prob_hand_computed():
    # x = mean: log N = -log(std) - 0.5 log(2 pi); std 2 -> -0.6931472 - 0.9189385 = -1.6120857
    x = torch.zeros(2, 3)
    assert torch.allclose(gaussian_log_prob(x, x, 2.0), torch.full((2,), -1.6120857), atol=1e-6)
    # one unit off with std 1: -0.5 - 0.9189385 = -1.4189385; averaged with two on-mean entries
    #   (-1.4189385 - 2*0.9189385)/3 = -1.0856052
    x = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.allclose(gaussian_log_prob(x, torch.zeros(1, 3), 1.0), torch.tensor([-1.0856052]), atol=1e-6)
    # per-sample std [B]
    lp = gaussian_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 2.0]))
    assert torch.allclose(lp, torch.tensor([-0.9189385, -1.6120857]), atol=1e-6)
