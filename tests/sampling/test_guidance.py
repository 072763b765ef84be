"""Guidance pinned by exact scores: a labelled Gaussian mixture, whose class-conditional
scores and noisy classifier p(y | x_t) are known in closed form."""

from __future__ import annotations

import pytest
import torch

import harness as H
from hirune import DiscreteVP, RectifiedFlow, VESDE, VPSDE, sample, time_grid
from hirune.process.denoiser import Denoiser, Prediction
from hirune.sampling.guidance import ClassifierFreeGuidance, ClassifierGuidance
from hirune.metrics.distances import sliced_wasserstein
from hirune.process.mixture import GaussianMixture
from hirune.sampling import ddim, ddim_invert

GM = H.GM  # the demo mixture; its components are the classes 0, 1, 2; null label 3
NULL = {"y": 3}
PROCESSES = {
    "ddpm": lambda: DiscreteVP("linear"),
    "vp": lambda: VPSDE(),
    "ve": lambda: VESDE(0.01, 20),
    "rf": lambda: RectifiedFlow(),
}
PREDICTIONS = {"ddpm": ["eps", "x0", "v", "score", "velocity"], "vp": ["eps", "x0", "v", "score", "velocity"],
               "ve": ["eps", "x0", "v", "score", "velocity"], "rf": ["x0", "v", "velocity"]}
CASES = [(p, pred) for p in PROCESSES for pred in PREDICTIONS[p]]


def _points(process, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = time_grid(process, 8)[:-1] if process.discrete else torch.tensor([0.9, 0.5, 0.2, 0.05], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    return [float(t) for t in ts], x, y


def _close(a: Prediction, b: Prediction, tol=1e-10):
    torch.testing.assert_close(a.x0, b.x0, rtol=tol, atol=tol)
    torch.testing.assert_close(a.eps, b.eps, rtol=tol, atol=tol)


@pytest.mark.parametrize("process_name,prediction", CASES)
def test_cfg_scale_one_is_conditional_and_zero_unconditional(process_name, prediction):
    process = PROCESSES[process_name]()
    model = GM.conditional_denoiser(process, prediction)
    ts, x, y = _points(process)
    for t in ts:
        cond, uncond = model(x, t, y=y), model(x, t, y=torch.full_like(y, 3))
        _close(ClassifierFreeGuidance(model, 1.0, NULL)(x, t, y=y), cond)
        _close(ClassifierFreeGuidance(model, 0.0, NULL)(x, t, y=y), uncond)
        guided = ClassifierFreeGuidance(model, 3.0, NULL)(x, t, y=y)
        # one formula in every parameterization: uncond + 3 (cond - uncond) of v and velocity too
        for target in ("v", "velocity"):
            want = getattr(uncond, target) + 3 * (getattr(cond, target) - getattr(uncond, target))
            torch.testing.assert_close(getattr(guided, target), want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(guided.coeffs.alpha * guided.x0 + guided.coeffs.sigma * guided.eps, x)


@pytest.mark.parametrize("process_name,prediction", CASES)
def test_classifier_guidance_with_exact_classifier_is_bayes(process_name, prediction):
    """score(x_t) + grad log p(y | x_t) = score(x_t | y): s = 1 over the exact unconditional
    model and the exact noisy classifier is the exact conditional model; s = 0 is the
    unconditional model."""
    process = PROCESSES[process_name]()
    uncond = GM.denoiser(process, prediction)
    cond = GM.conditional_denoiser(process, prediction)
    ts, x, y = _points(process)
    for t in ts:
        _close(ClassifierGuidance(uncond, GM.noisy_classifier(process), 1.0)(x, t, y=y), cond(x, t, y=y), 1e-8)
        _close(ClassifierGuidance(uncond, GM.noisy_classifier(process), 0.0)(x, t, y=y), uncond(x, t), 1e-12)


class _SwappedCFG(ClassifierFreeGuidance):
    """Broken: cond + s (uncond - cond)."""

    def __call__(self, x, t, **cond):
        c_, u_ = self.inner(x, t, **cond), self.inner(x, t, y=torch.full_like(cond["y"], 3))
        return Prediction(c_.x0 + self.scale * (u_.x0 - c_.x0), c_.eps + self.scale * (u_.eps - c_.eps), c_.coeffs)


class _NoSigmaClassifierGuidance(ClassifierGuidance):
    """Broken: adds s grad log p to eps-space without the factor -sigma."""

    def __call__(self, x, t, **cond):
        p = self.inner(x, t)
        d = self.scale * self.log_prob_grad(x, t, cond["y"])
        eps = p.eps - d
        return Prediction((x - p.coeffs.sigma * eps) / p.coeffs.alpha, eps, p.coeffs)


def test_the_formula_tests_reject_broken_guidance():
    process = VPSDE()
    model = GM.conditional_denoiser(process, "eps")
    ts, x, y = _points(process)
    with pytest.raises(AssertionError):
        _close(_SwappedCFG(model, 0.0, NULL)(x, ts[1], y=y), model(x, ts[1], y=torch.full_like(y, 3)))
    uncond = GM.denoiser(process, "eps")
    with pytest.raises(AssertionError):
        _close(_NoSigmaClassifierGuidance(uncond, GM.noisy_classifier(process), 1.0)(x, ts[1], y=y),
               model(x, ts[1], y=y), 1e-8)


# --- sampling: guided samples sharpen toward the intended component ---------------------

OVERLAP = GaussianMixture(means=[[-1.0, 0.0], [1.0, 0.0]], stds=[0.9, 0.9], weights=[0.5, 0.5])


def _membership(x, k=0):
    return float(torch.softmax(OVERLAP.class_log_probs(x, VPSDE(), 0.0), 1)[:, k].mean())


@pytest.mark.parametrize("method", ["cfg", pytest.param("classifier", marks=pytest.mark.slow)])
def test_guided_sampling_sharpens_with_scale(method):
    """Two overlapping classes: at s = 0 the samples are the whole mixture (half class 0);
    at s = 1 they are class 0's distribution; above 1 the mean responsibility of class 0
    keeps growing."""
    process = VPSDE()
    n = H.N
    y = torch.zeros(n, dtype=torch.long)
    member = {}
    for s in (0.0, 1.0, 2.0, 4.0):
        if method == "cfg":
            d = ClassifierFreeGuidance(OVERLAP.conditional_denoiser(process, "eps"), s, {"y": 2})
        else:
            d = ClassifierGuidance(OVERLAP.denoiser(process, "eps"), OVERLAP.noisy_classifier(process), s)
        x = sample(d, (n, 2), "dpmpp_2m", 30, "logsnr", seed=1, dtype=torch.float64, cond={"y": y}).x
        member[s] = _membership(x)
        if s == 0:
            assert sliced_wasserstein(x, OVERLAP.sample(n, torch.Generator().manual_seed(2))) < H.SW_TOL
        if s == 1:
            assert sliced_wasserstein(x, OVERLAP.component(0).sample(n, torch.Generator().manual_seed(2))) < H.SW_TOL
    assert abs(member[0.0] - 0.5) < 0.02
    assert member[0.0] < member[1.0] < member[2.0] < member[4.0], member


@pytest.mark.slow  # covered at tiny by a reproduce note; opt in with --runslow (the suite's 10-minute budget)
def test_cfg_samples_of_the_demo_classes():
    """s = 1 on the demo mixture: each class's samples are its component (weights aside)."""
    process = DiscreteVP("linear")
    model = GM.conditional_denoiser(process, "v")
    for k in range(3):
        y = torch.full((H.N,), k)
        x = sample(ClassifierFreeGuidance(model, 1.0, NULL), (len(y), 2), "ddim", 50, seed=k,
                   dtype=torch.float64, cond={"y": y}).x
        truth = GM.component(k).sample(len(y), torch.Generator().manual_seed(9))
        assert sliced_wasserstein(x, truth) < H.SW_TOL, k


# --- rescale, interval, clipping -------------------------------------------------------

def test_guidance_rescale_matches_the_conditional_std():
    process = DiscreteVP("linear")
    model = GM.conditional_denoiser(process, "v")
    _, x, y = _points(process, n=4)
    x = x.reshape(4, 2, 1, 1).expand(4, 2, 4, 4).contiguous() + 0.1 * torch.randn(4, 2, 4, 4, dtype=torch.float64)
    flat = _FlatModel(model)
    d = Denoiser(flat, process, "v")
    cond = d(x, 500, y=y)
    plain = ClassifierFreeGuidance(d, 5.0, NULL)(x, 500, y=y)
    full = ClassifierFreeGuidance(d, 5.0, NULL, rescale=1.0)(x, 500, y=y)
    half = ClassifierFreeGuidance(d, 5.0, NULL, rescale=0.5)(x, 500, y=y)
    torch.testing.assert_close(full.v.std(dim=(1, 2, 3)), cond.v.std(dim=(1, 2, 3)))
    torch.testing.assert_close(half.v, (full.v + plain.v) / 2)
    _close(ClassifierFreeGuidance(d, 5.0, NULL, rescale=0.0)(x, 500, y=y), plain)


class _FlatModel:
    """A 2-D exact model applied to (B, 2, H, W) images pixel by pixel."""

    def __init__(self, model):
        self.model = model.model

    def __call__(self, x, t, y=None):
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, c)
        rep = lambda v: v.repeat_interleave(h * w) if v is not None and v.ndim else v  # noqa: E731
        return self.model(flat, rep(t), rep(y)).reshape(b, h, w, c).permute(0, 3, 1, 2)


def test_guidance_interval_guides_only_inside():
    process = DiscreteVP("linear")
    model = GM.conditional_denoiser(process, "eps")
    _, x, y = _points(process)
    lo, hi = 0.5, 5.0
    d = ClassifierFreeGuidance(model, 4.0, NULL, interval=(lo, hi))
    plain = ClassifierFreeGuidance(model, 4.0, NULL)
    for t in (10, 300, 999):
        s = float(process.edm_sigma(t))
        want = plain(x, t, y=y) if lo < s <= hi else model(x, t, y=y)
        _close(d(x, t, y=y), want)
    t_batch = torch.tensor([10.0, 300.0, 999.0]).repeat_interleave(len(x) // 3 + 1)[:len(x)]
    mixed = d(x, t_batch, y=y)
    inside = (process.edm_sigma(t_batch.double()) > lo) & (process.edm_sigma(t_batch.double()) <= hi)
    torch.testing.assert_close(mixed.x0[inside], plain(x, t_batch, y=y).x0[inside])
    torch.testing.assert_close(mixed.x0[~inside], model(x, t_batch, y=y).x0[~inside])


def test_clipping_happens_after_guidance():
    process = DiscreteVP("linear")
    exact = GM.conditional_model(process, "eps")
    clipped = Denoiser(exact, process, "eps", clip_x0=(-1.0, 1.0))
    _, x, y = _points(process)
    guided = ClassifierFreeGuidance(clipped, 3.0, NULL)(x, 400, y=y)
    unclipped = ClassifierFreeGuidance(Denoiser(exact, process, "eps"), 3.0, NULL)(x, 400, y=y)
    torch.testing.assert_close(guided.x0, unclipped.x0.clamp(-1, 1))
    assert (unclipped.x0.abs() > 1).any()


def test_bad_input():
    process = VPSDE()
    model = GM.conditional_denoiser(process, "eps")
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="null_cond"):
        ClassifierFreeGuidance(model, 2.0, {})
    with pytest.raises(ValueError, match="needs the condition"):
        ClassifierFreeGuidance(model, 2.0, NULL)(x, 0.5)
    with pytest.raises(ValueError, match="no null condition for 'text'"):
        ClassifierFreeGuidance(model, 2.0, NULL)(x, 0.5, text=torch.zeros(4))
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFreeGuidance(model, 2.0, NULL, rescale=2.0)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(model, 2.0, NULL, interval=(3.0, 1.0))
    with pytest.raises(ValueError, match="labels"):
        ClassifierGuidance(GM.denoiser(process), GM.noisy_classifier(process), 2.0)(x, 0.5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            ClassifierFreeGuidance(model, bad, NULL)
        with pytest.raises(ValueError, match="finite"):
            ClassifierGuidance(GM.denoiser(process), GM.noisy_classifier(process), bad)


# --- inversion under guidance ---------------------------------------------------------------

@pytest.mark.parametrize("process_name", ["ddpm", "rf"])
def test_exact_inversion_under_cfg_reconstructs(process_name):
    process = PROCESSES[process_name]()
    d = ClassifierFreeGuidance(GM.conditional_denoiser(process, "v"), 2.5, NULL)
    x0, y = GM.sample(256, torch.Generator().manual_seed(3), return_labels=True)
    ts = time_grid(process, 50)
    noise = ddim_invert(d, x0, ts, exact=True, max_iter=200, cond={"y": y}).x
    back = ddim(d, noise, ts, cond={"y": y}).x
    assert float((back - x0).norm() / x0.norm()) < 1e-4


def test_kept_keys_reach_both_branches_unchanged():
    """A KEEP key (a super-resolution model's low-resolution input) is the same in the
    conditional and the unconditional branch; the guided keys get their null value."""
    from hirune.sampling.guidance import KEEP

    seen = []

    def net(x, t, y, low):
        seen.append((y.clone(), low.clone()))
        return x * 0 + low

    d = Denoiser(net, DiscreteVP("linear"), "eps")
    x, low = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    ClassifierFreeGuidance(d, 3.0, {"y": 3, "low": KEEP})(x, 10, y=y, low=low)
    both_y, both_low = seen[-1]
    assert both_y.tolist() == [0, 1, 2, 0, 3, 3, 3, 3]
    torch.testing.assert_close(both_low, torch.cat([low, low]))
    with pytest.raises(ValueError, match="not KEEP"):
        ClassifierFreeGuidance(d, 3.0, {"low": KEEP})
