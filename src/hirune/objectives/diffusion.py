"""The objectives of the diffusion family (DDPM, score models, flow matching, Improved DDPM).

Every objective draws t and eps, builds x_t = alpha(t) x_0 + sigma(t) eps, asks the network
for its prediction and compares it with the matching target.  They share one signature,

    objective(model, process, x0, *, cond=None, generator=None, t=None, noise=None) -> Loss

and return a `Loss` whose `loss` is the scalar to minimise and whose `per_sample` (B,) and
`t` (B,) feed importance sampling and logging.

    regression_loss        eps / x0 / v / velocity regression (DDPM's L_simple, v-prediction),
                           optional min-SNR-gamma or likelihood weighting (`weighting.py`)
    score_matching_loss    denoising score matching, lambda = sigma^2 (NCSN) or g^2 (likelihood)
    flow_matching_loss     conditional flow matching: velocity regression (Lipman et al. 2023)
    hybrid_loss            Improved DDPM: L_simple + lambda L_vlb with a learned variance,
                           and its loss-aware `LossAwareTimes`
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..process.base import GaussianProcess
from ..process.denoiser import time_batch
from ..process.parameterization import from_x0_eps, to_x0_eps
from ..process.schedules import DiscreteVP
from .loss import Loss
from .weighting import (WEIGHTINGS, eps_error_factor, likelihood_mean_weight, likelihood_weight, log_snr_range,
                        min_snr_weight, sample_likelihood_times)

REGRESSION_TARGETS = ("eps", "x0", "v", "velocity")


def sample_times(process: GaussianProcess, batch: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", until: float = 1.0, stratified: bool = False) -> Tensor:
    """Training times: uniform integers 0..T-1 for discrete schedules, uniform on
    [t_min, t_max] otherwise (float64, (B,)).  until < 1: only the lowest fraction of that
    range (a refiner's, SDXL: integers 0..ceil(until T) - 1, or [t_min, t_min + until
    (t_max - t_min)]); the draws are the same numbers of the generator either way.

    stratified: CogVideoX's explicit uniform sampling (Yang et al. 2024, sec. 3.3): the
    range cut into `batch` equal strata and row i drawn uniformly from stratum i, so the
    rows cover the range evenly and the batch's mean loss varies less from step to step.
    Rows are given to ranks in contiguous slices, so each rank draws from its own
    contiguous stratum, as the paper does, whatever the number of ranks."""
    where = generator.device if generator is not None else torch.device(device)  # draw where the generator lives
    if not 0.0 < until <= 1.0:
        raise ValueError(f"until={until} is not valid; valid: a fraction of the time range in (0, 1]")
    if process.discrete:  # times 0..high - 1
        high = process.T if until == 1.0 else max(1, math.ceil(until * process.T))
        if not stratified:
            return torch.randint(0, high, (batch,), generator=generator, device=where).to(device, torch.float64)
    u = torch.rand(batch, generator=generator, dtype=torch.float64, device=where)
    if stratified:
        u = (torch.arange(batch, dtype=torch.float64, device=where) + u) / batch  # row i in [i / B, (i + 1) / B)
    if process.discrete:
        return (u * high).floor().clamp(max=high - 1).to(device)
    return (process.t_min + u * until * (process.t_max - process.t_min)).to(device)


def _noisy(process, x0, t, noise, generator):
    if t is None:
        t = sample_times(process, x0.shape[0], generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return t, noise, process.q_sample(x0, t, noise), process.coefficients(t, x0)


def _mean_per_sample(err: Tensor) -> Tensor:
    return err.flatten(1).mean(1)


def _check_weighting(weighting: str, process: GaussianProcess) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
    if weighting == "likelihood":
        log_snr_range(process)  # refuses discrete schedules and infinite ranges


def _draw_times(process, x0, t, generator, weighting, t_importance) -> tuple[Tensor | None, bool]:
    """Likelihood weighting draws its own times (importance sampling) unless t is given;
    given times count as uniform draws unless `t_importance` says they came from
    `sample_likelihood_times` (the trainer draws a whole global batch at once)."""
    if t is None and weighting == "likelihood":
        return sample_likelihood_times(process, x0.shape[0], generator, x0.device), True
    return t, t_importance and weighting == "likelihood"


def _weight(process, weighting: str, target: str, c, t: Tensor, importance: bool, gamma: float) -> Tensor | None:
    """The per-sample weight of the squared `target` error (None: unweighted); see `weighting`."""
    if weighting == "none":
        return None
    if weighting == "min_snr":
        return min_snr_weight((c.alpha**2 / c.sigma**2).reshape(-1), target, gamma)
    w = likelihood_mean_weight(process) if importance else likelihood_weight(process, t).to(c.alpha)
    return w * eps_error_factor(target, c).reshape(-1)


def regression_loss(model, process: GaussianProcess, x0: Tensor, *, target: str = "eps",
                    weighting: str = "none", min_snr_gamma: float = 5.0, cond: dict | None = None,
                    generator=None, t: Tensor | None = None, noise: Tensor | None = None,
                    t_importance: bool = False, mask: Tensor | None = None) -> Loss:
    """E_t,eps w(t) || model(x_t, t) - target(x0, eps, t) ||^2, the mean over dimensions.
    weighting (`hirune.weighting`): none | min_snr | likelihood (importance-sampled t,
    unless t is given: then t counts as uniform draws).  mask: 1 where an element counts,
    0 where it is padding (frame packing: the frames a shorter clip lacks), broadcastable to
    x0; each sample's loss is then the mean over its own elements."""
    if target not in REGRESSION_TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {list(REGRESSION_TARGETS)}")
    _check_weighting(weighting, process)
    t, importance = _draw_times(process, x0, t, generator, weighting, t_importance)
    t, noise, x_t, c = _noisy(process, x0, t, noise, generator)
    pred = model(x_t, time_batch(t, x_t), **(cond or {}))
    if pred.shape != x0.shape:
        raise ValueError(f"model output {tuple(pred.shape)} does not match data {tuple(x0.shape)}")
    err = (pred - from_x0_eps(target, x0, noise, c)) ** 2
    if mask is None:
        per_sample = _mean_per_sample(err)
    else:
        mask = mask.to(err).expand_as(err)
        per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
    w = _weight(process, weighting, target, c, t, importance, min_snr_gamma)
    if w is not None:
        per_sample = per_sample * w.to(per_sample)
    return Loss(per_sample.mean(), per_sample.detach(), t, rows=per_sample)


def score_matching_loss(model, process: GaussianProcess, x0: Tensor, *, prediction: str = "score",
                        weighting: str = "none", cond=None, generator=None, t=None, noise=None,
                        t_importance: bool = False) -> Loss:
    """Denoising score matching (Vincent 2011) of the score s implied by the network's
    `prediction`: lambda(t) || s(x_t, t) - grad log q(x_t | x_0) ||^2 with grad log q = -eps / sigma.

    weighting none:  lambda = sigma^2 (NCSN, Song & Ermon 2019, eq. 2), the loss
                     || sigma s + eps ||^2, which for an eps network is plain eps regression;
    weighting likelihood:  lambda = g^2 (Song et al. 2021), t importance-sampled."""
    if weighting == "min_snr":
        raise ValueError("score_matching takes weighting 'none' (lambda = sigma^2) or 'likelihood' (lambda = g^2)")
    _check_weighting(weighting, process)
    t, importance = _draw_times(process, x0, t, generator, weighting, t_importance)
    t, noise, x_t, c = _noisy(process, x0, t, noise, generator)
    out = model(x_t, time_batch(t, x_t), **(cond or {}))
    _, eps_hat = to_x0_eps(prediction, out, x_t, c)  # eps_hat = -sigma s
    per_sample = _mean_per_sample((eps_hat - noise) ** 2)
    w = _weight(process, weighting, "eps", c, t, importance, 0.0)
    if w is not None:
        per_sample = per_sample * w.to(per_sample)
    return Loss(per_sample.mean(), per_sample.detach(), t, rows=per_sample)


COUPLINGS = ("independent", "ot")


def ot_pairing(x0: Tensor, noise: Tensor) -> Tensor:
    """The noise reordered to solve the optimal-transport assignment between the minibatch
    of data and the minibatch of noise under squared Euclidean cost: for two uniform
    empirical measures of equal size the OT plan is a permutation, found exactly by the
    Hungarian algorithm (scipy's linear_sum_assignment).  Minibatch OT coupling (Tong et
    al. 2023; Pooladian et al. 2023) makes the conditional paths cross less."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = torch.empty(len(x0), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return noise[order.to(noise.device)]


def flow_matching_loss(model, process: GaussianProcess, x0: Tensor, *, coupling: str = "independent",
                       generator=None, noise: Tensor | None = None, **kwargs) -> Loss:
    """Conditional flow matching: regress the conditional velocity alpha' x0 + sigma' eps
    (for rectified flow, eps - x0).  coupling: how data and noise are paired -- drawn
    independently, or re-paired by minibatch optimal transport (`ot_pairing`).  A given
    `noise` (e.g. the fixed pairs of a reflow) is used as it is."""
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; valid: {list(COUPLINGS)}")
    if noise is None and coupling == "ot":
        noise = ot_pairing(x0, torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device))
    return regression_loss(model, process, x0, target="velocity", generator=generator, noise=noise, **kwargs)


# --- Improved DDPM: the variational bound with a learned variance ----------------------------

def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor,
                                        bins: int = 256) -> Tensor:
    """log P(x) of data in [-1, 1] quantised to `bins` levels under N(mean, e^{2 log_scale})
    integrated over each bin, the edge bins extended to -/+ infinity (DDPM sec. 3.3)."""
    half = 1.0 / (bins - 1)
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + half))
    cdf_minus = _std_normal_cdf(inv_std * (centered - half))
    tiny = 1e-12
    log_cdf_plus = torch.log(cdf_plus.clamp(min=tiny))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=tiny))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=tiny))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


def vlb_terms(process: DiscreteVP, x0: Tensor, x_t: Tensor, t: Tensor, pred_x0: Tensor,
              var_frac: Tensor) -> Tensor:
    """Per-sample L_{t-1} in bits per dimension (Improved DDPM eq. 4-6, 15): the KL from the true
    posterior q(x_{t-1} | x_t, x_0) to p(x_{t-1} | x_t) with mean from `pred_x0` and the learned
    log-variance v log beta_t + (1 - v) log beta_tilde_t; at t = 0 the decoder NLL."""
    t_int = t.round().long().cpu()
    view = lambda a: a[t_int].reshape(-1, *([1] * (x0.ndim - 1))).to(x0)  # noqa: E731
    true_mean, true_var = process.q_posterior_mean_variance(x0, x_t, t_int)
    model_mean, _ = process.q_posterior_mean_variance(pred_x0, x_t, t_int)
    # beta tilde_0 = 0: use beta tilde_1 there, as Improved DDPM's clipped log-variance does
    log_small = torch.log(torch.cat([process.posterior_variance[1:2], process.posterior_variance[1:]]))
    log_large = torch.log(process.betas)
    model_logvar = var_frac * view(log_large) + (1 - var_frac) * view(log_small)
    kl = normal_kl(true_mean, torch.log(true_var.clamp(min=1e-20)), model_mean, model_logvar)
    decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    per_elem = torch.where((t_int == 0).to(x0.device).reshape(-1, *([1] * (x0.ndim - 1))), decoder_nll, kl)
    return _mean_per_sample(per_elem) / math.log(2.0)


def hybrid_loss(model, process: DiscreteVP, x0: Tensor, *, prediction: str = "eps",
                vlb_weight: float = 0.001, cond=None, generator=None, t=None, noise=None,
                time_sampler: LossAwareTimes | None = None, t_weights: Tensor | None = None) -> Loss:
    """Improved DDPM's L_hybrid = L_simple + lambda L_vlb (sec. 3.1, lambda = 0.001) for a model
    whose output has 2C channels: the `prediction` and the variance interpolation v in [-1, 1].
    L_vlb sees the mean through a stop-gradient, so it trains only the variance.  With a
    `time_sampler`, t is importance-sampled by the running second moment of L_vlb and each
    sample's loss is weighted by 1 / (T p_t) (sec. 3.3).  A caller that draws t from the
    sampler itself passes the weights as `t_weights` and updates the sampler with the
    per-sample `terms["vlb_per_sample"]` (the trainer does, over all ranks)."""
    if not isinstance(process, DiscreteVP):
        raise ValueError("hybrid_loss needs a DiscreteVP process (the bound is over discrete steps)")
    weights = t_weights
    own_draw = time_sampler is not None and t is None
    if own_draw:
        t, weights = time_sampler.sample(x0.shape[0], generator, x0.device)
    t, noise, x_t, c = _noisy(process, x0, t, noise, generator)
    out = model(x_t, time_batch(t, x_t), **(cond or {}))
    if out.shape[1] != 2 * x0.shape[1]:
        raise ValueError(f"hybrid_loss needs a learned-variance model with {2 * x0.shape[1]} output "
                         f"channels, got {tuple(out.shape)}")
    pred, v = out.chunk(2, dim=1)
    simple = _mean_per_sample((pred - from_x0_eps(prediction, x0, noise, c)) ** 2)
    pred_x0, _ = to_x0_eps(prediction, pred.detach(), x_t, c)  # stop-gradient on the mean
    vlb = vlb_terms(process, x0, x_t, t, pred_x0, (v + 1) / 2)
    per_sample = simple + vlb_weight * process.T * vlb  # L_vlb = T * E_t[L_t] (sum over steps)
    if own_draw:
        time_sampler.update(t, vlb.detach())
    if weights is not None:
        per_sample = per_sample * weights
    terms = {"simple": simple.mean().detach(), "vlb": vlb.mean().detach(), "vlb_per_sample": vlb.detach()}
    return Loss(per_sample.mean(), per_sample.detach(), t, terms, rows=per_sample)


class LossAwareTimes:
    """Improved DDPM's loss-aware distribution of training times (sec. 3.3, the
    "LossSecondMomentResampler"): p_t proportional to sqrt(E[L_t^2]) over the last `history`
    losses of each step, mixed with `uniform_prob` of the uniform distribution; uniform until
    every step has a full history.  `draw` gives times and importance weights, `update`
    learns from losses.  Its state is plain tensors (`state_dict` / `load_state_dict`) for
    checkpoints (the group "time_sampler")."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.losses = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.long)

    def probabilities(self) -> Tensor:
        if not bool((self.counts >= self.history).all()):
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        p = self.losses.pow(2).mean(1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def draw(self, batch: int, generator=None, device="cpu") -> tuple[Tensor, Tensor]:
        """Times (B,) and importance weights 1 / (T p_t) (B,)."""
        p = self.probabilities()
        if generator is not None:
            p = p.to(generator.device)
        idx = torch.multinomial(p, batch, replacement=True, generator=generator)
        weights = 1.0 / (self.T * p[idx])
        return idx.to(device, torch.float64), weights.to(device, torch.float32)

    def update(self, t: Tensor, losses: Tensor) -> None:
        for ti, li in zip(t.round().long().tolist(), losses.double().cpu().tolist()):
            if self.counts[ti] >= self.history:
                self.losses[ti] = torch.roll(self.losses[ti], -1)
                self.losses[ti, -1] = li
            else:
                self.losses[ti, self.counts[ti]] = li
            self.counts[ti] += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.losses.copy_(state["losses"])
        self.counts.copy_(state["counts"])


OBJECTIVES = {  # the diffusion, score and flow-matching objectives by TrainConfig name
    "regression": regression_loss,
    "score_matching": score_matching_loss,
    "flow_matching": flow_matching_loss,
    "hybrid": hybrid_loss,
}
