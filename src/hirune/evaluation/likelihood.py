"""Held-out negative log-likelihood, the same way for every family: images are uniformly
dequantized with the dataset's `levels` (`data.dequantize`, fixed seed) and reported as the
discrete bound in nats and bits per dimension; toys report nats, beside the true density's
NLL of the same points where the toy has one.  The standard error is over examples (and so
includes the noise of a Hutchinson estimate)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

LogProb = Callable[[Tensor, torch.Generator], tuple[Tensor, dict]]


def nll_report(data, n: int, seed: int, log_prob: LogProb) -> dict:
    """The NLL of the first n test examples of `data` (a `DataFormat`) under `log_prob(x,
    generator) -> (log p(x) (N,), what to report of the method)`; the generator has drawn
    the dequantization noise and may draw more (Hutchinson's probes)."""
    from ..data import load_dataset
    from ..data.dequantize import bits_per_dim, check_quantized, dequantize, discrete_nll
    from ..data.toys import TOYS

    x = load_dataset(data.name, "test").data[:n]
    g = torch.Generator().manual_seed(seed)
    image = data.kind == "image"
    levels = data.levels if image else None
    if levels:
        check_quantized(x, levels)
        x = dequantize(x, levels, g)
    dims = x[0].numel()
    out = {"nll_examples": len(x)}
    log_p, method = log_prob(x, g)
    out.update(method)
    nll = discrete_nll(log_p, dims, levels) if levels else -log_p
    out.update({"nll_nats": float(nll.mean()), "nll_stderr": float(nll.std() / math.sqrt(len(x)))})
    if image:
        out["bits_per_dim"] = float(bits_per_dim(nll, dims).mean())
        out["bits_per_dim_stderr"] = float(bits_per_dim(nll, dims).std() / math.sqrt(len(x)))
        out["dequantization"] = f"uniform, {levels} levels"
    mixture = getattr(TOYS.get(data.name), "mixture", None)
    if mixture is not None:
        out["nll_true_nats"] = float(-mixture.log_prob(x.double()).mean())
    return out


def flow_log_prob(flow: nn.Module) -> LogProb:
    """A normalizing flow's exact log-density (change of variables), in float64."""
    def log_prob(x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict]:
        with torch.no_grad():
            log_p = flow.double()(x.double()).float()
        flow.float()
        return log_p, {"nll_method": "exact (change of variables)"}
    return log_prob


def ode_log_prob(denoiser, model: nn.Module, image: bool, rtol: float = 1e-5) -> LogProb:
    """A denoiser's density through the probability-flow ODE (RK45 at rtol) without x0
    clipping: the exact divergence on 2-D toys (float64), Hutchinson's estimate (one
    Rademacher probe per example) on images.  `model`: the denoiser's network."""
    from ..sampling.guidance import unclipped
    from ..sampling.likelihood import ode_log_likelihood

    def log_prob(x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict]:
        x = x if image else x.double()
        if not image:
            model.double()
        try:
            result = ode_log_likelihood(unclipped(denoiser)[0], x, divergence="hutchinson" if image else "exact",
                                        generator=generator, rtol=rtol, atol=rtol)
        finally:
            model.float()
        return result.log_prob, {"nll_method": f"probability-flow ODE, {'Hutchinson' if image else 'exact'} "
                                               "divergence", "nll_nfe": result.nfe}
    return log_prob
