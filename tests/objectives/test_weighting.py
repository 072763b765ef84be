"""Loss weightings (hirune.objectives.weighting) and the score-model processes: Song et al.'s
likelihood weighting lambda = g^2 with importance-sampled times, the conversion of a
weighting between prediction targets, and NCSN's geometric noise levels."""

from __future__ import annotations

import pytest
import torch

import hirune as H
from hirune import objectives as O
from hirune.process.parameterization import from_x0_eps, to_x0_eps
from hirune.objectives.weighting import (eps_error_factor, likelihood_mean_weight, likelihood_weight,
                              sample_likelihood_times)

F64 = torch.float64
SDES = {"vp": H.VPSDE, "subvp": H.SubVPSDE, "ve": lambda: H.VESDE(0.01, 50.0)}


def _g2_over_sigma2(process, t):
    _, g2 = process.sde(t)
    return g2 / process.sigma(t) ** 2


def _fine_grid(process, n=200_001):
    """Times dense where the weight peaks (near t_min, about 1/t on the VP SDE)."""
    u = torch.linspace(0, 1, n, dtype=F64)
    return process.t_min + (process.t_max - process.t_min) * u**3


def _trapezoid_cdf(process, w_fn):
    t = _fine_grid(process)
    w = w_fn(process, t)
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(0.5 * (w[1:] + w[:-1]) * t.diff(), 0)])
    return t, cdf


@pytest.mark.parametrize("name", sorted(SDES))
def test_likelihood_weight_is_g2_over_sigma2(name):
    """w(t) = -d log SNR / dt equals the paper's g(t)^2 / sigma(t)^2 (the score-error weight
    g^2 moved onto the eps error)."""
    process = SDES[name]()
    t = torch.tensor([process.t_min + 1e-6, 0.01, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    torch.testing.assert_close(likelihood_weight(process, t), _g2_over_sigma2(process, t), rtol=1e-9, atol=0)


def _check_importance_times(process, times):
    """The empirical CDF of `times` against the CDF of g^2/sigma^2 integrated numerically."""
    t, cdf = _trapezoid_cdf(process, _g2_over_sigma2)
    z = float(cdf[-1])
    assert abs(likelihood_mean_weight(process) * (process.t_max - process.t_min) - z) < 1e-6 * z
    probe = torch.tensor([0.002, 0.01, 0.05, 0.2, 0.5, 0.8], dtype=F64)
    probe = probe[(probe > process.t_min) & (probe < process.t_max)]
    target = torch.tensor([float(cdf[torch.searchsorted(t, p)]) for p in probe]) / z
    empirical = (times[None, :] <= probe[:, None]).double().mean(1)
    # binomial standard error at n = 400 000 is below 8e-4
    assert (empirical - target).abs().max() < 4e-3, (empirical, target)


@pytest.mark.parametrize("name", sorted(SDES))
def test_importance_sampled_times_follow_the_likelihood_weight(name):
    process = SDES[name]()
    times = sample_likelihood_times(process, 400_000, torch.Generator().manual_seed(0))
    assert times.min() >= process.t_min and times.max() <= process.t_max
    _check_importance_times(process, times)


def test_importance_check_rejects_uniform_times():
    """Harness: uniform times (no importance sampling) fail the CDF check on the VP SDE."""
    process = H.VPSDE()
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(AssertionError):
        _check_importance_times(process, process.t_min + u * (process.t_max - process.t_min))


TARGETS = ("eps", "x0", "v", "velocity")


@pytest.mark.parametrize("target", TARGETS + ("score",))
def test_eps_error_factor_converts_target_errors(target):
    """At fixed x_t, ||eps_hat - eps||^2 = factor * ||target_hat - target||^2 for any wrong prediction."""
    g = torch.Generator().manual_seed(1)
    process = H.SubVPSDE()
    t = torch.tensor([0.01, 0.3, 0.9], dtype=F64)
    x0, eps = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    c = process.coefficients(t, x0)
    x_t = c.alpha * x0 + c.sigma * eps
    wrong = from_x0_eps(target, x0, eps, c) + torch.randn(3, 5, generator=g, dtype=F64)
    _, eps_hat = to_x0_eps(target, wrong, x_t, c)
    lhs = ((eps_hat - eps) ** 2).sum(1)
    rhs = eps_error_factor(target, c).reshape(-1) * ((wrong - from_x0_eps(target, x0, eps, c)) ** 2).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)


def _eps_net(seed=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()


def _as_target(net, process, target):
    """The same function as `net` (an eps predictor), reporting `target` instead."""
    def model(x, t):
        c = process.coefficients(t, x)
        eps = net(torch.cat([x, t[:, None]], 1))
        x0 = (x - c.sigma * eps) / c.alpha
        return from_x0_eps(target, x0, eps, c)
    return model


@pytest.mark.parametrize("weighting", ["none", "likelihood"])
def test_likelihood_weighted_loss_is_the_same_for_every_target(weighting):
    """One network, four parameterizations: the likelihood-weighted regression loss (and the
    score-matching loss) is a property of the implied eps, so all agree exactly; unweighted
    regression does not (each target weights time differently)."""
    process, net = H.VPSDE(), _eps_net()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.99 + 0.01
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    losses = {target: float(O.regression_loss(_as_target(net, process, target), process, x0, target=target,
                                              weighting=weighting, t=t, noise=noise).loss.detach())
              for target in TARGETS}
    score = O.score_matching_loss(_as_target(net, process, "score"), process, x0, prediction="score",
                                  weighting=weighting, t=t, noise=noise).loss.detach()
    eps_dsm = O.score_matching_loss(_as_target(net, process, "eps"), process, x0, prediction="eps",
                                    weighting=weighting, t=t, noise=noise).loss.detach()
    assert abs(float(score) - float(eps_dsm)) < 1e-10 * float(eps_dsm)
    if weighting == "likelihood":
        for target, value in losses.items():
            assert abs(value - losses["eps"]) < 1e-9 * losses["eps"], (target, losses)
        assert abs(float(score) - losses["eps"]) < 1e-9 * losses["eps"]
    else:
        assert abs(losses["x0"] - losses["eps"]) > 1e-3 * losses["eps"]
        assert abs(float(eps_dsm) - losses["eps"]) < 1e-12  # lambda = sigma^2 DSM is eps regression


def test_importance_sampling_is_unbiased():
    """E over importance-sampled t of Z/R * l(t) equals E over uniform t of w(t) l(t), here
    for a fixed network on the VP SDE (Monte Carlo, within 4 standard errors); the same
    loss with the constant weight left out is far off."""
    process, net = H.VPSDE(), _eps_net()
    model = _as_target(net, process, "eps")
    n = 200_000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.5 + 1.0
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        importance = O.regression_loss(model, process, x0, weighting="likelihood", generator=g).per_sample
        t = process.t_min + torch.rand(n, generator=g, dtype=F64) * (process.t_max - process.t_min)
        uniform = O.regression_loss(model, process, x0, weighting="likelihood", t=t, generator=g).per_sample
    se = (importance.var() / n + uniform.var() / n).sqrt()
    assert abs(importance.mean() - uniform.mean()) < 4 * se, (importance.mean(), uniform.mean(), se)
    assert importance.var() < uniform.var() / 5  # the point of importance sampling (9x here)
    unweighted = importance.mean() / likelihood_mean_weight(process)
    assert abs(unweighted - uniform.mean()) > 20 * se


def test_likelihood_weighting_refuses_discrete_and_flows():
    x0 = torch.zeros(4, 2)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="hybrid"):
        O.regression_loss(model, H.DiscreteVP("linear"), x0, weighting="likelihood")
    with pytest.raises(ValueError, match="finite log-SNR"):
        O.regression_loss(model, H.RectifiedFlow(), x0, target="velocity", weighting="likelihood")
    with pytest.raises(ValueError, match="valid"):
        O.regression_loss(model, H.VPSDE(), x0, weighting="likelihod")
    with pytest.raises(ValueError, match="lambda"):
        O.score_matching_loss(model, H.VPSDE(), x0, weighting="min_snr")


# --- NCSN's geometric noise levels -------------------------------------------------------

def test_noise_levels_are_geometric_and_discrete():
    p = H.make_process("ncsn", sigma_min=0.01, sigma_max=1.0, levels=10)
    ratio = (1.0 / 0.01) ** (1 / 9)
    torch.testing.assert_close(p.sigmas(), torch.tensor([ratio**i * 0.01 for i in range(9, -1, -1)], dtype=F64))
    assert p.discrete and p.T == 10 and p.t_max == 9.0
    t = O.sample_times(p, 1000, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(float(i) for i in range(10))
    grid = H.time_grid(p, 10)
    torch.testing.assert_close(grid, torch.arange(9, -1, -1, dtype=F64))
    # between levels it is the VE SDE with time rescaled: g^2 = d sigma^2 / dt
    s = torch.tensor([0.5, 3.2, 8.9], dtype=F64)
    h = 1e-6
    dsig2 = (p.sigma(s + h) ** 2 - p.sigma(s - h) ** 2) / (2 * h)
    torch.testing.assert_close(p.sde(s)[1], dsig2, rtol=1e-6, atol=0)
    torch.testing.assert_close(p.t_from_edm_sigma(p.sigma(s)), s)
    with pytest.raises(ValueError, match="2 levels"):
        H.make_process("ncsn", levels=1)


@pytest.mark.slow  # long: opt in with --runslow (the suite's 10-minute budget)
def test_annealed_langevin_over_noise_levels_reproduces_the_mixture():
    """NCSN's sampler on NCSN's levels with the exact score (Song & Ermon 2019, Alg. 1)."""
    from harness import GM, matches_mixture

    p = H.make_process("ncsn", sigma_min=0.01, sigma_max=20.0, levels=30)
    out = H.sample(GM.denoiser(p, "eps"), (20_000, 2), "annealed_langevin", 30, seed=0, dtype=F64,
                   steps_per_level=50, step_size=5e-5)
    ok, errors = matches_mixture(out.x)
    assert ok, errors


def test_a_trained_ncsn_run_samples_with_its_own_sampler(tmp_path, capsys):
    """The checkpoint keeps the preview sampler: an NCSN run reloads with annealed Langevin
    over its 10 levels (the default DDIM-50 would not even fit its 10 levels)."""
    from hirune.cli import main
    from hirune.training import load

    out = tmp_path / "ncsn"
    assert main(["train", "ncsn-eight-gaussians", "steps=2", "ckpt_every=2", "sample_every=0", f"out={out}"]) == 0
    run = load(out)
    assert (run.config.sampler, run.config.sample_steps, run.process.T) == ("annealed_langevin", 10, 10)
    assert main(["sample", str(out), "--n", "16", "--out", str(tmp_path / "s.png")]) == 0
