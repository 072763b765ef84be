"""hirune.data.toys: the 2-D toy distributions.  Shape, determinism and standardisation of
each toy; each looks like what it is named (rings, eight Gaussians, checkerboard, two moons,
swiss roll); the mixture toys' exact densities; the fixed train/test datasets per toy."""

import math

import pytest
import torch

from hirune.data import TOY_SPLIT_SIZES, TOYS, toy_dataset, toy_mixture, toy_seed
from hirune.process.mixture import GaussianMixture, demo_mixture


def draw(name, n=60_000, seed=0):
    return TOYS[name].sample(n, torch.Generator().manual_seed(seed))


def raw(name, x):
    """Back to the toy's raw coordinates: raw = x * scale + mean."""
    toy = TOYS[name]
    return x.double() * toy.scale + torch.tensor(toy.mean, dtype=torch.float64)


# --- toys: shape, determinism, scale ---------------------------------------------------
@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_shape_dtype_and_determinism(name):
    a, b = draw(name, 500, seed=3), draw(name, 500, seed=3)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(name, 500, seed=4))
    assert TOYS[name].sample(0, None).shape == (0, 2)
    with pytest.raises(ValueError, match="non-negative int"):
        TOYS[name].sample(-1, None)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_is_standardised(name):
    # population mean 0 and E|x|^2 = 2; with 200k samples the estimates are good to ~0.01
    x = draw(name, 200_000).double()
    assert x.mean(0).abs().max() < 0.02, x.mean(0)
    assert abs(float(x.var(0).sum()) / 2 - 1) < 0.02, x.var(0)


# --- toys: each looks like what it is named ---------------------------------------------
def test_rings_radii_cluster_on_three_circles():
    r = raw("rings", draw("rings")).norm(dim=1)
    ring = (r - 1).round().clamp(0, 2).long()                  # nearest of radii 1, 2, 3
    assert (r - (ring + 1)).abs().max() < 0.5                  # noise 0.08: > 6 sigma
    assert (r - (ring + 1)).abs().mean() < 0.1
    freq = ring.bincount(minlength=3).double() / len(r)
    assert torch.allclose(freq, torch.tensor([1, 2, 3], dtype=torch.float64) / 6, atol=0.01), freq


def test_eight_gaussians_has_eight_clusters_on_a_circle():
    p = raw("eight_gaussians", draw("eight_gaussians"))
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 2 * torch.stack([angles.cos(), angles.sin()], 1)
    d = torch.cdist(p, centres)
    k = d.argmin(1)
    assert d.min(1).values.max() < 1.5                         # std 0.25: 6 sigma
    counts = k.bincount(minlength=8).double() / len(p)
    assert (counts - 1 / 8).abs().max() < 0.01, counts
    means = torch.stack([p[k == j].mean(0) for j in range(8)])
    assert (means - centres).norm(dim=1).max() < 0.02


def test_checkerboard_points_lie_only_on_dark_squares():
    p = raw("checkerboard", draw("checkerboard"))
    assert p.abs().max() <= 2 + 1e-5
    away = ((p - p.round()).abs() > 1e-4).all(1)               # float32 rounding near lines
    cells = torch.floor(p[away]).long()
    assert away.float().mean() > 0.99
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    square = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    freq = square.bincount(minlength=16).double() / len(square)
    dark = freq[freq > 0]
    assert len(dark) == 8 and (dark - 1 / 8).abs().max() < 0.01, freq


def _distance_to_arc(p, centre, lo, hi):
    """Distance from points p to the unit-circle arc around centre, angles in [lo, hi]."""
    q = p - torch.tensor(centre, dtype=p.dtype)
    angle = torch.remainder(torch.atan2(q[:, 1], q[:, 0]) - lo, 2 * math.pi) + lo
    on_arc = angle <= hi
    ends = torch.tensor([[math.cos(lo), math.sin(lo)], [math.cos(hi), math.sin(hi)]], dtype=p.dtype)
    to_ends = torch.cdist(q, ends).min(1).values
    return torch.where(on_arc, (q.norm(dim=1) - 1).abs(), to_ends)


def test_two_moons_lie_on_two_half_circles():
    p = raw("two_moons", draw("two_moons"))
    upper = _distance_to_arc(p, (0.0, 0.0), 0.0, math.pi)
    lower = _distance_to_arc(p, (1.0, 0.5), math.pi, 2 * math.pi)
    d = torch.minimum(upper, lower)
    assert d.max() < 0.6 and d.mean() < 0.12                   # noise 0.1 per coordinate
    assert abs(float((upper < lower).double().mean()) - 0.5) < 0.01


def test_swiss_roll_radius_grows_with_angle():
    # on the roll r = t where t = angle (mod 2 pi) in [1.5 pi, 4.5 pi]: a spiral, not rings
    p = raw("swiss_roll", draw("swiss_roll"))
    r = p.norm(dim=1)
    angle = torch.remainder(torch.atan2(p[:, 1], p[:, 0]), 2 * math.pi)
    candidates = angle[:, None] + 2 * math.pi * torch.arange(0, 3, dtype=torch.float64)
    residual = (r[:, None] - candidates).abs().min(1).values
    assert residual.max() < 2.5 and residual.mean() < 0.5      # noise 0.5
    assert r.min() > 1.5 * math.pi - 2.5 and r.max() < 4.5 * math.pi + 2.5


def _raw_eight_gaussians():
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    return GaussianMixture(2 * torch.stack([angles.cos(), angles.sin()], 1), [0.25] * 8)


@pytest.mark.parametrize("name, raw_mixture, weights", [
    ("gaussian_mixture", demo_mixture, [0.5, 0.3, 0.2]),
    ("eight_gaussians", _raw_eight_gaussians, [1 / 8] * 8),
])
def test_mixture_toys_have_their_exact_density(name, raw_mixture, weights):
    x = draw(name, 20_000).double()
    m = toy_mixture(name)
    # change of variables x = (raw - mean) / scale: log p(x) = log p_raw(raw) + 2 log scale
    expected = raw_mixture().log_prob(raw(name, x)) + 2 * math.log(TOYS[name].scale)
    assert torch.allclose(m.log_prob(x), expected, atol=1e-9)
    freq = m.classify(x).bincount(minlength=len(weights)).double() / len(x)
    assert torch.allclose(freq, torch.tensor(weights, dtype=torch.float64), atol=0.015)
    # the density integrates to one (a Riemann sum on a grid)
    g = torch.linspace(-5, 5, 401, dtype=torch.float64)
    density = m.log_prob(torch.cartesian_prod(g, g)).exp()
    assert abs(float(density.sum() * (g[1] - g[0]) ** 2) - 1) < 1e-3
    with pytest.raises(ValueError, match="no closed-form"):
        toy_mixture("rings")


def test_toy_dataset_is_fixed_per_toy_and_split():
    a = toy_dataset("two_moons", "train", 1000)
    assert torch.equal(a, toy_dataset("two_moons", "train", 1000))
    assert not torch.equal(a, toy_dataset("two_moons", "test", 1000))
    assert toy_seed("two_moons", "train") != toy_seed("two_moons", "test")
    assert len({toy_seed(n, s) for n in TOYS for s in TOY_SPLIT_SIZES}) == 2 * len(TOYS)
    assert toy_dataset("rings", "test").shape == (TOY_SPLIT_SIZES["test"], 2)
    with pytest.raises(ValueError, match="valid"):
        toy_dataset("two_moons", "validation")
    with pytest.raises(ValueError, match="unknown toy"):
        toy_dataset("moons")
