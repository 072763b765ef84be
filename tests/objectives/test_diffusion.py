"""Training objectives: the targets and weights of each paper, the Improved-DDPM bound, and
each objective actually trains a small network on a 2-D toy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hirune as H
from hirune import objectives as O
from hirune.process.mixture import demo_mixture
from hirune.nn import timestep_embedding

F64 = torch.float64
GM = demo_mixture()


class TinyMLP(nn.Module):
    def __init__(self, out_mult: int = 1, time_scale: float = 1.0):
        super().__init__()
        self.time_scale = time_scale
        self.net = nn.Sequential(nn.Linear(2 + 32, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2 * out_mult))

    def forward(self, x, t):
        return self.net(torch.cat([x, timestep_embedding(t * self.time_scale, 32).to(x)], 1))


def train(objective, process, model, steps=300, lr=3e-3, **kw):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = GM.sample(4096, torch.Generator().manual_seed(1)).float()
    eval_g = lambda: torch.Generator().manual_seed(123)  # noqa: E731
    eval_loss = lambda: float(objective(model, process, data[:2048], generator=eval_g(), **kw).loss)  # noqa: E731
    with torch.no_grad():
        before = eval_loss()
    for i in range(steps):
        batch = data[torch.randint(0, len(data), (256,), generator=g)]
        loss = objective(model, process, batch, generator=g, **kw).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return before, eval_loss()


@pytest.mark.parametrize("name,objective,process,model,kw", [
    ("eps", O.regression_loss, H.DiscreteVP("linear"), TinyMLP(), {"target": "eps"}),
    ("v-min-snr", O.regression_loss, H.DiscreteVP("cosine"), TinyMLP(), {"target": "v", "weighting": "min_snr"}),
    ("x0", O.regression_loss, H.VPSDE(), TinyMLP(time_scale=1000), {"target": "x0"}),
    ("score-ve", O.score_matching_loss, H.VESDE(0.01, 20), TinyMLP(time_scale=1000), {}),
    ("flow", O.flow_matching_loss, H.RectifiedFlow(), TinyMLP(time_scale=1000), {}),
    ("hybrid", O.hybrid_loss, H.DiscreteVP("cosine", T=100), TinyMLP(out_mult=2), {}),
])
def test_each_objective_trains(name, objective, process, model, kw):
    torch.manual_seed(0)
    before, after = train(objective, process, model, **kw)
    assert after < 0.75 * before, (before, after)


def test_classifier_objective_approaches_the_bayes_classifier():
    """The noise-aware classifier's cross-entropy falls to near that of the exact noisy
    classifier p(y | x_t) of the mixture (the Bayes floor, which no classifier beats)."""
    torch.manual_seed(0)
    process = H.DiscreteVP("linear", T=100)
    model = TinyMLP(out_mult=2)  # 4 outputs: the 3 classes (one spare logit, never a label)
    data, labels = GM.sample(8192, torch.Generator().manual_seed(1), return_labels=True)
    data = data.float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def ce(m, n=4096):
        eg = torch.Generator().manual_seed(7)
        return float(O.classifier_loss(m, process, data[:n], cond={"y": labels[:n]}, generator=eg).loss)

    bayes = lambda x, t: GM.class_log_probs(x.double(), process, t.double())  # noqa: E731
    with torch.no_grad():
        before, floor = ce(model), ce(bayes)
    for _ in range(400):
        idx = torch.randint(0, len(data), (256,), generator=g)
        loss = O.classifier_loss(model, process, data[idx], cond={"y": labels[idx]}, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = ce(model)
    assert after < 0.6 * before and floor - 0.01 < after < floor + 0.1, (before, after, floor)
    with pytest.raises(ValueError, match="labels"):
        O.classifier_loss(model, process, data[:4])


def test_trained_flow_model_samples_the_toy():
    """End to end: flow matching on the mixture, then the Euler flow ODE gives its modes."""
    torch.manual_seed(0)
    model, process = TinyMLP(time_scale=1000), H.RectifiedFlow()
    train(O.flow_matching_loss, process, model, steps=1500)
    with torch.no_grad():
        out = H.sample(H.Denoiser(model, process, "velocity"), (4000, 2), "euler", 50)
    labels = GM.classify(out.x.double())
    weights = torch.bincount(labels, minlength=3).double() / len(labels)
    assert (weights - GM.weights).abs().max() < 0.08, weights


def test_targets_are_the_papers():
    process = H.RectifiedFlow()
    x0 = torch.randn(8, 2, dtype=F64)
    eps = torch.randn(8, 2, dtype=F64)
    t = torch.full((8,), 0.3, dtype=F64)
    seen = {}

    def spy(x_t, tt):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t)

    loss = O.flow_matching_loss(spy, process, x0, t=t, noise=eps)
    torch.testing.assert_close(seen["x_t"], 0.7 * x0 + 0.3 * eps)
    torch.testing.assert_close(loss.per_sample, ((eps - x0) ** 2).mean(1))  # velocity = eps - x0
    # denoising score matching: the optimum is the true score; sigma^2-weighted error
    ve = H.VESDE(0.01, 20)
    sm = O.score_matching_loss(lambda x, tt: -eps / ve.sigma(0.3), ve, x0, t=t, noise=eps)
    assert float(sm.loss) < 1e-20


def test_min_snr_weights():
    snr = torch.tensor([0.0, 0.5, 5.0, 50.0], dtype=F64)
    torch.testing.assert_close(O.min_snr_weight(snr, "x0", 5.0), torch.tensor([0.0, 0.5, 5.0, 5.0], dtype=F64))
    torch.testing.assert_close(O.min_snr_weight(snr, "eps", 5.0), torch.tensor([1.0, 1.0, 1.0, 0.1], dtype=F64))
    torch.testing.assert_close(O.min_snr_weight(snr, "v", 5.0), torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 51], dtype=F64))
    # the three weighted losses agree for the same error in x0 (VP): the weighting is one idea
    process = H.VPSDE()
    x0, eps = torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)
    t = torch.linspace(0.05, 0.95, 6, dtype=F64)
    x0_err = 0.1 * torch.randn(6, 2, dtype=F64)
    c = process.coefficients(t, x0)
    x_t = c.alpha * x0 + c.sigma * eps
    losses = {}
    for target in ("eps", "x0", "v"):
        x0_hat = x0 + x0_err
        eps_hat = (x_t - c.alpha * x0_hat) / c.sigma
        pred = H.from_x0_eps(target, x0_hat, eps_hat, c)
        losses[target] = O.regression_loss(lambda x, tt, p=pred: p, process, x0, target=target,
                                           weighting="min_snr", t=t, noise=eps).per_sample
    torch.testing.assert_close(losses["eps"], losses["x0"])
    torch.testing.assert_close(losses["v"], losses["x0"])
    with pytest.raises(ValueError, match="min_snr"):
        O.min_snr_weight(snr, "velocity", 5.0)


def test_discretized_likelihood_is_a_distribution():
    bins = torch.linspace(-1, 1, 256, dtype=F64)[:, None]
    for mean, log_scale in [(0.0, math.log(0.1)), (0.9, math.log(0.02)), (-1.2, math.log(0.5))]:
        p = O.discretized_gaussian_log_likelihood(bins, torch.tensor(mean, dtype=F64),
                                                  torch.tensor(log_scale, dtype=F64)).exp()
        assert abs(float(p.sum()) - 1) < 1e-6


def test_vlb_is_zero_for_the_true_posterior_and_mean_is_stop_gradient():
    process = H.DiscreteVP("cosine", T=50)
    x0 = torch.rand(4, 3, dtype=F64) * 2 - 1
    eps = torch.randn(4, 3, dtype=F64)
    t = torch.tensor([5.0, 10.0, 20.0, 49.0], dtype=F64)
    x_t = process.q_sample(x0, t, eps)
    # learned v = -1 selects beta tilde, the true posterior variance: the KL is exactly 0
    kl = O.vlb_terms(process, x0, x_t, t, x0, torch.zeros_like(x0))
    assert kl.abs().max() < 1e-12
    assert (O.vlb_terms(process, x0, x_t, t, x0, torch.ones_like(x0)) > 1e-7).all()  # beta != beta tilde
    # in the hybrid loss the bound trains only the variance channels
    out = torch.zeros(4, 6, dtype=F64, requires_grad=True)
    loss = O.hybrid_loss(lambda x, tt: out, process, x0, t=t, noise=eps, vlb_weight=1.0)
    simple_only = O.hybrid_loss(lambda x, tt: out, process, x0, t=t, noise=eps, vlb_weight=0.0)
    (g,) = torch.autograd.grad(loss.loss, out)
    (g_simple,) = torch.autograd.grad(simple_only.loss, out)
    torch.testing.assert_close(g[:, :3], g_simple[:, :3])  # mean gradient: L_simple only
    assert g[:, 3:].abs().max() > 0


def test_loss_aware_times_are_uniform_then_proportional_and_unbiased():
    T = 20
    s = O.LossAwareTimes(T, history=3)
    torch.testing.assert_close(s.probabilities(), torch.full((T,), 1 / T, dtype=F64))
    loss_of_t = torch.linspace(0.1, 2.0, T, dtype=F64)
    for _ in range(4):
        s.update(torch.arange(T, dtype=F64), loss_of_t)
    p = s.probabilities()
    expected = loss_of_t / loss_of_t.sum() * (1 - s.uniform_prob) + s.uniform_prob / T
    torch.testing.assert_close(p, expected)
    t, w = s.draw(200_000, torch.Generator().manual_seed(0))
    estimate = float((w.double() * loss_of_t[t.long()]).mean())
    assert abs(estimate - float(loss_of_t.mean())) < 0.01  # importance weights: unbiased
    s2 = O.LossAwareTimes(T, history=3)
    s2.load_state_dict(s.state_dict())
    torch.testing.assert_close(s2.probabilities(), p)


def test_bad_input():
    process = H.DiscreteVP()
    x0 = torch.randn(2, 2)
    with pytest.raises(ValueError, match="valid"):
        O.regression_loss(lambda x, t: x, process, x0, target="noise")
    with pytest.raises(ValueError, match="valid"):
        O.regression_loss(lambda x, t: x, process, x0, weighting="p2")
    with pytest.raises(ValueError, match="does not match"):
        O.regression_loss(lambda x, t: x[:, :1], process, x0)
    with pytest.raises(ValueError, match="DiscreteVP"):
        O.hybrid_loss(lambda x, t: x, H.VPSDE(), x0)
    with pytest.raises(ValueError, match="channels"):
        O.hybrid_loss(lambda x, t: x, process, x0)


def test_training_times_until_a_fraction_of_the_range():
    """A refiner's times: the lowest fraction only; until = 1 draws exactly what it always drew."""
    from hirune import DiscreteVP, VPSDE
    from hirune.objectives import sample_times

    d, v = DiscreteVP("linear"), VPSDE()
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    assert torch.equal(sample_times(d, 100, g()), sample_times(d, 100, g(), until=1.0))
    t = sample_times(d, 5000, g(), until=0.2)
    assert t.min() == 0 and t.max() == 199 and t.dtype == torch.float64
    t = sample_times(v, 5000, g(), until=0.25)
    assert v.t_min <= t.min() and t.max() <= v.t_min + 0.25 * (v.t_max - v.t_min) and t.max() > 0.24
    with pytest.raises(ValueError, match="until=0.0 is not valid"):
        sample_times(d, 2, g(), until=0.0)


def _stratum_check(times: Tensor, high: float) -> tuple[bool, float]:
    """(every row in its own stratum, variance of the batch mean of t / high over the batches): times (K, B)."""
    K, B = times.shape
    u = times / high
    rows = torch.arange(B, dtype=torch.float64)
    in_stratum = bool(((u >= rows / B - 1e-12) & (u < (rows + 1) / B)).all())
    return in_stratum, float(u.mean(1).var())


@pytest.mark.parametrize("broken", [False, True], ids=["explicit-uniform", "iid-relabelled"])
def test_explicit_uniform_times_one_per_stratum(broken):
    """CogVideoX's explicit uniform times: row i from stratum i; the batch mean of U[0, 1) then has variance
    1 / (12 B^3) (each row's variance 1 / (12 B^2)), against 1 / (12 B) for i.i.d. times.  The broken variant
    (i.i.d. draws, sorted and relabelled) passes the stratum check by luck only rarely and keeps the i.i.d.
    variance, which the check rejects."""
    from hirune import VPSDE, DiscreteVP
    from hirune.objectives import sample_times

    B, K = 8, 4000
    g = torch.Generator().manual_seed(0)
    for process, high in ((VPSDE(), None), (DiscreteVP("linear"), 1000.0)):
        if broken:
            t = torch.stack([sample_times(process, B, g).sort().values for _ in range(K)])
        else:
            t = torch.stack([sample_times(process, B, g, stratified=True) for _ in range(K)])
        if high is None:  # continuous: [t_min, t_max]
            t, high = t - process.t_min, process.t_max - process.t_min
        in_stratum, var = _stratum_check(t, high)
        expected = 1 / (12 * B**3) if high != 1000.0 else 1 / (12 * B**3) + 1 / (12 * 1000**2)  # + rounding
        ok = in_stratum and abs(var / expected - 1) < 0.15
        assert ok != broken, (process, in_stratum, var, expected)
    assert t.dtype == torch.float64 and float(t.min()) >= 0 and float(t.max()) <= 999
