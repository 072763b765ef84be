"""Invertible layers with tractable log-determinants (RealNVP, Glow, MAF).

Every layer maps x -> y and is called `y, logdet = layer(x)` with logdet (B,) the log
|det dy/dx| of each sample; `x = layer.inverse(y)` undoes it exactly.  Stacked, they give
log p(x) = log p_Z(f(x)) + sum of the logdets (the change-of-variables formula).

    ActNorm            per-channel affine with data-dependent initialisation (Glow 3.1)
    InvertibleConv1x1  a learned channel mixing, W = P L (U + diag(s)) (Glow 3.2, LU form)
    AffineCoupling     y_b = x_b * exp(s(x_a)) + t(x_a) over a binary mask (RealNVP 3.3):
                       checkerboard or channel masks for images, alternating dims for vectors
    Squeeze            (C, H, W) -> (4C, H/2, W/2), the multi-scale reshape (RealNVP 3.6)
    MADE, MAFLayer     masked autoregressive flow for vectors (Papamakarios et al. 2017)
    Reverse            reverses the feature order (between autoregressive layers)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _sum_per_sample(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale) per channel (dim 1).  The first forward pass in
    training mode sets bias and scale so that batch's output has zero mean and unit
    variance per channel (data-dependent initialisation); after that both are ordinary
    parameters.  Works on (B, C) and (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _shape(self, v: Tensor, x: Tensor) -> Tensor:
        return v.reshape(1, -1, *([1] * (x.ndim - 2)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                dims = [0] + list(range(2, x.ndim))
                mean, std = x.mean(dims), x.std(dims)
                self.bias.copy_(-mean)
                self.log_scale.copy_(-torch.log(std.clamp(min=1e-6)))
                self.initialized.fill_(True)
        y = (x + self._shape(self.bias, x)) * self._shape(self.log_scale, x).exp()
        pixels = x[0, 0].numel()
        return y, (pixels * self.log_scale.sum()).expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * self._shape(-self.log_scale, y).exp() - self._shape(self.bias, y)


class InvertibleConv1x1(nn.Module):
    """A 1x1 convolution with W = P L (U + diag(sign * exp(log_s))): P a fixed permutation,
    L unit lower- and U strictly upper-triangular, so log |det W| = sum(log_s) and the
    layer's logdet is H * W * sum(log_s).  Starts as a random rotation."""

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.p @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight()
        y = F.conv2d(x, w[:, :, None, None]) if x.ndim == 4 else x @ w.T
        pixels = x[0, 0].numel()
        return y, (pixels * self.log_s.sum()).expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        w_inv = torch.linalg.inv(self.weight().double()).to(y.dtype)
        return F.conv2d(y, w_inv[:, :, None, None]) if y.ndim == 4 else y @ w_inv.T


def checkerboard_mask(channels: int, height: int, width: int, parity: int) -> Tensor:
    """(1, C, H, W) with ones where (i + j + parity) is even."""
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j + parity) % 2 == 0).float().expand(1, channels, height, width).clone()


def channel_mask(channels: int, parity: int) -> Tensor:
    """(1, C, 1, 1) with ones on the first half of the channels (the second for parity 1)."""
    m = (torch.arange(channels) < channels // 2).float()
    return (m if parity == 0 else 1 - m).reshape(1, channels, 1, 1)


def vector_mask(dim: int, parity: int) -> Tensor:
    """(1, D) with ones on the even dims (the odd ones for parity 1)."""
    return ((torch.arange(dim) + parity) % 2 == 0).float().reshape(1, dim)


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling over a fixed binary mask b (1 = passed through):

        y = b x + (1 - b) (x exp(s) + t),   (s, t) = net(b x),   logdet = sum((1 - b) s)

    with s = scale * tanh(raw) for stability (RealNVP's learned-scale tanh; scale starts at 2).  `net` sees
    only the kept part, so the inverse needs one pass too:  x = b y + (1 - b)(y - t) exp(-s).
    For images net is conv 3x3 - ReLU - conv 1x1 - ReLU - zero-initialised conv 3x3 (the
    layer starts as the identity); for vectors an MLP with a zero-initialised output."""

    def __init__(self, mask: Tensor, hidden: int):
        super().__init__()
        self.register_buffer("mask", mask)
        c = mask.shape[1]
        if mask.ndim == 4:
            last = nn.Conv2d(hidden, 2 * c, 3, padding=1)
            self.net = nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)
        else:
            last = nn.Linear(hidden, 2 * c)
            self.net = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        # the bound of the log-scale starts at 2 (slope 2 at zero): sharp modes need large
        # per-layer scales early; starting at 1 cost 0.02 nats on eight Gaussians
        self.scale = nn.Parameter(torch.full((1, c, *([1] * (mask.ndim - 2))), 2.0))

    def _s_t(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, t = self.net(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return self.scale * torch.tanh(raw_s) * free, t * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(x * self.mask)
        return x * self.mask + (1 - self.mask) * (x * s.exp() + t), _sum_per_sample(s)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._s_t(y * self.mask)
        return y * self.mask + (1 - self.mask) * ((y - t) * (-s).exp())


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h} x {w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(self, y: Tensor) -> Tensor:
        b, c4, h, w = y.shape
        c = c4 // 4
        return y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015): an MLP whose
    output i (a mean and a log-scale per dim) depends only on the inputs before i."""

    def __init__(self, dim: int, hidden: int, layers: int = 2):
        super().__init__()
        degrees_in = torch.arange(1, dim + 1)
        degrees = [degrees_in] + [torch.arange(hidden) % max(1, dim - 1) + 1 for _ in range(layers)]
        self.linears = nn.ModuleList()
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            lin = nn.Linear(len(d_in), len(d_out))
            lin.register_buffer("mask", (d_out[:, None] >= d_in[None, :]).float())
            self.linears.append(lin)
        out = nn.Linear(hidden, 2 * dim)
        out.register_buffer("mask", (degrees_in.repeat(2)[:, None] > degrees[-1][None, :]).float())
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.linears.append(out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x
        for i, lin in enumerate(self.linears):
            h = F.linear(h, lin.weight * lin.mask, lin.bias)
            if i < len(self.linears) - 1:
                h = F.relu(h)
        mu, log_scale = h.chunk(2, dim=1)
        return mu, torch.tanh(log_scale) * 3  # |log scale| <= 3 keeps the inverse stable


class MAFLayer(nn.Module):
    """Masked autoregressive flow: y_i = (x_i - mu_i(x_<i)) exp(-a_i(x_<i)), logdet = -sum a.
    The density direction is one pass; the inverse (sampling) is sequential over dims."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.made = MADE(dim, hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, a = self.made(x)
        return (x - mu) * (-a).exp(), -a.sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        x = torch.zeros_like(y)
        for i in range(y.shape[1]):
            mu, a = self.made(x)
            x[:, i] = y[:, i] * a[:, i].exp() + mu[:, i]
        return x


class Reverse(nn.Module):
    """Reverses the order of the features (dim 1): a permutation, logdet 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y.flip(1)
