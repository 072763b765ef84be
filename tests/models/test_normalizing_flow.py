"""Normalizing flows: every layer inverts exactly and its log-determinant equals the
autograd Jacobian's; a trained flow's exact NLL approaches the true density's."""

from __future__ import annotations

import math

import pytest
import torch

from hirune.models.flow_layers import (MADE, ActNorm, AffineCoupling, InvertibleConv1x1, MAFLayer, Squeeze,
                                       channel_mask, checkerboard_mask, vector_mask)
from hirune.models.normalizing_flow import Flow, FlowConfig
from hirune.process.mixture import demo_mixture

F64 = torch.float64


def _perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised layers would make the tests trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.double()


def _jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log |det d fn(x_i) / d x_i| per sample, from the full autograd Jacobian."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].flatten(), xi)
        out.append(torch.linalg.slogdet(jac.reshape(xi.numel(), xi.numel()))[1])
    return torch.stack(out)


IMAGE_LAYERS = {
    "actnorm": lambda: ActNorm(2),
    "invconv": lambda: InvertibleConv1x1(2, torch.Generator().manual_seed(1)),
    "coupling-checkerboard": lambda: AffineCoupling(checkerboard_mask(2, 4, 4, 1), 8),
    "coupling-channel": lambda: AffineCoupling(channel_mask(2, 0), 8),
    "squeeze": lambda: Squeeze(),
}
VECTOR_LAYERS = {
    "actnorm": lambda: ActNorm(3),
    "coupling": lambda: AffineCoupling(vector_mask(3, 0), 8),
    "maf": lambda: MAFLayer(3, 16),
}


@pytest.mark.parametrize("name", list(IMAGE_LAYERS) + [f"vec-{k}" for k in VECTOR_LAYERS])
def test_layer_inverts_and_logdet_is_the_jacobian(name):
    layer = _perturb(VECTOR_LAYERS[name[4:]]() if name.startswith("vec-") else IMAGE_LAYERS[name]()).eval()
    shape = (3,) if name.startswith("vec-") else (2, 4, 4)
    x = torch.randn(3, *shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    y, logdet = layer(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet, _jacobian_logdet(lambda v: layer(v)[0], x), rtol=1e-9, atol=1e-9)


def test_logdet_test_rejects_a_wrong_logdet():
    """The Jacobian check can fail: a coupling that forgets the tanh scale in its logdet."""
    layer = _perturb(AffineCoupling(vector_mask(3, 0), 8)).eval()

    class Broken(torch.nn.Module):
        def forward(self, x):
            y, _ = layer(x)
            raw_s, _ = layer.net(x * layer.mask).chunk(2, dim=1)
            return y, (torch.tanh(raw_s) * (1 - layer.mask)).sum(1)  # missing the learned scale

    x = torch.randn(3, 3, dtype=F64)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(Broken()(x)[1], _jacobian_logdet(lambda v: layer(v)[0], x))


def test_actnorm_initialises_from_data():
    layer = ActNorm(3).double()
    x = torch.randn(512, 3, 4, 4, dtype=F64) * torch.tensor([1.0, 5.0, 0.2], dtype=F64).reshape(1, 3, 1, 1) + 3
    y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3, dtype=F64), atol=1e-10, rtol=0)
    y2, _ = layer(x * 2)  # initialised once: now an ordinary affine layer
    torch.testing.assert_close(y2, (x * 2 + layer.bias.reshape(1, 3, 1, 1)) * layer.log_scale.exp().reshape(1, 3, 1, 1))


def test_made_is_autoregressive():
    made = _perturb(MADE(4, 32))
    x = torch.randn(1, 4, dtype=F64, requires_grad=True)
    mu, a = made(x)
    for i in range(4):
        grad = torch.autograd.grad(mu[0, i] + a[0, i], x, retain_graph=True)[0][0]
        assert (grad[i:] == 0).all(), (i, grad)


@pytest.mark.parametrize("config", [
    FlowConfig("realnvp", (2,), steps=4, hidden=16),
    FlowConfig("maf", (3,), steps=3, hidden=16),
    FlowConfig("realnvp", (1, 4, 4), levels=2, steps=2, hidden=8),
    FlowConfig("glow", (1, 4, 4), levels=2, steps=2, hidden=8),
])
def test_flow_inverts_and_log_prob_is_change_of_variables(config):
    flow = _perturb(Flow(config)).eval()
    x = torch.randn(3, *config.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    z, logdet = flow.encode(x)
    assert z.shape == (3, flow.dim)
    torch.testing.assert_close(flow.decode(z), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logdet, _jacobian_logdet(lambda v: flow.encode(v)[0], x), rtol=1e-8, atol=1e-8)
    want = -0.5 * (z ** 2).sum(1) - 0.5 * flow.dim * math.log(2 * math.pi) + logdet
    torch.testing.assert_close(flow.log_prob(x), want)
    s = flow.sample(5, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, *config.shape) and torch.isfinite(s).all()


@pytest.mark.slow  # the flow run's NLL report: tests/evaluation/test_nll.py; log-determinants: autograd
@pytest.mark.parametrize("kind", ["realnvp", "maf"])
def test_trained_flow_nll_approaches_the_true_density(kind):
    """On the demo mixture, whose density is exact: the flow's held-out NLL falls to within
    0.15 nats of the true NLL (which no model beats on average, up to sampling noise)."""
    torch.manual_seed(0)
    gm = demo_mixture()
    train = gm.sample(8192, torch.Generator().manual_seed(1)).float()
    test = gm.sample(4096, torch.Generator().manual_seed(2)).float()
    flow = Flow(FlowConfig(kind, (2,), steps=6, hidden=64))
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    flow(train[:1024])  # ActNorm's data-dependent init
    for _ in range(1500):
        batch = train[torch.randint(0, len(train), (512,), generator=g)]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = float(-flow.log_prob(test).mean())
    true = float(-gm.log_prob(test.double()).mean())
    assert true - 0.05 < nll < true + 0.15, (nll, true)


def test_bad_config():
    with pytest.raises(ValueError, match="kind"):
        FlowConfig("spline", (2,))
    with pytest.raises(ValueError, match="divisible by 4"):
        FlowConfig("glow", (1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="vectors"):
        FlowConfig("maf", (1, 4, 4))
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 3))


@pytest.mark.parametrize("module", ["hirune.models.flow_layers", "hirune.models.normalizing_flow", "hirune.models"])
def test_flows_import_first_without_a_cycle(module):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
