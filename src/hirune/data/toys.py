"""2-D toy distributions, generated in code: the small problems every model is tried on first.

Each toy is a function `toy(n, generator=None) -> Tensor (n, 2)` float32 on the CPU, drawing
n independent samples; the same generator state gives the same samples (the draws are made
in float64 and rounded once).

**Scaling.** Every toy is standardised by one *isotropic* affine map fixed in closed form,
x = (raw - mean) / scale, where `mean` is the population mean of the raw distribution and
`scale` = sqrt(trace Cov(raw) / 2). So each toy has population mean 0 and mean coordinate
variance 1 (E|x|^2 = 2); the shape is not distorted (one scale for both axes, so a ring stays
a circle and the checkerboard's squares stay square). The constants are in `TOYS[name]`
(`mean`, `scale`); the raw distributions are:

| toy | raw distribution |
|---|---|
| two_moons | scikit-learn's two moons: moon 0 = (cos t, sin t), moon 1 = (1 - cos t, 1/2 - sin t), t ~ U[0, pi], each moon with probability 1/2, plus N(0, 0.1^2) per coordinate |
| swiss_roll | (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi] (scikit-learn's 2-D roll), plus N(0, 0.5^2) |
| eight_gaussians | 8 equal-weight N(mu_k, 0.25^2 I), mu_k = 2 (cos k pi/4, sin k pi/4) |
| checkerboard | uniform on the 8 dark unit squares of a 4 x 4 board on [-2, 2]^2: the squares where floor(x) + floor(y) is even |
| rings | three concentric circles of radii 1, 2, 3, a point uniform along their total length (ring weights 1/6, 2/6, 3/6), plus N(0, 0.08^2) |
| gaussian_mixture | `hirune.mixture.demo_mixture()` (3 unequal Gaussians), standardised |

The two Gaussian mixtures have an exact density in the standardised coordinates,
`toy_mixture(name)` (a `GaussianMixture`, whose `log_prob` gives the exact NLL of test points).

**Fixed sets.** `toy_dataset(name, split, size)` draws `size` points (default 50 000 for
train, 10 000 for test) from a generator seeded with `toy_seed(name, split)` =
crc32("hirune/toys/<name>/<split>"), so train and test differ, every toy has its own seeds,
and the sets are the same on every call (as long as torch's CPU generator is unchanged).
A smaller `size` is not a prefix of a larger one.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..process.mixture import GaussianMixture, demo_mixture

TOY_SPLIT_SIZES = {"train": 50_000, "test": 10_000}


def _standardise(raw: Tensor, mean: tuple[float, float], scale: float) -> Tensor:
    return ((raw - torch.tensor(mean, dtype=raw.dtype)) / scale).to(torch.float32)


def _scale(total_variance: float) -> float:
    """The isotropic scale that gives mean coordinate variance 1: sqrt(trace Cov / 2)."""
    return math.sqrt(total_variance / 2)


def _toy_sampler(sample: Callable[[int, torch.Generator | None], Tensor]):
    """Checks n (a non-negative int; n = 0 gives an empty (0, 2) tensor) around a sampler."""
    @functools.wraps(sample)
    def checked(n: int, generator: torch.Generator | None = None) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        return sample(n, generator) if n else torch.zeros(0, 2)
    return checked


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randn(n, 2, generator=generator, dtype=torch.float64)


# --- two moons -------------------------------------------------------------------------
MOONS_NOISE = 0.1
# E[moon 0] = (0, 2/pi), E[moon 1] = (1, 1/2 - 2/pi): mean (1/2, 1/4).
# E|moon 0|^2 = 1, E|moon 1|^2 = 9/4 - 2/pi; minus |mean|^2 = 5/16, plus the noise 2 s^2.
MOONS_MEAN = (0.5, 0.25)
MOONS_SCALE = _scale((1 + 9 / 4 - 2 / math.pi) / 2 - 5 / 16 + 2 * MOONS_NOISE**2)


@_toy_sampler
def two_moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles (scikit-learn's make_moons, i.i.d.), standardised: (n, 2)."""
    t = math.pi * _uniform(n, generator)
    lower = _uniform(n, generator) < 0.5
    x = torch.where(lower, 1 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    raw = torch.stack([x, y], 1) + MOONS_NOISE * _normal(n, generator)
    return _standardise(raw, MOONS_MEAN, MOONS_SCALE)


# --- swiss roll ------------------------------------------------------------------------
ROLL_T = (1.5 * math.pi, 4.5 * math.pi)
ROLL_NOISE = 0.5


def _roll_moments() -> tuple[tuple[float, float], float]:
    """Mean and total variance of (t cos t, t sin t) + noise, t ~ U[a, b], in closed form:
    int t cos t = t sin t + cos t, int t sin t = sin t - t cos t, E t^2 = (a^2 + ab + b^2) / 3."""
    a, b = ROLL_T
    mx = ((b * math.sin(b) + math.cos(b)) - (a * math.sin(a) + math.cos(a))) / (b - a)
    my = ((math.sin(b) - b * math.cos(b)) - (math.sin(a) - a * math.cos(a))) / (b - a)
    total = (a * a + a * b + b * b) / 3 + 2 * ROLL_NOISE**2 - mx * mx - my * my
    return (mx, my), total


ROLL_MEAN, _roll_total = _roll_moments()
ROLL_SCALE = _scale(_roll_total)


@_toy_sampler
def swiss_roll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A spiral of 1.5 turns, (t cos t, t sin t) with t uniform, standardised: (n, 2)."""
    a, b = ROLL_T
    t = a + (b - a) * _uniform(n, generator)
    raw = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + ROLL_NOISE * _normal(n, generator)
    return _standardise(raw, ROLL_MEAN, ROLL_SCALE)


# --- Gaussian mixtures: exact densities ------------------------------------------------
def _standardised_mixture(m: GaussianMixture) -> tuple[GaussianMixture, tuple[float, float], float]:
    """The same mixture after x -> (x - mean) / scale, with the mean and scale."""
    w = m.weights
    mean = (w[:, None] * m.means).sum(0)
    total = float((w * (((m.means - mean) ** 2).sum(1) + (m.stds**2).sum(1))).sum())
    scale = _scale(total)
    out = GaussianMixture((m.means - mean) / scale, m.stds / scale, w)
    return out, (float(mean[0]), float(mean[1])), scale


def _eight_gaussians_raw() -> GaussianMixture:
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    return GaussianMixture(2 * torch.stack([angles.cos(), angles.sin()], 1), torch.full((8,), 0.25))


EIGHT_MIXTURE, EIGHT_MEAN, EIGHT_SCALE = _standardised_mixture(_eight_gaussians_raw())
DEMO_MIXTURE, DEMO_MEAN, DEMO_SCALE = _standardised_mixture(demo_mixture())


@_toy_sampler
def eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Eight equal Gaussians on a circle, standardised: (n, 2). Exact density: toy_mixture."""
    return EIGHT_MIXTURE.sample(n, generator).to(torch.float32)


@_toy_sampler
def gaussian_mixture(n: int, generator: torch.Generator | None = None) -> Tensor:
    """hirune's demo mixture (3 unequal Gaussians), standardised: (n, 2). Exact density:
    toy_mixture("gaussian_mixture")."""
    return DEMO_MIXTURE.sample(n, generator).to(torch.float32)


# --- checkerboard ----------------------------------------------------------------------
# Uniform on [-2, 2] in each coordinate: mean 0, variance 16/12 each.
BOARD_MEAN = (0.0, 0.0)
BOARD_SCALE = _scale(2 * 16 / 12)


@_toy_sampler
def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the squares of a 4 x 4 board on [-2, 2]^2 where floor(x) + floor(y) is even,
    standardised (divided by BOARD_SCALE): (n, 2)."""
    x = -2 + 4 * _uniform(n, generator)
    row = 2 * (_uniform(n, generator) < 0.5).to(torch.float64) - 2    # -2 or 0 ...
    row = row + torch.remainder(torch.floor(x), 2)                    # ... +1 on odd columns
    y = row + _uniform(n, generator)
    return _standardise(torch.stack([x, y], 1), BOARD_MEAN, BOARD_SCALE)


# --- concentric rings ------------------------------------------------------------------
RING_RADII = (1.0, 2.0, 3.0)
RING_NOISE = 0.08
RING_MEAN = (0.0, 0.0)
# Ring k is chosen with probability r_k / sum r (uniform along the total length):
# E|x|^2 = sum r_k^3 / sum r_k + 2 s^2.
RING_SCALE = _scale(sum(r**3 for r in RING_RADII) / sum(RING_RADII) + 2 * RING_NOISE**2)


@_toy_sampler
def rings(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Three concentric noisy circles (radii RING_RADII / RING_SCALE after scaling): (n, 2)."""
    radii = torch.tensor(RING_RADII, dtype=torch.float64)
    k = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    theta = 2 * math.pi * _uniform(n, generator)
    raw = radii[k, None] * torch.stack([theta.cos(), theta.sin()], 1) + RING_NOISE * _normal(n, generator)
    return _standardise(raw, RING_MEAN, RING_SCALE)


# --- registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class Toy:
    """A toy: its sampler, the standardisation x = (raw - mean) / scale, and the exact
    density where there is one (a GaussianMixture in standardised coordinates)."""

    name: str
    sample: Callable[[int, torch.Generator | None], Tensor]
    description: str
    mean: tuple[float, float]
    scale: float
    mixture: GaussianMixture | None = None


TOYS: dict[str, Toy] = {t.name: t for t in [
    Toy("two_moons", two_moons, "two interleaved half circles", MOONS_MEAN, MOONS_SCALE),
    Toy("swiss_roll", swiss_roll, "a 2-D spiral of 1.5 turns", ROLL_MEAN, ROLL_SCALE),
    Toy("eight_gaussians", eight_gaussians, "8 Gaussians on a circle (exact density)",
        EIGHT_MEAN, EIGHT_SCALE, EIGHT_MIXTURE),
    Toy("checkerboard", checkerboard, "uniform on 8 squares of a 4 x 4 board",
        BOARD_MEAN, BOARD_SCALE),
    Toy("rings", rings, "3 concentric circles", RING_MEAN, RING_SCALE),
    Toy("gaussian_mixture", gaussian_mixture, "hirune's 3-component demo mixture (exact density)",
        DEMO_MEAN, DEMO_SCALE, DEMO_MIXTURE),
]}


def get_toy(name: str) -> Toy:
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; valid: {sorted(TOYS)}")
    return TOYS[name]


def toy_mixture(name: str) -> GaussianMixture:
    """The exact density of a mixture toy in its standardised coordinates, e.g.
    `toy_mixture("gaussian_mixture").log_prob(x)` is the true log p(x) of its samples x."""
    toy = get_toy(name)
    if toy.mixture is None:
        have = sorted(n for n, t in TOYS.items() if t.mixture is not None)
        raise ValueError(f"toy {name!r} has no closed-form mixture density; those with one: {have}")
    return toy.mixture


def toy_seed(name: str, split: str) -> int:
    """The fixed seed of a toy's train or test set: crc32 of "hirune/toys/<name>/<split>"."""
    get_toy(name)
    if split not in TOY_SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r} for toy {name!r}; valid: {sorted(TOY_SPLIT_SIZES)}")
    return zlib.crc32(f"hirune/toys/{name}/{split}".encode())


def toy_dataset(name: str, split: str = "train", size: int | None = None) -> Tensor:
    """The fixed train or test set of a toy: (size, 2) float32, drawn with toy_seed(name, split).
    size defaults to TOY_SPLIT_SIZES[split] (50 000 train, 10 000 test)."""
    seed = toy_seed(name, split)
    n = TOY_SPLIT_SIZES[split] if size is None else size
    return get_toy(name).sample(n, torch.Generator().manual_seed(seed))
