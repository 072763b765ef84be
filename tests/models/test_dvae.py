"""DALL-E's discrete VAE (`models/dvae.py`, `models/gumbel.py`, `objectives/dvae.py`): the
Gumbel-softmax sample (its hard variant is distributed as softmax(logits); its limits in
tau), the KL to the uniform prior against a float64 reference, the warm-up and annealing
schedules, the token protocol and its agreement with the forward pass, the refused
settings -- each check shown to catch a broken variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hirune.models import build_model
from hirune.models.gumbel import gumbel_noise, gumbel_softmax, hard_one_hot, kl_to_uniform
from hirune.objectives.dvae import dvae_loss, kl_weight_at, temperature_at

TINY = dict(size="f2", in_channels=1, channels=8, z_channels=3, num_res_blocks=1, mid_attention=False,
            codebook_size=16, image_size=8)


# --- the Gumbel-softmax sample --------------------------------------------------------------

def hard_sample_frequency_error(noise_fn, n: int = 40000) -> float:
    """The largest |frequency - softmax(l)_k| / standard error over the K = 5 codes of n hard
    (straight-through) Gumbel-softmax samples at tau = 1 with noise from noise_fn(shape, g)."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    noise = noise_fn((n, 5), g)
    y = gumbel_softmax(logits.expand(n, 5), 1.0, noise, hard=True, dim=1)
    assert torch.equal(y.sum(1), torch.ones(n, dtype=y.dtype)) and set(y.unique().tolist()) == {0.0, 1.0}
    p = F.softmax(logits, 0)
    stderr = (p * (1 - p) / n).sqrt()
    return float(((y.mean(0) - p).abs() / stderr).max())


def test_hard_gumbel_sample_is_distributed_as_softmax_of_the_logits():
    """The Gumbel-max trick: argmax(l + g) ~ softmax(l), so the mean of 40 000 hard samples is
    softmax(l) within 5 standard errors (per code); Gaussian noise instead of Gumbel fails."""
    gumbel = lambda shape, g: gumbel_noise(shape, g, dtype=torch.float64)  # noqa: E731
    gaussian = lambda shape, g: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    assert hard_sample_frequency_error(gumbel) < 5
    assert hard_sample_frequency_error(gaussian) > 5  # the broken variant is caught


def test_gumbel_noise_has_the_gumbel_mean_and_variance():
    g = gumbel_noise((200000,), torch.Generator().manual_seed(1), dtype=torch.float64)
    euler_gamma = 0.5772156649015329
    assert abs(float(g.mean()) - euler_gamma) < 5 * math.pi / math.sqrt(6 * 200000)
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.03
    assert torch.isfinite(g).all()


def test_soft_sample_limits_in_tau_and_the_straight_through_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 7, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    noise = gumbel_noise(logits.shape, g, dtype=torch.float64)
    # tau -> 0: the one-hot of argmax(logits + g); tau -> infinity: uniform 1 / K
    torch.testing.assert_close(gumbel_softmax(logits, 1e-4, noise), hard_one_hot(logits + noise), rtol=0, atol=1e-6)
    torch.testing.assert_close(gumbel_softmax(logits, 1e6, noise), torch.full_like(noise, 1 / 7), rtol=0, atol=1e-5)
    # the straight-through variant: one-hot forward, the relaxed sample's gradient backward
    w = torch.randn(logits.shape, generator=g, dtype=torch.float64)
    hard = gumbel_softmax(logits, 0.5, noise, hard=True)
    assert torch.equal(hard.detach(), hard_one_hot(logits + noise).detach())
    grad_hard, = torch.autograd.grad((hard * w).sum(), logits)
    grad_soft, = torch.autograd.grad((gumbel_softmax(logits, 0.5, noise) * w).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"tau=0.0 is not valid; valid: a temperature > 0"):
        gumbel_softmax(logits, 0.0, noise)


# --- the KL to the uniform prior ------------------------------------------------------------

def reference_kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """log K - H(q), q = softmax over dim 1, written out in float64."""
    l64 = logits.double()
    l64 = l64 - l64.max(1, keepdim=True).values
    q = l64.exp() / l64.exp().sum(1, keepdim=True)
    entropy = -(q * q.log()).sum(1)
    return math.log(logits.shape[1]) - entropy


def kl_error(kl_fn) -> float:
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(4, 16, 5, 5, generator=g)
    return float((kl_fn(logits).double() - reference_kl_to_uniform(logits)).abs().max())


def test_kl_to_uniform_equals_log_k_minus_entropy_in_float64():
    assert kl_error(kl_to_uniform) < 1e-5
    # and torch.distributions agrees; uniform logits give 0, a one-hot-like q gives log K
    logits = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    C = torch.distributions.Categorical
    uniform = C(logits=torch.zeros(16, dtype=torch.float64))
    ref = torch.distributions.kl_divergence(C(logits=logits.movedim(1, -1)), uniform)
    torch.testing.assert_close(kl_to_uniform(logits), ref, rtol=1e-12, atol=1e-12)
    assert float(kl_to_uniform(torch.zeros(1, 16, 1, 1)).abs()) < 1e-6
    peaked = torch.zeros(1, 16, 1, 1)
    peaked[0, 3] = 200.0
    assert abs(float(kl_to_uniform(peaked)) - math.log(16)) < 1e-5


def test_kl_against_the_wrong_prior_is_caught():
    """KL(U || q) (the prior and posterior swapped) and KL against a non-uniform prior fail."""
    def swapped(logits):
        log_q = F.log_softmax(logits.float(), 1)
        K = logits.shape[1]
        return ((-math.log(K) - log_q) / K).sum(1)

    def other_prior(logits):
        log_q = F.log_softmax(logits.float(), 1)
        log_p = F.log_softmax(torch.linspace(0, 1, logits.shape[1]), 0)[None, :, None, None]
        return (log_q.exp() * (log_q - log_p)).sum(1)

    assert kl_error(swapped) > 1e-2 and kl_error(other_prior) > 1e-2


# --- the schedules ----------------------------------------------------------------------------

def test_temperature_anneals_exponentially_and_the_kl_weight_warms_up_linearly():
    tau = lambda s: temperature_at(s, 1.0, 1.0 / 16, 400)  # noqa: E731
    assert tau(0) == 1.0 and tau(400) == tau(401) == tau(10**6) == 1.0 / 16
    assert math.isclose(tau(200), 0.25) and math.isclose(tau(100), 0.5) and math.isclose(tau(300), 0.125)
    assert all(tau(s) > tau(s + 1) for s in range(400))  # strictly down until the end
    assert temperature_at(5, 1.0, 0.5, 0) == 0.5         # 0 steps: tau_end throughout
    beta = lambda s: kl_weight_at(s, 0.01, 100)  # noqa: E731
    assert beta(0) == 0.0 and math.isclose(beta(25), 0.0025) and beta(100) == beta(5000) == 0.01
    assert kl_weight_at(0, 0.01, 0) == 0.01


# --- the network and the token protocol --------------------------------------------------------

def test_shapes_and_the_token_protocol_agree_with_the_forward_pass_at_evaluation():
    torch.manual_seed(0)
    model = build_model("dvae", **TINY).eval()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    assert model.num_codes == 16 and model.logits_shape((1, 8, 8)) == (16, 4, 4)
    codes = model.encode_codes(x)
    assert codes.shape == (5, 4, 4) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 16
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model.decode_codes(codes), out.reconstruction, rtol=0, atol=1e-6)
        assert torch.equal(out.codes, codes) and out.logits.shape == (5, 16, 4, 4)
        assert out.reconstruction.shape == x.shape
        torch.testing.assert_close(model.encode(x), out.latent, rtol=0, atol=1e-6)
        # training mode with sample=False is the hard code too; with sample=True a relaxed
        # sample, which tends to it as tau -> 0 without noise
        model.train()
        torch.testing.assert_close(model(x, sample=False).reconstruction, out.reconstruction, rtol=0, atol=1e-6)
        relaxed = model(x, noise=torch.zeros_like(out.logits), tau=1e-5).reconstruction
        torch.testing.assert_close(relaxed, out.reconstruction, rtol=0, atol=1e-4)
        assert not torch.allclose(model(x, noise=torch.zeros_like(out.logits), tau=1.0).reconstruction,
                                  out.reconstruction, atol=1e-3)


def test_decode_codes_refuses_codes_outside_the_codebook():
    model = build_model("dvae", **TINY)
    with pytest.raises(ValueError, match=r"codes in \[16, 16\] are not valid; valid: 0 ... 15"):
        model.decode_codes(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="valid: an int64 tensor"):
        model.decode_codes(torch.zeros(1, 4, 4))


def test_loss_is_reconstruction_plus_beta_kl_per_position_at_the_step():
    torch.manual_seed(1)
    model = build_model("dvae", **TINY, kl_weight=0.5, kl_warmup=10, tau_anneal_steps=8)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    noise = gumbel_noise((3, 16, 4, 4), torch.Generator().manual_seed(0))
    out = dvae_loss(model, x, model.config, 4, noise=noise)
    assert out.terms["tau"] == temperature_at(4, 1.0, 1 / 16, 8) == 0.25 and out.terms["kl_weight"] == 0.2
    recon = model(x, noise=noise, tau=0.25)
    rec = (recon.reconstruction - x).abs().flatten(1).mean(1)
    kl = reference_kl_to_uniform(recon.logits).flatten(1).mean(1).float()
    torch.testing.assert_close(out.per_sample, (rec + 0.2 * kl).detach(), rtol=1e-5, atol=1e-6)
    assert 0 < float(out.terms["usage"]) <= 1 and 1 <= float(out.terms["perplexity"]) <= 16


@pytest.mark.parametrize("key, value, match", [
    ("tau_end", 2.0, r"DVAEConfig.tau_end=2.0 is not valid; valid: a number in \(0, tau_start=1.0\]"),
    ("tau_end", 0.0, r"tau_end=0.0 is not valid"),
    ("tau_start", float("inf"), r"tau_start=inf is not valid; valid: a finite number > 0"),
    ("kl_weight", -1.0, r"kl_weight=-1.0 is not valid; valid: a finite number >= 0"),
    ("kl_warmup", -1, r"kl_warmup=-1 is not valid; valid: an integer >= 0"),
    ("tau_anneal_steps", -5, r"tau_anneal_steps=-5 is not valid"),
    ("codebook_size", 1, r"codebook_size=1 is not valid; valid: an integer >= 2"),
    ("disc_weight", 0.5, r"disc_weight=0.5 is not valid; valid: 0 \(the adversarial loss is not wired"),
])
def test_bad_settings_are_refused_naming_what_is_valid(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model("dvae", **{**TINY, key: value})
